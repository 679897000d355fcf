// Several GPUs in one process: one cache entry loaded on every device,
// concurrent launches on all devices, and launches refused on a stream of
// another device or of a non-primary context. Written for any number N >= 1
// of visible devices (what each test checks with one device is said at the
// test); skips, saying why, without a GPU.
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "cache/kernel_cache.hpp"
#include "gpu_harness.hpp"
#include "planner/planner.hpp"

namespace bqjit::test {
namespace {

KernelSpec bf16Spec(int h, int g, const std::string& arch) {
  KernelSpec s;
  s.hidden = h;
  s.groupSize = g;
  s.arch = arch;
  return s;
}

/// Success for CUDA_SUCCESS; otherwise the call and the driver's result name.
testing::AssertionResult cuOk(const CudaDriver& d, CUresult r, const std::string& call) {
  if (r == CUDA_SUCCESS)
    return testing::AssertionSuccess();
  return testing::AssertionFailure() << call << " failed: " << d.resultName(r);
}

/// The launch was refused with ErrorCode::InvalidArgument and a message that
/// holds every one of `needles`.
testing::AssertionResult refused(llvm::Error err, const std::vector<std::string>& needles) {
  if (!err)
    return testing::AssertionFailure() << "the launch was accepted; expected InvalidArgument";
  std::string message;
  const ErrorCode code = consumeError(std::move(err), &message);
  if (code != ErrorCode::InvalidArgument)
    return testing::AssertionFailure()
           << "expected InvalidArgument, got " << errorCodeName(code) << ": " << message;
  for (const std::string& needle : needles)
    if (message.find(needle) == std::string::npos)
      return testing::AssertionFailure() << "the message lacks \"" << needle << "\": " << message;
  return testing::AssertionSuccess();
}

/// A non-blocking stream created in `ctx` (pushed for the creation and the
/// destruction).
class Stream {
public:
  Stream(const CudaDriver& d, CUcontext ctx, const std::string& where) : d_(&d), ctx_(ctx) {
    ScopedContext in(d, ctx);
    checkCu(d, d.cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING), "cuStreamCreate in " + where);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (stream_ && d_->cuCtxPushCurrent(ctx_) == CUDA_SUCCESS) {
      d_->cuStreamDestroy(stream_);
      CUcontext popped = nullptr;
      d_->cuCtxPopCurrent(&popped);
    }
  }
  CUstream get() const { return stream_; }

private:
  const CudaDriver* d_;
  CUcontext ctx_;
  CUstream stream_ = nullptr;
};

/// A second, non-primary context on a device, with a stream in it.
/// cuCtxCreate makes the new context current; the constructor pops it again,
/// so that the caller's context is current when it returns.
class SecondContext {
public:
  SecondContext(const CudaDriver& d, int device) : d_(&d) {
    const std::string where = "a second context on device " + std::to_string(device);
    CUdevice dev = 0;
    checkCu(d, d.cuDeviceGet(&dev, device), "cuDeviceGet(" + std::to_string(device) + ")");
    CUctxCreateParams params{}; // no execution affinity, no CIG: a plain context
    checkCu(d, d.cuCtxCreate(&ctx_, &params, 0, dev), "cuCtxCreate of " + where);
    const CUresult created = d.cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING);
    CUcontext popped = nullptr;
    const CUresult pop = d.cuCtxPopCurrent(&popped);
    std::string why;
    if (created != CUDA_SUCCESS)
      why = "cuStreamCreate in " + where + " failed: " + d.resultName(created);
    else if (pop != CUDA_SUCCESS)
      why = "cuCtxPopCurrent after cuCtxCreate failed: " + d.resultName(pop);
    else if (popped != ctx_)
      why = "cuCtxPopCurrent after cuCtxCreate popped another context than the new one";
    if (!why.empty()) {
      if (created != CUDA_SUCCESS)
        stream_ = nullptr;
      release();
      throw std::runtime_error(why);
    }
  }
  SecondContext(const SecondContext&) = delete;
  SecondContext& operator=(const SecondContext&) = delete;
  ~SecondContext() { release(); }

