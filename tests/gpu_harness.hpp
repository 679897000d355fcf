// Shared pieces of the GPU tests: device buffers, one case run against the
// CPU reference. Header-only; every test file that needs a GPU includes it.
#pragma once

#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "bqjit/service.hpp"
#include "reference/reference.hpp"
#include "runtime/cuda_driver.hpp"

namespace bqjit::test {

/// Device memory owned by RAII.
class DeviceBuffer {
public:
  DeviceBuffer(const CudaDriver& d, size_t bytes) : d_(&d), bytes_(bytes) {
    if (bytes > 0) {
      CUresult r = d.cuMemAlloc(&ptr_, bytes);
      if (r != CUDA_SUCCESS)
        throw std::runtime_error("cuMemAlloc(" + std::to_string(bytes) +
                                 ") failed: " + d.resultName(r));
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_)
      d_->cuMemFree(ptr_);
  }
  CUdeviceptr get() const { return ptr_; }
  void* ptr() const { return reinterpret_cast<void*>(ptr_); }
  size_t bytes() const { return bytes_; }

private:
  const CudaDriver* d_;
  CUdeviceptr ptr_ = 0;
  size_t bytes_;
};

/// The arguments of one launch over these buffers (x, q and scales only).
inline LaunchArgs argsOf(const DeviceBuffer& x, int64_t ldx, int64_t tokens, const DeviceBuffer& q,
                         const DeviceBuffer& scales) {
  LaunchArgs a;
  a.x = x.ptr();
  a.ldx = ldx;
  a.tokens = tokens;
  a.q = q.ptr();
  a.scales = scales.ptr();
  return a;
}

inline void checkCu(const CudaDriver& d, CUresult r, const char* what) {
  if (r != CUDA_SUCCESS)
    throw std::runtime_error(std::string(what) + " failed: " + d.resultName(r));
}
inline void checkCu(const CudaDriver& d, CUresult r, const std::string& what) {
  checkCu(d, r, what.c_str());
}

/// Makes a context current on this thread for a scope (cuCtxPushCurrent,
/// then cuCtxPopCurrent); device buffers made inside must go before it.
class ScopedContext {
public:
  ScopedContext(const CudaDriver& d, CUcontext ctx) : d_(&d) {
    checkCu(d, d.cuCtxPushCurrent(ctx), "cuCtxPushCurrent");
  }
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;
  ~ScopedContext() {
    CUcontext popped = nullptr;
    d_->cuCtxPopCurrent(&popped);
  }

private:
  const CudaDriver* d_;
};

/// One GPU environment per test binary: driver, primary context made
/// current, and a Service whose cache lives in a private directory.
struct GpuEnv {
  std::shared_ptr<const CudaDriver> driver;
  std::unique_ptr<Service> service;
  CUcontext context = nullptr; ///< device 0's primary context, current on the main thread
  std::string arch;            ///< device 0's architecture
  int deviceCount = 0;         ///< devices the driver sees; 0 when skipping
  std::string skipReason;

  static GpuEnv& get() {
    static GpuEnv env; // one per process: the GPU tests share its compiled kernels
    return env;
  }

  /// The primary context of `device`, retained on first use and kept for the
  /// life of the process (device 0's is `context`). Thread-safe; throws
  /// std::runtime_error naming the device when it can't.
  CUcontext primaryContext(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    checkDevice(device);
    if (!contexts_[device]) {
      CUcontext ctx = nullptr;
      checkCu(*driver, driver->cuDevicePrimaryCtxRetain(&ctx, device),
              "cuDevicePrimaryCtxRetain(device " + std::to_string(device) + ")");
      contexts_[device] = ctx;
    }
    return contexts_[device];
  }

  /// The architecture of `device`, e.g. "sm_90". Thread-safe; throws
  /// std::runtime_error naming the device when it can't.
  std::string archOf(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    checkDevice(device);
    if (archs_[device].empty()) {
      auto info = driver->deviceInfo(device);
      if (!info)
        throw std::runtime_error("architecture of device " + std::to_string(device) + ": " +
                                 consumeToString(info.takeError()));
      archs_[device] = info->arch();
    }
    return archs_[device];
  }

private:
  void checkDevice(int device) const {
    if (device < 0 || device >= deviceCount)
      throw std::runtime_error(
          "device " + std::to_string(device) + " does not exist: " +
          (skipReason.empty() ? "the driver sees " + std::to_string(deviceCount) + " device(s)"
                              : skipReason));
  }

