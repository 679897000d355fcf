# What bqjit's C++ libraries need of LLVM 14 (ADT and Support: llvm::Error,
# llvm::Expected, StringRef), defined once for the build (top-level
# CMakeLists.txt) and for a host that uses the installed package (installed
# beside bqjitConfig.cmake, which includes it).
#
# bqjit_llvm_target(NAME [IMPORTED]) creates the INTERFACE target NAME: LLVM's
# headers (as system headers) and definitions, and the static archives
# libLLVMSupport.a and libLLVMDemangle.a with the system libraries they use.
# LLVM must have been found (find_package(LLVM 14 CONFIG)), and Threads too.
# The archives are named by path rather than through LLVM's exported target
# LLVMSupport, whose link interface also carries libz3 (an optional part of
# Debian's LLVM that bqjit does not use). Sets BQJIT_LLVM_MISSING to what was
# not found, empty when nothing was missing.
function(bqjit_llvm_target name)
  set(missing "")
  find_library(BQJIT_LLVM_SUPPORT_LIB libLLVMSupport.a PATHS ${LLVM_LIBRARY_DIRS} NO_DEFAULT_PATH)
  find_library(BQJIT_LLVM_DEMANGLE_LIB libLLVMDemangle.a PATHS ${LLVM_LIBRARY_DIRS} NO_DEFAULT_PATH)
  find_library(BQJIT_TINFO_LIB NAMES tinfo)
  find_library(BQJIT_Z_LIB NAMES z)
  foreach(var BQJIT_LLVM_SUPPORT_LIB BQJIT_LLVM_DEMANGLE_LIB BQJIT_TINFO_LIB BQJIT_Z_LIB)
    if(NOT ${var})
      string(REPLACE "BQJIT_" "" what "${var}")
      list(APPEND missing "${what}")
    endif()
  endforeach()
  set(BQJIT_LLVM_MISSING "${missing}" PARENT_SCOPE)
  if(missing)
    return()
  endif()
  if("IMPORTED" IN_LIST ARGN)
    add_library(${name} INTERFACE IMPORTED)
  else()
    add_library(${name} INTERFACE)
  endif()
  target_include_directories(${name} SYSTEM INTERFACE ${LLVM_INCLUDE_DIRS})
  separate_arguments(definitions NATIVE_COMMAND "${LLVM_DEFINITIONS}")
  target_compile_definitions(${name} INTERFACE ${definitions})
  target_link_libraries(${name} INTERFACE ${BQJIT_LLVM_SUPPORT_LIB} ${BQJIT_LLVM_DEMANGLE_LIB}
                        Threads::Threads ${CMAKE_DL_LIBS} ${BQJIT_TINFO_LIB} ${BQJIT_Z_LIB})
endfunction()