  CUcontext context() const { return ctx_; }
  CUstream stream() const { return stream_; }

  /// Destroys the stream and the context; returns what failed, "" if nothing.
  std::string release() {
    std::string failed;
    if (stream_) {
      CUresult r = d_->cuCtxPushCurrent(ctx_);
      if (r == CUDA_SUCCESS) {
        r = d_->cuStreamDestroy(stream_);
        CUcontext popped = nullptr;
        d_->cuCtxPopCurrent(&popped);
        if (r != CUDA_SUCCESS)
          failed += "cuStreamDestroy failed: " + d_->resultName(r) + "; ";
      } else {
        failed += "cuCtxPushCurrent (to destroy the stream) failed: " + d_->resultName(r) + "; ";
      }
      stream_ = nullptr;
    }
    if (ctx_) {
      // Also pops it if it is still current to this thread.
      if (CUresult r = d_->cuCtxDestroy(ctx_); r != CUDA_SUCCESS)
        failed += "cuCtxDestroy failed: " + d_->resultName(r);
      ctx_ = nullptr;
    }
    return failed;
  }

private:
  const CudaDriver* d_;
  CUcontext ctx_ = nullptr;
  CUstream stream_ = nullptr;
};

/// Launches `kernel` with T = 4 on fresh, valid buffers of its device (so that
/// only the stream can be wrong), with `launchCtx` pushed around the launch
/// when given. Returns what launch() returned; an accepted launch is
/// synchronized before the buffers are freed.
llvm::Error launchFour(const Kernel& kernel, CUstream stream, CUcontext launchCtx = nullptr) {
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  ScopedContext own(d, env.primaryContext(kernel.device()));
  const int64_t tokens = 4;
  const KernelSpec& s = kernel.specFor(tokens);
  const int64_t ldx = 2 * static_cast<int64_t>(s.hidden);
  DeviceBuffer x(d, tokens * ldx * dtypeBytes(s.inDtype)), q(d, ref::outputBytes(s, tokens)),
      scales(d, ref::scaleBufferBytes(s, tokens)), ub(d, 4), masked(d, 4);
  checkCu(d, d.cuMemsetD8(x.get(), 0, x.bytes()), "cuMemsetD8 x");
  const float one = 1.0f;
  const int32_t rows = static_cast<int32_t>(tokens);
  checkCu(d, d.cuMemcpyHtoD(ub.get(), &one, 4), "cuMemcpyHtoD scaleUb");
  checkCu(d, d.cuMemcpyHtoD(masked.get(), &rows, 4), "cuMemcpyHtoD maskedM");
  // The memset is legacy-stream work, which a non-blocking stream does not wait for.
  checkCu(d, d.cuCtxSynchronize(), "synchronize the uploads");
  LaunchArgs a = argsOf(x, ldx, tokens, q, scales);
  a.scaleUb = s.hasScaleUb ? static_cast<const float*>(ub.ptr()) : nullptr;
  a.maskedM = s.masked ? static_cast<const int32_t*>(masked.ptr()) : nullptr;
  llvm::Error err = [&] {
    if (!launchCtx)
      return kernel.launch(a, stream);
    ScopedContext other(d, launchCtx);
    return kernel.launch(a, stream);
  }();
  if (!err) // accepted: let it finish before the buffers go
    checkCu(d, stream ? d.cuStreamSynchronize(stream) : d.cuCtxSynchronize(),
            "synchronize an accepted launch on device " + std::to_string(kernel.device()));
  return err;
}

