# Finds COIN-OR CBC (the ILP solver behind the placement planner) through pkg-config's `cbc`, or in
# CBC_ROOT. Defines CBC_FOUND, CBC_VERSION and the imported target CBC::CBC (C API in
# coin/Cbc_C_Interface.h).
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(PC_CBC QUIET IMPORTED_TARGET cbc)
endif()
find_path(CBC_INCLUDE_DIR coin/Cbc_C_Interface.h
  HINTS ${CBC_ROOT} $ENV{CBC_ROOT} PATH_SUFFIXES include)
set(CBC_VERSION "${PC_CBC_VERSION}")
include(FindPackageHandleStandardArgs)
if(PC_CBC_FOUND)
  find_package_handle_standard_args(CBC REQUIRED_VARS CBC_INCLUDE_DIR VERSION_VAR CBC_VERSION)
  if(CBC_FOUND AND NOT TARGET CBC::CBC)
    add_library(CBC::CBC INTERFACE IMPORTED)
    target_link_libraries(CBC::CBC INTERFACE PkgConfig::PC_CBC)
    target_include_directories(CBC::CBC INTERFACE "${CBC_INCLUDE_DIR}")
  endif()
else()
  find_library(CBC_SOLVER_LIBRARY CbcSolver HINTS ${CBC_ROOT} $ENV{CBC_ROOT} PATH_SUFFIXES lib)
  find_package_handle_standard_args(CBC REQUIRED_VARS CBC_SOLVER_LIBRARY CBC_INCLUDE_DIR)
  if(CBC_FOUND AND NOT TARGET CBC::CBC)
    add_library(CBC::CBC UNKNOWN IMPORTED)
    set_target_properties(CBC::CBC PROPERTIES IMPORTED_LOCATION "${CBC_SOLVER_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${CBC_INCLUDE_DIR}")
  endif()
endif()
mark_as_advanced(CBC_INCLUDE_DIR CBC_SOLVER_LIBRARY)
