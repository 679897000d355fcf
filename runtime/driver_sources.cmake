# The CUDA driver loader (libcuda.so.1 through dlopen); part of bqjit_runtime,
# which links ${CMAKE_DL_LIBS} for it.
set(BQJIT_DRIVER_SOURCES cuda_driver.cpp)