// One Service asked for the same spec on every device: the cache compiles it
// once (per launch variant and architecture) and each device gets its own
// Kernel, loaded from the one cache entry. Devices of different architectures
// need different cubins, so they are grouped by architecture and each group
// is checked on its own: one compile per group (per variant), memory hits for
// the group's other devices. With one device this checks the single-device
// path only (one compile, one Kernel of device 0).
TEST(GpuMultiDevice, OneEntryLoadedOnEveryDevice) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  const int n = env.deviceCount;
  std::map<std::string, std::vector<int>> byArch;
  for (int dev = 0; dev < n; ++dev)
    byArch[env.archOf(dev)].push_back(dev);
  std::string groups;
  for (const auto& [arch, devices] : byArch) {
    groups += (groups.empty() ? "" : "; ") + arch + ":";
    for (int dev : devices)
      groups += " " + std::to_string(dev);
  }
  RecordProperty("devices", n);
  RecordProperty("architecture_groups", groups);
  if (n == 1) {
    RecordProperty("note", "one device visible: checks the single-device path only");
    std::printf("[multi-device] one device visible: OneEntryLoadedOnEveryDevice checks the "
                "single-device path only\n");
  } else {
    std::printf("[multi-device] %d devices, by architecture: %s\n", n, groups.c_str());
  }

  auto config = Config::fromEnvironment();
  ASSERT_TRUE(bool(config)) << consumeToString(config.takeError());
  char tmpl[] = "/tmp/bqjit-multidev-XXXXXX";
  const char* dir = mkdtemp(tmpl);
  ASSERT_NE(dir, nullptr) << "mkdtemp(" << tmpl << ") failed: " << std::strerror(errno);
  config->cacheDir = dir;
  config->noCompile = false;
  config->maxCacheBytes = 0;
  auto created = Service::create(*config);
  ASSERT_TRUE(bool(created)) << consumeToString(created.takeError());
  std::unique_ptr<Service> service = std::move(*created);
  const DiskCache* disk = service->cache().disk();
  ASSERT_NE(disk, nullptr) << "the fresh Service has no disk cache at " << dir;

  std::map<int, Kernel> kernels;
  int64_t entries = 0;
  for (const auto& [arch, devices] : byArch) {
    const KernelSpec spec = bf16Spec(4096, 128, arch);
    auto profile = service->deviceProfile(devices.front());
    ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
    auto plan = service->planner().plan(spec, *profile);
    ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
    const int64_t v = static_cast<int64_t>(plan->variants.size());
    const int64_t others = static_cast<int64_t>(devices.size()) - 1;
    std::string group = arch + " on device(s)";
    for (int dev : devices)
      group += " " + std::to_string(dev);
    const CacheCounters before = service->cache().counters();
    const CompiledKernel* first = nullptr;
    const KernelSpec* firstSmall = nullptr;
    for (int dev : devices) {
      auto kernel = service->getKernel(spec, dev);
      ASSERT_TRUE(bool(kernel)) << "getKernel(" << spec.label() << ", device " << dev
                                << "): " << consumeToString(kernel.takeError());
      service->finishVariants(); // the variants compiled in the background are in place
      EXPECT_EQ(kernel->device(), dev) << "getKernel for device " << dev << " (" << arch << ")";
      // One cache entry per variant: every device's Kernel refers to the same
      // CompiledKernel objects (the many-token shape and the very-few-token one).
      if (!first) {
        first = &kernel->compiled();
        firstSmall = &kernel->specFor(1);
      } else {
        EXPECT_EQ(&kernel->compiled(), first)
            << "device " << dev << " got another compiled kernel than device " << devices[0]
            << " for " << spec.label() << ": a second cache entry?";
        EXPECT_EQ(&kernel->specFor(1), firstSmall)
            << "device " << dev << " got another very-few-token kernel than device " << devices[0];
      }
      kernels.emplace(dev, *kernel);
    }
    const CacheCounters after = service->cache().counters();
    EXPECT_EQ(after.compiles - before.compiles, v)
        << group << ": expected one compile per launch variant (" << v
        << "), whatever the number of devices";
    EXPECT_EQ(after.misses - before.misses, v) << group;
    EXPECT_EQ(after.diskHits - before.diskHits, 0) << group << ": the cache directory was fresh";
    EXPECT_EQ(after.memoryHits - before.memoryHits, v * others)
        << group << ": each of the " << others << " other device(s) should hit memory once per "
        << "variant";
    entries += v;
  }
  ASSERT_EQ(static_cast<int>(kernels.size()), n) << "not every device got a Kernel";
  std::set<int> kernelDevices;
  for (const auto& [dev, kernel] : kernels)
    kernelDevices.insert(kernel.device());
  EXPECT_EQ(static_cast<int>(kernelDevices.size()), n)
      << "the Kernels of the " << n << " devices do not name " << n << " different devices";

  const CacheStats stats = disk->journal().stats();
  EXPECT_EQ(stats.compiles, entries) << "compiles in the journal " << disk->journal().path();
  EXPECT_EQ(stats.misses, entries) << "misses in the journal " << disk->journal().path();
  EXPECT_EQ(stats.hits, 0) << "disk hits in the journal " << disk->journal().path();
  EXPECT_EQ(static_cast<int64_t>(disk->list().size()), entries) << "entries under " << disk->root();

  // Asking again on every device neither compiles nor loads anew.
  const CacheCounters before = service->cache().counters();
  for (const auto& [dev, kernel] : kernels) {
    auto again = service->getKernel(bf16Spec(4096, 128, env.archOf(dev)), dev);
    ASSERT_TRUE(bool(again)) << "second getKernel on device " << dev << ": "
                             << consumeToString(again.takeError());
    EXPECT_EQ(again->device(), dev);
    EXPECT_EQ(&again->compiled(), &kernel.compiled()) << "device " << dev;
  }
  EXPECT_EQ(service->cache().counters().compiles, before.compiles);

  kernels.clear();
  service.reset(); // unloads the libraries and releases its primary contexts
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

