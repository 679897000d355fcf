// A cubin loaded once (context-independent CUlibrary) and the function of
// one device taken from it.
#pragma once

#include <memory>

#include <cuda.h>

#include "bqjit/compiled_kernel.hpp"
#include "runtime/cuda_driver.hpp"

namespace bqjit {

/// Owns a CUlibrary; unloaded when the last function of any device goes.
struct LoadedLibrary {
  std::shared_ptr<const CudaDriver> driver;
  std::shared_ptr<const CompiledKernel> kernel;
  CUlibrary library = nullptr;
  CUkernel handle = nullptr;

  LoadedLibrary() = default;
  LoadedLibrary(const LoadedLibrary&) = delete;
  LoadedLibrary& operator=(const LoadedLibrary&) = delete;
  ~LoadedLibrary() {
    if (library)
      driver->cuLibraryUnload(library);
  }
};

struct LoadedFunction {
  std::shared_ptr<const LoadedLibrary> library;
  CUfunction function = nullptr;
  CUcontext context = nullptr; ///< the device's primary context
  int device = 0;
  /// sm_90 or newer: the kernel waits for a programmatic dependent launch's
  /// predecessor, so the launch attribute may be set.
  bool programmaticLaunch = false;
  /// Whether a launch that does not say is programmatic (where
  /// programmaticLaunch holds): the service's Config::programmaticLaunch.
  bool programmaticByDefault = false;

  const CudaDriver& driver() const { return *library->driver; }
  const CompiledKernel& kernel() const { return *library->kernel; }
};

} // namespace bqjit
