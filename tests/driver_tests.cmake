# Tests of runtime/cuda_driver.*: included from tests/CMakeLists.txt, which
# provides bqjit_add_test (GoogleTest linked, gtest_discover_tests).

# A stand-in for libcuda.so.1 (exports cuGetProcAddress_v2 and fakeCuda* knobs)
# that the tests dlopen by path, to reach the paths a real driver rarely takes.
add_library(bqjit_fake_cuda SHARED ${CMAKE_CURRENT_LIST_DIR}/fake_cuda.c)
target_include_directories(bqjit_fake_cuda PRIVATE ${CUDA_INCLUDE_DIR})
set_target_properties(bqjit_fake_cuda PROPERTIES C_STANDARD 11 C_VISIBILITY_PRESET default)

bqjit_add_test(test_cuda_driver
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cuda_driver.cpp
  LIBS bqjit_runtime ${CMAKE_DL_LIBS})
target_compile_definitions(test_cuda_driver
                           PRIVATE BQJIT_FAKE_CUDA_LIBRARY="$<TARGET_FILE:bqjit_fake_cuda>")
# Loaded at run time, not linked: build it with the test all the same.
add_dependencies(test_cuda_driver bqjit_fake_cuda)
