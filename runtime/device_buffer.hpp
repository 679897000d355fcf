// Device memory owned by an RAII handle (the tools' problems, the autotuner).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include <cuda.h>
#include <llvm/Support/Error.h>

#include "runtime/cuda_driver.hpp"

namespace bqjit {

/// Device memory in the context current at allocation, freed on destruction.
/// Move-only.
class DeviceBuffer {
public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      driver_ = std::move(o.driver_);
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = 0;
      o.bytes_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }

  /// At least one byte (cuMemAlloc) in the current context; a DriverError
  /// names the size and `what`.
  static llvm::Expected<DeviceBuffer> allocate(std::shared_ptr<const CudaDriver> driver,
                                               size_t bytes, const std::string& what) {
    bytes = bytes == 0 ? 1 : bytes;
    CUdeviceptr ptr = 0;
    if (auto err = driver->check(driver->cuMemAlloc(&ptr, bytes), "cuMemAlloc",
                                 std::to_string(bytes) + " bytes for " + what))
      return err;
    DeviceBuffer b;
    b.driver_ = std::move(driver);
    b.ptr_ = ptr;
    b.bytes_ = bytes;
    return b;
  }

  /// `bytes` rounded up to 256: the stride of buffers laid one after another
  /// in one allocation, each as aligned as cuMemAlloc's own.
  static size_t aligned(int64_t bytes) { return (static_cast<size_t>(bytes) + 255) / 256 * 256; }

  CUdeviceptr get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  /// A host-side pointer value for LaunchArgs, `offset` bytes in.
  void* at(size_t offset) const { return reinterpret_cast<void*>(ptr_ + offset); }

private:
  void reset() {
    if (ptr_ && driver_)
      driver_->cuMemFree(ptr_);
    ptr_ = 0;
    bytes_ = 0;
  }
  std::shared_ptr<const CudaDriver> driver_;
  CUdeviceptr ptr_ = 0;
  size_t bytes_ = 0;
};

} // namespace bqjit