  std::mutex mutex_;                ///< guards contexts_ and archs_
  std::vector<CUcontext> contexts_; ///< by device; null until retained
  std::vector<std::string> archs_;  ///< by device; empty until asked

  GpuEnv() {
    auto d = CudaDriver::load();
    if (!d) {
      skipReason = "no GPU: " + consumeToString(d.takeError());
      return;
    }
    driver = *d;
    if (auto err = driver->requireToolEntryPoints()) {
      skipReason = "driver too old for the tests: " + consumeToString(std::move(err));
      return;
    }
    int count = 0;
    if (driver->cuDeviceGetCount(&count) != CUDA_SUCCESS || count == 0) {
      skipReason = "no CUDA device visible";
      return;
    }
    checkCu(*driver, driver->cuDevicePrimaryCtxRetain(&context, 0), "cuDevicePrimaryCtxRetain");
    checkCu(*driver, driver->cuCtxSetCurrent(context), "cuCtxSetCurrent");
    auto info = driver->deviceInfo(0);
    arch = info ? info->arch() : "sm_90";
    if (!info)
      llvm::consumeError(info.takeError());
    deviceCount = count;
    contexts_.assign(count, nullptr);
    archs_.assign(count, std::string());
    contexts_[0] = context;
    archs_[0] = arch;
    auto config = Config::fromEnvironment();
    if (!config)
      throw std::runtime_error(consumeToString(config.takeError()));
    char tmpl[] = "/tmp/bqjit-gputest-XXXXXX";
    if (!std::getenv("BQJIT_CACHE_DIR"))
      config->cacheDir = mkdtemp(tmpl);
    auto s = Service::create(*config);
    if (!s)
      throw std::runtime_error(consumeToString(s.takeError()));
    service = std::move(*s);
  }
};

#define BQJIT_REQUIRE_GPU_ENV()                                                                    \
  do {                                                                                             \
    if (!::bqjit::test::GpuEnv::get().skipReason.empty())                                          \
      GTEST_SKIP() << ::bqjit::test::GpuEnv::get().skipReason;                                     \
  } while (0)

/// A row of x to overwrite with special values.
struct SpecialRow {
  int64_t row;
  ref::RowPattern pattern;
};

struct GpuCase {
  KernelSpec spec;
  int64_t tokens = 1;
  int64_t ldxPad = 0; ///< ldx = 2H + ldxPad
  float scaleUb = 0;
  float globalScale = 0; ///< NVFP4's *global_scale (docs/contract.md section 8)
  int64_t experts = 1;
  std::vector<int32_t> maskedM;
  std::vector<SpecialRow> specialRows;
  uint64_t seed = 1;
  float inputScale = 4.0f;
  /// q starts this many bytes into its buffer: a pointer aligned only as far
  /// as the launch requires (the bytes before it must stay unwritten).
  int64_t qOffset = 0;

