// A device made current on this thread through its primary context, and
// device memory in it; used by `verify` and `tune`.
#pragma once

#include <cstdint>
#include <memory>

#include <cuda.h>
#include <llvm/Support/Error.h>

#include "runtime/cuda_driver.hpp"
#include "runtime/device_buffer.hpp"

namespace bqjit::cli {

/// Retains the primary context of `device` and makes it current; releases
/// it on destruction. Buffers must go before the session.
class GpuSession {
public:
  static llvm::Expected<std::unique_ptr<GpuSession>> open(std::shared_ptr<const CudaDriver> driver,
                                                          int device);
  GpuSession(const GpuSession&) = delete;
  GpuSession& operator=(const GpuSession&) = delete;
  ~GpuSession();

  const CudaDriver& driver() const { return *driver_; }
  int device() const { return device_; }
  const DeviceInfo& info() const { return info_; }

  /// At least one byte of device memory (a DriverError names the size).
  llvm::Expected<DeviceBuffer> alloc(size_t bytes) const;

private:
  GpuSession(std::shared_ptr<const CudaDriver> driver, int device, DeviceInfo info)
      : driver_(std::move(driver)), device_(device), info_(std::move(info)) {}
  std::shared_ptr<const CudaDriver> driver_;
  int device_;
  DeviceInfo info_;
  bool retained_ = false;
};

} // namespace bqjit::cli
