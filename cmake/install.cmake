# `cmake --install BUILD [--prefix P]`: the command, the libraries, the public
# headers, the CMake package (bqjit::bqjit, bqjit::c), bqjit.pc, the license
# and the documentation. The kernel template is embedded in the library at
# build time (jit/CMakeLists.txt): nothing is read from the prefix at run time.
include(CMakePackageConfigHelpers)

set(BQJIT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/bqjit" CACHE STRING
    "Where bqjitConfig.cmake goes, relative to the prefix")
set(BQJIT_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig" CACHE STRING
    "Where bqjit.pc goes, relative to the prefix")

# The installed command and C library find NVRTC where they were linked
# against it (the CUDA toolkit's lib64), as in the build tree.
set_target_properties(bqjit_cli bqjit PROPERTIES INSTALL_RPATH_USE_LINK_PATH TRUE)

install(TARGETS bqjit_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT bqjit)

# The C API: libbqjit.so (LLVM and the rest linked in, only bqjit_* exported).
# The C++ API: the static libraries below the service, exported as
# bqjit::bqjit (the runtime) and the layers it links (bqjit::core, ...).
set_target_properties(bqjit_core PROPERTIES EXPORT_NAME core)
set_target_properties(bqjit_jit PROPERTIES EXPORT_NAME jit)
set_target_properties(bqjit_cache PROPERTIES EXPORT_NAME cache)
set_target_properties(bqjit_planner PROPERTIES EXPORT_NAME planner)
set_target_properties(bqjit_redis PROPERTIES EXPORT_NAME redis)
install(TARGETS bqjit bqjit_runtime bqjit_planner bqjit_cache bqjit_redis bqjit_jit bqjit_core
  EXPORT bqjitTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT bqjit NAMELINK_COMPONENT bqjit
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT bqjit)
install(DIRECTORY ${CMAKE_SOURCE_DIR}/include/bqjit DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        COMPONENT bqjit FILES_MATCHING PATTERN "*.h" PATTERN "*.hpp")

install(EXPORT bqjitTargets NAMESPACE bqjit:: DESTINATION ${BQJIT_INSTALL_CMAKEDIR}
        COMPONENT bqjit)
set(BQJIT_LLVM_HINTS "${LLVM_DIR}" /usr/lib/llvm-14/lib/cmake/llvm)
list(REMOVE_DUPLICATES BQJIT_LLVM_HINTS)
list(JOIN BQJIT_LLVM_HINTS "\" \"" BQJIT_LLVM_HINTS)
set(BQJIT_LLVM_HINTS "\"${BQJIT_LLVM_HINTS}\"")
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/bqjitConfig.cmake.in
  ${CMAKE_BINARY_DIR}/package/bqjitConfig.cmake
  INSTALL_DESTINATION ${BQJIT_INSTALL_CMAKEDIR})
# 0.x: a minor release may break the API, so only the same MAJOR.MINOR matches.
write_basic_package_version_file(${CMAKE_BINARY_DIR}/package/bqjitConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/package/bqjitConfig.cmake
              ${CMAKE_BINARY_DIR}/package/bqjitConfigVersion.cmake
              ${CMAKE_SOURCE_DIR}/cmake/bqjitLLVM.cmake
        DESTINATION ${BQJIT_INSTALL_CMAKEDIR} COMPONENT bqjit)

# bqjit.pc (the C API): relocatable, its prefix found from where it lies.
file(RELATIVE_PATH BQJIT_PC_TO_PREFIX "/prefix/${BQJIT_INSTALL_PKGCONFIGDIR}" "/prefix")
string(REGEX REPLACE "/$" "" BQJIT_PC_TO_PREFIX "${BQJIT_PC_TO_PREFIX}")
configure_file(${CMAKE_SOURCE_DIR}/cmake/bqjit.pc.in ${CMAKE_BINARY_DIR}/package/bqjit.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/package/bqjit.pc DESTINATION ${BQJIT_INSTALL_PKGCONFIGDIR}
        COMPONENT bqjit)

install(FILES ${CMAKE_SOURCE_DIR}/LICENSE ${CMAKE_SOURCE_DIR}/README.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT bqjit)
install(DIRECTORY ${CMAKE_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR}/docs
        COMPONENT bqjit FILES_MATCHING PATTERN "*.md")