  std::string name() const {
    std::string n =
        spec.label() + " T=" + std::to_string(tokens) + " ldx+" + std::to_string(ldxPad);
    if (qOffset)
      n += " q+" + std::to_string(qOffset);
    if (spec.isNvfp4())
      n += " global_scale=" + std::to_string(globalScale);
    return n;
  }
};

/// Runs one case on `device` with poisoned outputs and compares with the
/// reference. The spec's arch is set to the device's; buffers, copies and the
/// launch run with the device's primary context pushed on this thread (popped
/// on return), so `stream` must be null (the default stream) or a stream of
/// that context.
inline ref::CompareReport runWithKernel(const Kernel& kernel, const GpuCase& c,
                                        CUstream stream = nullptr, int device = 0);

inline ref::CompareReport runCase(const GpuCase& c, CUstream stream = nullptr, int device = 0) {
  GpuEnv& env = GpuEnv::get();
  KernelSpec spec = c.spec;
  spec.arch = env.archOf(device);
  auto kernel = env.service->getKernel(spec, device);
  if (!kernel)
    throw std::runtime_error("getKernel(" + spec.label() + ", device " + std::to_string(device) +
                             "): " + consumeToString(kernel.takeError()));
  if (kernel->device() != device)
    throw std::runtime_error("getKernel(" + spec.label() + ", device " + std::to_string(device) +
                             ") returned a kernel of device " + std::to_string(kernel->device()));
  // The variant of the case's own regime, not the many-token variant that
  // stands in for it while it compiles in the background.
  env.service->finishVariants();
  return runWithKernel(*kernel, c, stream, device);
}

/// runCase with a kernel handle the caller holds (c.spec gives only H and
/// the case's rows; the kernel's own spec is the one checked).
inline ref::CompareReport runWithKernel(const Kernel& kernel, const GpuCase& c, CUstream stream,
                                        int device) {
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  const KernelSpec& spec = kernel.spec();
  // Before the buffers, so that they are freed while it is still current.
  ScopedContext current(d, env.primaryContext(device));

  ref::Problem p;
  p.spec = kernel.spec();
  p.tokens = c.tokens;
  p.ldx = 2 * static_cast<int64_t>(spec.hidden) + c.ldxPad;
  p.scaleUb = c.scaleUb;
  p.globalScale = c.globalScale;
  p.numExperts = c.experts;
  p.maskedM = c.maskedM;
  p.poison = 0xAB;
  std::vector<uint8_t> x = ref::makeInput(p.spec, c.tokens, p.ldx, c.experts, c.seed, c.inputScale);
  for (const auto& r : c.specialRows)
    ref::fillRow(p.spec, x.data(), r.row, p.ldx, r.pattern);
  ref::Result expected = ref::run(p, x.data());

  const size_t qBytes = ref::outputBytes(p.spec, c.tokens, c.experts);
  const size_t sBytes = ref::scaleBufferBytes(p.spec, c.tokens, c.experts);
  DeviceBuffer dx(d, x.size()), dq(d, qBytes + c.qOffset), ds(d, sBytes), dub(d, 4),
      dm(d, 4 * c.experts + 4), dgs(d, 4);
  checkCu(d, d.cuMemcpyHtoD(dx.get(), x.data(), x.size()), "cuMemcpyHtoD x");
  checkCu(d, d.cuMemsetD8(dq.get(), p.poison, qBytes + c.qOffset), "cuMemsetD8 q");
  checkCu(d, d.cuMemsetD8(ds.get(), p.poison, sBytes), "cuMemsetD8 scales");
  checkCu(d, d.cuMemcpyHtoD(dub.get(), &c.scaleUb, 4), "cuMemcpyHtoD ub");
  checkCu(d, d.cuMemcpyHtoD(dgs.get(), &c.globalScale, 4), "cuMemcpyHtoD global scale");
  if (!c.maskedM.empty())
    checkCu(d, d.cuMemcpyHtoD(dm.get(), c.maskedM.data(), 4 * c.maskedM.size()), "cuMemcpyHtoD m");

  LaunchArgs a;
  a.x = dx.ptr();
  a.ldx = p.ldx;
  a.tokens = c.tokens;
  a.q = static_cast<unsigned char*>(dq.ptr()) + c.qOffset;
  a.scales = ds.ptr();
  a.scaleUb = p.spec.hasScaleUb ? static_cast<const float*>(dub.ptr()) : nullptr;
  a.maskedM = p.spec.masked ? static_cast<const int32_t*>(dm.ptr()) : nullptr;
  a.numExperts = c.experts;
  a.globalScale = p.spec.needsGlobalScale() ? static_cast<const float*>(dgs.ptr()) : nullptr;
  // The uploads and memsets above went to the legacy default stream, which a
  // non-blocking stream does not wait for (and a pageable upload may return
  // before its DMA is done): finish them before launching on `stream`.
  if (stream)
    checkCu(d, d.cuStreamSynchronize(nullptr), "cuStreamSynchronize(legacy default stream)");
  if (auto err = kernel.launch(a, stream))
    throw std::runtime_error("launch on device " + std::to_string(device) + ": " +
                             consumeToString(std::move(err)));
  checkCu(d, stream ? d.cuStreamSynchronize(stream) : d.cuCtxSynchronize(), "synchronize");

  std::vector<uint8_t> q(qBytes + c.qOffset), s(sBytes);
  checkCu(d, d.cuMemcpyDtoH(q.data(), dq.get(), q.size()), "cuMemcpyDtoH q");
  checkCu(d, d.cuMemcpyDtoH(s.data(), ds.get(), sBytes), "cuMemcpyDtoH scales");
  for (int64_t i = 0; i < c.qOffset; ++i)
    if (q[i] != p.poison)
      throw std::runtime_error(c.name() + ": byte " + std::to_string(i - c.qOffset) +
                               " before q was written");
  return ref::compare(p, expected, q.data() + c.qOffset, s.data());
}

} // namespace bqjit::test
