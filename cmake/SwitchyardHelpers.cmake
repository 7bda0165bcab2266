# Helpers shared by every folder: one library per folder, common flags, the LibTorch precompiled
# header, and test registration (plain and under mpiexec).

# Flags every Switchyard target gets. They must be identical across targets that share the PCH.
function(sy_target_defaults target)
  target_include_directories(${target} PUBLIC
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}> $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/generated>)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
  if(SWITCHYARD_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
  if(SWITCHYARD_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${SWITCHYARD_SANITIZE} -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=${SWITCHYARD_SANITIZE})
  endif()
endfunction()

# One object library owns the compiled <torch/torch.h>; LibTorch users reuse it (~25 s a TU without).
add_library(switchyard_pch OBJECT ${PROJECT_SOURCE_DIR}/cmake/pch_anchor.cpp)
target_link_libraries(switchyard_pch PUBLIC torch)
sy_target_defaults(switchyard_pch)
target_precompile_headers(switchyard_pch PRIVATE <torch/torch.h>)

function(sy_use_torch_pch target)
  target_link_libraries(${target} PUBLIC torch)
  target_precompile_headers(${target} REUSE_FROM switchyard_pch)
endfunction()

# sy_add_library(<folder> SOURCES ... [DEPS ...] [TORCH])
# Creates switchyard_<folder> with alias switchyard::<folder>.
function(sy_add_library folder)
  cmake_parse_arguments(ARG "TORCH" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(switchyard_${folder} ${ARG_SOURCES})
  add_library(switchyard::${folder} ALIAS switchyard_${folder})
  sy_target_defaults(switchyard_${folder})
  target_link_libraries(switchyard_${folder} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  if(ARG_TORCH)
    sy_use_torch_pch(switchyard_${folder})
  endif()
endfunction()

set(SY_MPIEXEC_FLAGS --oversubscribe)
execute_process(COMMAND id -u OUTPUT_VARIABLE _sy_uid OUTPUT_STRIP_TRAILING_WHITESPACE)
if(_sy_uid STREQUAL "0")
  list(APPEND SY_MPIEXEC_FLAGS --allow-run-as-root)
endif()

# sy_add_gtest(<name> SOURCES ... DEPS ... [LABEL l]): a gtest binary, each test discovered into CTest.
function(sy_add_gtest name)
  cmake_parse_arguments(ARG "" "LABEL" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  sy_target_defaults(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main)
  sy_use_torch_pch(${name})
  if(NOT ARG_LABEL)
    set(ARG_LABEL unit)
  endif()
  gtest_discover_tests(${name} PROPERTIES LABELS ${ARG_LABEL} TIMEOUT 300 DISCOVERY_TIMEOUT 120)
endfunction()

# sy_add_mpi_test(<name> SOURCES ... DEPS ... RANKS 1 2 4 [TIMEOUT s]): a gtest binary with an
# MPI-aware main (tests/mpi_test_main.cpp), registered as one CTest test per rank count under mpiexec.
function(sy_add_mpi_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;DEPS;RANKS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 240)
  endif()
  add_executable(${name} ${ARG_SOURCES} ${PROJECT_SOURCE_DIR}/tests/mpi_test_main.cpp)
  sy_target_defaults(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} MPI::MPI_CXX GTest::gtest)
  sy_use_torch_pch(${name})
  foreach(n ${ARG_RANKS})
    add_test(NAME ${name}.np${n}
      COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${n} ${SY_MPIEXEC_FLAGS}
              $<TARGET_FILE:${name}>)
    set_tests_properties(${name}.np${n} PROPERTIES LABELS mpi TIMEOUT ${ARG_TIMEOUT}
      PROCESSORS ${n} ENVIRONMENT "OMPI_MCA_rmaps_base_oversubscribe=1;OMP_NUM_THREADS=1")
  endforeach()
endfunction()
