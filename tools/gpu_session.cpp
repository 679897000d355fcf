#include "tools/gpu_session.hpp"

#include <string>

#include "bqjit/error.hpp"

namespace bqjit::cli {

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
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

void DeviceBuffer::reset() {
  if (ptr_ && driver_)
    driver_->cuMemFree(ptr_);
  ptr_ = 0;
  bytes_ = 0;
}

llvm::Expected<std::unique_ptr<GpuSession>>
GpuSession::open(std::shared_ptr<const CudaDriver> driver, int device) {
  const CudaDriver& d = *driver;
  if (auto err = d.requireToolEntryPoints())
    return std::move(err);
  int count = 0;
  if (auto err = d.check(d.cuDeviceGetCount(&count), "cuDeviceGetCount"))
    return err;
  if (device < 0 || device >= count)
    return makeError(ErrorCode::InvalidArgument, "--device " + std::to_string(device) +
                                                     " does not exist (" + std::to_string(count) +
                                                     " device(s))");
  CUdevice dev = 0;
  if (auto err = d.check(d.cuDeviceGet(&dev, device), "cuDeviceGet"))
    return err;
  auto info = d.deviceInfo(dev);
  if (!info)
    return info.takeError();
  std::unique_ptr<GpuSession> session(new GpuSession(driver, dev, *info));
  CUcontext ctx = nullptr;
  if (auto err = d.check(d.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain",
                         "device " + std::to_string(device)))
    return err;
  session->retained_ = true;
  if (auto err = d.check(d.cuCtxSetCurrent(ctx), "cuCtxSetCurrent"))
    return err;
  return session;
}

GpuSession::~GpuSession() {
  if (retained_)
    driver_->cuDevicePrimaryCtxRelease(device_);
}

llvm::Expected<DeviceBuffer> GpuSession::alloc(size_t bytes) const {
  bytes = bytes == 0 ? 1 : bytes;
  CUdeviceptr ptr = 0;
  if (auto err =
          driver_->check(driver_->cuMemAlloc(&ptr, bytes), "cuMemAlloc",
                         std::to_string(bytes) + " bytes on device " + std::to_string(device_)))
    return err;
  return DeviceBuffer(driver_, ptr, bytes);
}

} // namespace bqjit::cli