/// The cases of one thread: a spec all threads share (so that threads of
/// several devices load one entry at once), in the many-token and the
/// very-few-token shape, two specs of the thread's own, and last a launch on the
/// default stream of the device's primary context.
constexpr int kReps = 5;
GpuCase concurrentCase(size_t id, int rep, const std::string& arch) {
  static const std::pair<int, int> own[] = {{3072, 96}, {6144, 192}, {5120, 128}};
  const int i = static_cast<int>(id);
  GpuCase c;
  switch (rep) {
  case 0: // shared, very few tokens (T x H <= 2^20): the tiny shape
    c.spec = bf16Spec(7168, 128, arch);
    c.tokens = 64 + 7 * i;
    break;
  case 1: // shared, T * H > 2^22: the throughput shape
    c.spec = bf16Spec(7168, 128, arch);
    c.tokens = 640 + 3 * i;
    break;
  case 2:
    c.spec = bf16Spec(own[i % 3].first, own[i % 3].second, arch);
    c.tokens = 200 + 13 * i;
    break;
  case 3:
    c.spec = bf16Spec(own[(i + 1) % 3].first, own[(i + 1) % 3].second, arch);
    c.tokens = 5 + i;
    c.ldxPad = 64;
    break;
  default: // on the default stream
    c.spec = bf16Spec(7168, 128, arch);
    c.tokens = 33 + i;
    break;
  }
  c.seed = 1000 + 100 * id + rep;
  return c;
}

