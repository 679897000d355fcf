// Test helpers for code that needs a GPU: skip, with the reason, where there
// is none (no libcuda.so.1, no device, a driver too old).
#pragma once

#include <string>

#include "bqjit/error.hpp"
#include "runtime/cuda_driver.hpp"

namespace bqjit {

/// True when the CUDA driver loads and sees at least one device; otherwise
/// false, with the reason in *whyNot (if given).
inline bool gpuAvailable(std::string* whyNot) {
  auto why = [&](std::string text) {
    if (whyNot)
      *whyNot = std::move(text);
    return false;
  };
  auto driver = CudaDriver::load();
  if (!driver)
    return why("no GPU: " + consumeToString(driver.takeError()));
  if (auto err = (*driver)->requireToolEntryPoints())
    return why("driver too old for the tests: " + consumeToString(std::move(err)));
  int count = 0;
  if (auto err = (*driver)->check((*driver)->cuDeviceGetCount(&count), "cuDeviceGetCount"))
    return why("no GPU: " + consumeToString(std::move(err)));
  if (count < 1)
    return why("no GPU: the CUDA driver reports no devices");
  return true;
}

} // namespace bqjit

/// In a GoogleTest body: skips the test, saying why, when no GPU is usable.
#define BQJIT_REQUIRE_GPU()                                                                        \
  do {                                                                                             \
    std::string bqjitWhyNoGpu;                                                                     \
    if (!::bqjit::gpuAvailable(&bqjitWhyNoGpu))                                                    \
      GTEST_SKIP() << bqjitWhyNoGpu;                                                               \
  } while (false)
