// A device made current on this thread through its primary context, and
// device memory owned by RAII handles; used by `verify` and `tune`.
#pragma once

#include <cstdint>
#include <memory>

#include <cuda.h>
#include <llvm/Support/Error.h>

#include "runtime/cuda_driver.hpp"

namespace bqjit::cli {

/// Device memory, freed on destruction. Move-only.
class DeviceBuffer {
public:
  DeviceBuffer() = default;
  DeviceBuffer(std::shared_ptr<const CudaDriver> driver, CUdeviceptr ptr, size_t bytes)
      : driver_(std::move(driver)), ptr_(ptr), bytes_(bytes) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }

  CUdeviceptr get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  /// A host-side pointer value for LaunchArgs, `offset` bytes in.
  void* at(size_t offset) const { return reinterpret_cast<void*>(ptr_ + offset); }

private:
  void reset();
  std::shared_ptr<const CudaDriver> driver_;
  CUdeviceptr ptr_ = 0;
  size_t bytes_ = 0;
};

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