// One thread per device, each with its device's primary context current, its
// own stream and buffers, launching kReps times and checking each result
// against the CPU reference. With one device, two threads share device 0
// (still a concurrency check: one context, two threads, two streams).
TEST(GpuMultiDevice, ConcurrentLaunchesOnAllDevices) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  std::vector<int> deviceOfThread;
  for (int dev = 0; dev < env.deviceCount; ++dev)
    deviceOfThread.push_back(dev);
  if (env.deviceCount == 1)
    deviceOfThread.push_back(0);
  const size_t threads = deviceOfThread.size();
  RecordProperty("devices", env.deviceCount);
  RecordProperty("threads", static_cast<int>(threads));
  std::printf("[multi-device] %zu threads on %d device(s)%s\n", threads, env.deviceCount,
              env.deviceCount == 1 ? " (one device: two threads share device 0)" : "");

  std::vector<std::string> failures(threads);
  std::vector<int> launches(threads, 0);
  std::mutex gateMutex;
  std::condition_variable gate;
  size_t arrived = 0;
  auto work = [&](size_t id) {
    { // start together
      std::unique_lock<std::mutex> lock(gateMutex);
      if (++arrived == threads)
        gate.notify_all();
      else
        gate.wait(lock, [&] { return arrived == threads; });
    }
    const int dev = deviceOfThread[id];
    const std::string who = "thread " + std::to_string(id) + " on device " + std::to_string(dev);
    CUstream stream = nullptr;
    try {
      const CUcontext ctx = env.primaryContext(dev);
      checkCu(d, d.cuCtxSetCurrent(ctx),
              "cuCtxSetCurrent(primary context of device " + std::to_string(dev) + ")");
      checkCu(d, d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
      const std::string arch = env.archOf(dev);
      for (int rep = 0; rep < kReps; ++rep) {
        const GpuCase c = concurrentCase(id, rep, arch);
        const bool defaultStream = rep == kReps - 1;
        const ref::CompareReport r = runCase(c, defaultStream ? nullptr : stream, dev);
        ++launches[id];
        if (!r.ok())
          failures[id] += who + ", " + c.name() + (defaultStream ? " (default stream)" : "") +
                          ": " + r.summary() + "\n";
      }
      CUcontext current = nullptr;
      checkCu(d, d.cuCtxGetCurrent(&current), "cuCtxGetCurrent");
      if (current != ctx)
        failures[id] += who + ": after runCase another context than the primary is current\n";
    } catch (const std::exception& e) {
      failures[id] += who + ", after " + std::to_string(launches[id]) + " of " +
                      std::to_string(kReps) + " launches: " + e.what() + "\n";
    }
    if (stream)
      d.cuStreamDestroy(stream);
  };
  std::vector<std::thread> pool;
  for (size_t id = 0; id < threads; ++id)
    pool.emplace_back(work, id);
  for (auto& t : pool)
    t.join();
  for (size_t id = 0; id < threads; ++id) {
    EXPECT_EQ(failures[id], "") << "thread " << id << " on device " << deviceOfThread[id];
    EXPECT_EQ(launches[id], kReps)
        << "thread " << id << " on device " << deviceOfThread[id] << " stopped early";
  }
}

// A kernel of one device on a stream of another device's primary context is
// refused (both ways), as is the default stream while the other device's
// primary context is current; the message names 'stream' and both devices.
// Needs two devices; with one it is skipped (see StreamOfAnotherContext for
// the one-device counterpart).
TEST(GpuMultiDevice, StreamOfAnotherDeviceIsRefused) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  if (env.deviceCount < 2)
    GTEST_SKIP() << "needs two GPUs; " << env.deviceCount << " visible";
  const CudaDriver& d = *env.driver;
  const CUcontext ctx0 = env.primaryContext(0), ctx1 = env.primaryContext(1);
  auto k0 = env.service->getKernel(bf16Spec(2048, 128, env.archOf(0)), 0);
  ASSERT_TRUE(bool(k0)) << "getKernel on device 0: " << consumeToString(k0.takeError());
  auto k1 = env.service->getKernel(bf16Spec(2048, 128, env.archOf(1)), 1);
  ASSERT_TRUE(bool(k1)) << "getKernel on device 1: " << consumeToString(k1.takeError());
  ASSERT_EQ(k0->device(), 0);
  ASSERT_EQ(k1->device(), 1);
  Stream s0(d, ctx0, "the primary context of device 0");
  Stream s1(d, ctx1, "the primary context of device 1");

  EXPECT_TRUE(refused(launchFour(*k0, s1.get()), {"'stream'", "device 0", "device 1"}))
      << "a kernel of device 0 on a stream of device 1";
  EXPECT_TRUE(refused(launchFour(*k1, s0.get()), {"'stream'", "device 1", "device 0"}))
      << "a kernel of device 1 on a stream of device 0";
  EXPECT_TRUE(refused(launchFour(*k0, nullptr, ctx1),
                      {"'stream'", "default stream", "device 0", "device 1"}))
      << "a kernel of device 0 on the default stream with device 1's primary context current";

  // Each device's kernel still runs, and right, on a stream of its own device.
  for (int dev : {0, 1}) {
    GpuCase c;
    c.spec = bf16Spec(2048, 128, env.archOf(dev));
    c.tokens = 37;
    const ref::CompareReport r = runCase(c, dev == 0 ? s0.get() : s1.get(), dev);
    EXPECT_TRUE(r.ok()) << "device " << dev << ", " << c.name() << ": " << r.summary();
  }
}

