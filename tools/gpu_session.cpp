#include "tools/gpu_session.hpp"

#include <string>

#include "bqjit/error.hpp"

namespace bqjit::cli {

llvm::Expected<std::unique_ptr<GpuSession>>
GpuSession::open(std::shared_ptr<const CudaDriver> driver, int device) {
  const CudaDriver& d = *driver;
  if (auto err = d.requireToolEntryPoints())
    return err;
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
  return DeviceBuffer::allocate(driver_, bytes, "device " + std::to_string(device_));
}

} // namespace bqjit::cli
