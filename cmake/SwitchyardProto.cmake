# Protobuf code of one folder: sy_add_proto_library(<folder> <name>.proto ...) compiles
# <folder>/proto/*.proto into the static library switchyard_<folder>_proto, whose generated headers are
# included as "<folder>/proto/<name>.pb.h".

# pip's LibTorch bundles an older protobuf: its headers sit in LibTorch's include directory (ahead of
# the system one; -I/usr/include is ignored as a system directory), and libtorch_cpu.so exports its
# protobuf symbols, so our generated code could bind partly to that copy (a crash seen on the GPU
# machine). There: the system headers come first through a link outside the system directories, and
# the system libprotobuf.a is linked right after our protobuf code, before LibTorch on every link
# line, with its symbols kept local to our binaries.
set(SY_TORCH_BUNDLES_PROTOBUF OFF)
list(GET Protobuf_INCLUDE_DIRS 0 SY_PROTOBUF_INCLUDE)
foreach(dir ${TORCH_INCLUDE_DIRS})
  if(EXISTS "${dir}/google/protobuf/message.h" AND NOT dir STREQUAL SY_PROTOBUF_INCLUDE)
    set(SY_TORCH_BUNDLES_PROTOBUF ON)
  endif()
endforeach()
option(SWITCHYARD_PROTOBUF_STATIC "Link libprotobuf.a with local symbols (on when LibTorch bundles protobuf)"
       ${SY_TORCH_BUNDLES_PROTOBUF})

if(SY_TORCH_BUNDLES_PROTOBUF)
  set(SY_PROTOBUF_SHIM ${PROJECT_BINARY_DIR}/protobuf-include)
  file(MAKE_DIRECTORY ${SY_PROTOBUF_SHIM})
  file(CREATE_LINK ${SY_PROTOBUF_INCLUDE}/google ${SY_PROTOBUF_SHIM}/google SYMBOLIC)
  message(STATUS "Switchyard: LibTorch bundles protobuf; ${SY_PROTOBUF_INCLUDE}/google comes first")
endif()
if(SWITCHYARD_PROTOBUF_STATIC)
  get_filename_component(SY_PROTOBUF_LIBDIR "${Protobuf_LIBRARY}" DIRECTORY)
  find_library(SY_PROTOBUF_STATIC NAMES libprotobuf.a HINTS ${SY_PROTOBUF_LIBDIR} NO_DEFAULT_PATH)
  if(NOT SY_PROTOBUF_STATIC)
    message(FATAL_ERROR "SWITCHYARD_PROTOBUF_STATIC: no libprotobuf.a beside ${Protobuf_LIBRARY}")
  endif()
  message(STATUS "Switchyard: linking ${SY_PROTOBUF_STATIC} with local symbols")
endif()

function(sy_add_proto_library folder)
  set(protos "")
  foreach(p ${ARGN})
    list(APPEND protos proto/${p})
  endforeach()
  protobuf_generate_cpp(srcs hdrs ${protos})
  set(target switchyard_${folder}_proto)
  set(dir ${PROJECT_BINARY_DIR}/generated/${folder}/proto)
  file(MAKE_DIRECTORY ${dir})
  add_custom_target(${target}_headers COMMAND ${CMAKE_COMMAND} -E copy_if_different ${hdrs} ${dir} DEPENDS ${hdrs})
  # Alone in a library whose first dependency is libprotobuf itself.
  add_library(${target} STATIC ${srcs})
  add_dependencies(${target} ${target}_headers)
  target_include_directories(${target} PRIVATE ${CMAKE_CURRENT_BINARY_DIR})
  if(SY_TORCH_BUNDLES_PROTOBUF)
    target_include_directories(${target} BEFORE PUBLIC ${SY_PROTOBUF_SHIM})
  else()
    target_include_directories(${target} PUBLIC ${Protobuf_INCLUDE_DIRS})
  endif()
  if(SWITCHYARD_PROTOBUF_STATIC)
    target_link_libraries(${target} PUBLIC ${SY_PROTOBUF_STATIC} Threads::Threads "-Wl,--exclude-libs,libprotobuf.a")
  else()
    # By path, not protobuf::libprotobuf: LibTorch's Caffe2 config may define that target first.
    target_link_libraries(${target} PUBLIC ${Protobuf_LIBRARIES})
  endif()
endfunction()