// A stream of a second, non-primary context on device 0 is refused for a
// kernel of device 0 (as are the default streams while that context is
// current); afterwards the kernel still launches on the primary context's
// streams. Works with one device.
TEST(GpuMultiDevice, StreamOfAnotherContextIsRefused) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  const CUcontext primary = env.primaryContext(0);
  ASSERT_TRUE(cuOk(d, d.cuCtxSetCurrent(primary), "cuCtxSetCurrent(primary context of device 0)"));
  auto kernel = env.service->getKernel(bf16Spec(2048, 128, env.archOf(0)), 0);
  ASSERT_TRUE(bool(kernel)) << "getKernel on device 0: " << consumeToString(kernel.takeError());

  auto second = std::make_unique<SecondContext>(d, 0);
  CUcontext current = nullptr;
  ASSERT_TRUE(cuOk(d, d.cuCtxGetCurrent(&current), "cuCtxGetCurrent"));
  ASSERT_EQ(current, primary) << "after cuCtxCreate and cuCtxPopCurrent the primary context of "
                                 "device 0 should be current again";
  ASSERT_NE(second->context(), primary) << "cuCtxCreate returned the primary context";
  CUcontext streamCtx = nullptr;
  ASSERT_TRUE(cuOk(d, d.cuStreamGetCtx(second->stream(), &streamCtx), "cuStreamGetCtx"));
  ASSERT_EQ(streamCtx, second->context()) << "the stream is not in the second context";

  EXPECT_TRUE(
      refused(launchFour(*kernel, second->stream()), {"'stream'", "device 0", "primary context"}))
      << "a kernel of device 0 on a stream of a second context on device 0";
  EXPECT_TRUE(refused(launchFour(*kernel, nullptr, second->context()),
                      {"'stream'", "default stream", "device 0", "primary context"}))
      << "the legacy default stream with the second context current";
  EXPECT_TRUE(refused(launchFour(*kernel, CU_STREAM_PER_THREAD, second->context()),
                      {"'stream'", "default stream", "device 0", "primary context"}))
      << "the per-thread default stream with the second context current";

  EXPECT_EQ(second->release(), "") << "destroying the second context's stream and the context";
  second.reset();
  ASSERT_TRUE(cuOk(d, d.cuCtxGetCurrent(&current), "cuCtxGetCurrent"));
  EXPECT_EQ(current, primary) << "after the second context went, the primary context of device 0 "
                                 "should be current";

  // The kernel still launches, and right, on streams of the primary context.
  Stream stream(d, primary, "the primary context of device 0");
  GpuCase c;
  c.spec = bf16Spec(2048, 128, env.archOf(0));
  c.tokens = 37;
  ref::CompareReport r = runCase(c, stream.get(), 0);
  EXPECT_TRUE(r.ok()) << c.name() << " on a stream of the primary context: " << r.summary();
  r = runCase(c, nullptr, 0);
  EXPECT_TRUE(r.ok()) << c.name()
                      << " on the default stream of the primary context: " << r.summary();
}

} // namespace
} // namespace bqjit::test
