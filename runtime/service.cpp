#include "bqjit/service.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>

#include "bqjit/arch.hpp"
#include "bqjit/error.hpp"
#include "cache/kernel_cache.hpp"
#include "planner/planner.hpp"
#include "runtime/autotuner.hpp"
#include "runtime/compile_worker.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/loaded_function.hpp"
#include "runtime/warm_table.hpp"

namespace bqjit {

namespace {

/// Distinguishes services for the per-thread answers below (never reused,
/// unlike addresses).
std::atomic<uint64_t> nextServiceId{1};

/// Each thread's most recent answers, by (service, spec, device): a hit
/// reads and writes only this thread's memory. The handle kept here is the
/// thread's own copy (its own reference count), so that threads asking for
/// the same kernels never write to a shared cache line. An answer of an older
/// generation or of another service is replaced when its slot is next used.
struct ThreadAnswers {
  struct Slot {
    uint64_t service = 0;
    uint64_t generation = 0;
    int device = -1;
    KernelSpec spec;
    std::optional<Kernel> kernel;
  };
  // Two ways of 256 sets: the kernels a thread asks for (64 specs, say)
  // rarely evict each other. About 64 KiB per thread that asks.
  static constexpr size_t kSets = 256;
  std::array<std::array<Slot, 2>, kSets> sets;
  std::array<uint8_t, kSets> lastUsed{}; ///< the way a set used last

  /// The slot holding (service, spec, device) if any, else the one to replace.
  Slot& slotFor(uint64_t service, const KernelSpec& spec, size_t hash, int device, bool* found) {
    const size_t set = (hash + static_cast<size_t>(device) * 0x9e3779b9u) % kSets;
    for (uint8_t way = 0; way < 2; ++way) {
      Slot& s = sets[set][way];
      if (s.service == service && s.device == device && s.kernel && s.spec == spec) {
        lastUsed[set] = way;
        *found = true;
        return s;
      }
    }
    *found = false;
    lastUsed[set] ^= 1;
    return sets[set][lastUsed[set]];
  }
};

/// The ordinal `device` names: itself, or for -1 the device of the current
/// context (0 without one).
llvm::Expected<int> resolveDevice(const CudaDriver& d, int device) {
  if (device >= 0)
    return device;
  CUcontext ctx = nullptr;
  if (d.cuCtxGetCurrent(&ctx) == CUDA_SUCCESS && ctx) {
    CUdevice dev = 0;
    if (auto err = d.check(d.cuCtxGetDevice(&dev), "cuCtxGetDevice"))
      return std::move(err);
    return static_cast<int>(dev);
  }
  return 0;
}

ThreadAnswers& threadAnswers() {
  thread_local std::unique_ptr<ThreadAnswers> answers = std::make_unique<ThreadAnswers>();
  return *answers;
}

} // namespace

struct Service::Impl {
  const uint64_t id = nextServiceId.fetch_add(1);
  Config config;
  Planner planner;
  KernelCache cache;

  // The warm path: answers already given, valid while `generation()` holds.
  WarmTable<Kernel> warm;
  std::atomic<uint64_t> invalidations{0};
  /// The driver once loaded (never unloaded before the service goes), for
  /// the warm path, which takes no lock a compile or a load holds.
  std::atomic<const CudaDriver*> loadedDriver{nullptr};

  // Variants compiled in the background (Service::loadKernel). Its thread
  // sets the relaxed capture mode first: it makes driver calls (module
  // loads) that another thread's stream capture in the global mode would
  // forbid; in the relaxed mode they neither fail nor invalidate that
  // capture, and none of them enqueues work on a stream.
  CompileWorker worker{[this] {
                         if (const CudaDriver* d = loadedDriver.load(std::memory_order_acquire)) {
                           CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
                           d->cuThreadExchangeStreamCaptureMode(&mode);
                         }
                       },
                       "bqjit-compile"};

  std::mutex mutex; // guards everything below
  std::shared_ptr<const CudaDriver> driver;
  std::map<int, CUcontext> primaryContexts;                            // retained, by device
  std::map<int, DeviceProfile> profiles;                               // by device
  std::map<std::string, std::weak_ptr<const LoadedLibrary>> libraries; // by cache key
  std::map<std::pair<std::string, int>, std::shared_ptr<const LoadedFunction>> functions;

  /// Config::autotune: tunes regimes on their first launch; the kernels it
  /// hands out hold it weakly, so that it goes with the service.
  std::shared_ptr<Autotuner> tuner;

  Impl(Config c, Compiler compiler)
      : config(c), planner(config, compiler.codeIdentity()),
        cache(std::move(c), std::move(compiler)) {
    if (config.autotune)
      tuner = std::make_shared<Autotuner>(
          config, planner.tuning(),
          [this](const KernelSpec& resolved, int device) { return loadVariant(resolved, device); });
  }

  ~Impl() {
    if (tuner)
      tuner->stop();   // before anything its job uses goes
    worker.stop();     // before anything its job uses goes
    functions.clear(); // unloads the libraries before the contexts go
    if (driver)
      for (auto& [device, ctx] : primaryContexts)
        driver->cuDevicePrimaryCtxRelease(device);
  }

  llvm::Expected<std::shared_ptr<const CudaDriver>> loadDriverLocked() {
    if (driver)
      return driver;
    auto loaded =
        config.cudaDriver.empty() ? CudaDriver::load() : CudaDriver::load(config.cudaDriver);
    if (!loaded)
      return loaded.takeError();
    driver = *loaded;
    loadedDriver.store(driver.get(), std::memory_order_release);
    return driver;
  }

  /// What can change an answer: tuning records stored or reloaded, and
  /// explicit invalidations.
  uint64_t generation() const {
    return planner.tuning().generation() + invalidations.load(std::memory_order_acquire);
  }

  /// The ordinal `device` names, without a lock; none before the driver is
  /// loaded or when it can't tell (then the locked path decides).
  std::optional<int> deviceWithoutLock(int device) const {
    const CudaDriver* d = loadedDriver.load(std::memory_order_acquire);
    if (device >= 0 || !d)
      return device >= 0 ? std::optional<int>(device) : std::nullopt;
    auto dev = resolveDevice(*d, device);
    if (!dev) {
      llvm::consumeError(dev.takeError());
      return std::nullopt;
    }
    return *dev;
  }

  /// Loads the driver if needed and resolves `device` (-1: the current context's).
  llvm::Expected<int> deviceLocked(int device) {
    auto d = loadDriverLocked();
    if (!d)
      return d.takeError();
    return resolveDevice(*driver, device);
  }

  /// The properties of a device (read from the driver once).
  llvm::Expected<DeviceProfile> profileLocked(int device) {
    if (auto it = profiles.find(device); it != profiles.end())
      return it->second;
    auto info = driver->deviceInfo(device);
    if (!info)
      return info.takeError();
    return profiles[device] = info->profile();
  }

  /// Loads (once) the function of a compiled kernel on a device. `keep`
  /// false: a function not loaded yet is not kept by the service either, so
  /// it unloads when its last holder lets go (the autotuner's losers).
  llvm::Expected<std::shared_ptr<const LoadedFunction>>
  loadFunctionLocked(const std::shared_ptr<const CompiledKernel>& kernel, int device,
                     bool keep = true);

  /// The function of a resolved spec on a device: from the caches, else
  /// compiled (unless noCompile), then loaded; not kept by the service
  /// (a tuning's candidate, kept only if it wins a kernel's slot).
  llvm::Expected<std::shared_ptr<const LoadedFunction>> loadVariant(const KernelSpec& resolved,
                                                                    int device) {
    auto id = cache.compiler().identify(resolved);
    if (!id)
      return id.takeError();
    auto got = cache.get(*id);
    if (!got)
      return got.takeError();
    std::lock_guard<std::mutex> lock(mutex);
    return loadFunctionLocked(got->kernel, device, /*keep=*/false);
  }

  llvm::Expected<CUcontext> primaryContextLocked(int device) {
    auto it = primaryContexts.find(device);
    if (it != primaryContexts.end())
      return it->second;
    int count = 0;
    if (auto err = driver->check(driver->cuDeviceGetCount(&count), "cuDeviceGetCount"))
      return std::move(err);
    if (device >= count)
      return makeError(ErrorCode::InvalidArgument, "device " + std::to_string(device) +
                                                       " does not exist (" + std::to_string(count) +
                                                       " device(s))");
    CUcontext ctx = nullptr;
    if (auto err = driver->check(driver->cuDevicePrimaryCtxRetain(&ctx, device),
                                 "cuDevicePrimaryCtxRetain", "device " + std::to_string(device)))
      return std::move(err);
    primaryContexts[device] = ctx;
    return ctx;
  }
};

Service::Service(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Service::~Service() = default;

llvm::Expected<std::unique_ptr<Service>> Service::create(Config config) {
  auto compiler = Compiler::create();
  if (!compiler)
    return compiler.takeError();
  return std::unique_ptr<Service>(
      new Service(std::make_unique<Impl>(std::move(config), std::move(*compiler))));
}

KernelCache& Service::cache() {
  return impl_->cache;
}
Planner& Service::planner() {
  return impl_->planner;
}
const Config& Service::config() const {
  return impl_->config;
}

llvm::Expected<std::shared_ptr<const CompiledKernel>> Service::compile(const KernelSpec& spec) {
  auto resolved = impl_->planner.resolve(spec);
  if (!resolved)
    return resolved.takeError();
  auto result = impl_->cache.getResolved(*resolved);
  if (!result)
    return result.takeError();
  return result->kernel;
}

llvm::Expected<std::shared_ptr<const CudaDriver>> Service::driver() {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->loadDriverLocked();
}

llvm::Expected<KernelSpec> Service::forDevice(KernelSpec spec, int device) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto dev = impl_->deviceLocked(device);
  if (!dev)
    return dev.takeError();
  auto info = impl_->driver->deviceInfo(*dev);
  if (!info)
    return info.takeError();
  spec.arch = info->arch();
  return spec;
}

llvm::Expected<Kernel> Service::getKernel(const KernelSpec& spec, int device) {
  // The warm path: this thread's answer, else the service's (a hash-map
  // lookup), with no planning, key, string or file.
  const uint64_t generation = impl_->generation();
  const std::optional<int> dev = impl_->deviceWithoutLock(device);
  ThreadAnswers::Slot* slot = nullptr;
  if (dev) {
    bool found = false;
    slot = &threadAnswers().slotFor(impl_->id, spec, spec.hash(), *dev, &found);
    if (found && slot->generation == generation)
      return *slot->kernel;
  }
  std::optional<Kernel> kernel;
  if (dev)
    kernel = impl_->warm.find(spec, *dev, generation);
  if (!kernel) {
    auto loaded = loadKernel(spec, device);
    if (!loaded)
      return loaded.takeError();
    impl_->warm.insert(spec, loaded->device(), generation, *loaded);
    kernel = std::move(*loaded);
  }
  if (slot && kernel->device() == *dev) {
    slot->service = impl_->id;
    slot->generation = generation;
    slot->device = *dev;
    slot->spec = spec;
    slot->kernel = kernel->ownCopy();
  }
  return std::move(*kernel);
}

void Service::reloadTuning() {
  impl_->planner.tuning().reload();
}

void Service::invalidate() {
  impl_->invalidations.fetch_add(1, std::memory_order_acq_rel);
  impl_->warm.clear();
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->functions.clear();
}

llvm::Expected<DeviceProfile> Service::deviceProfile(int device) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto dev = impl_->deviceLocked(device);
  if (!dev)
    return dev.takeError();
  return impl_->profileLocked(*dev);
}

void Service::finishVariants() {
  impl_->worker.drain();
}

void Service::finishTuning() {
  if (impl_->tuner)
    impl_->tuner->drain();
}

llvm::Expected<Kernel> Service::loadKernel(const KernelSpec& spec, int device) {
  // The device's own properties choose the launch shapes, and its model
  // names the tuning records.
  auto profile = deviceProfile(device);
  if (!profile)
    return profile.takeError();
  auto plan = impl_->planner.plan(spec, *profile);
  if (!plan)
    return plan.takeError();
  const int n = static_cast<int>(plan->variants.size());
  const int primary = plan->variantOf[index(kDefaultRegime)];
  int widestVec = 1;
  for (const KernelSpec& v : plan->variants)
    widestVec = std::max(widestVec, v.shape->vecWidth);

  // What the caches hold is used at once. Of the rest, only the many-token
  // variant is compiled now (outside the service lock: the cache has its own
  // single flight per key); it stands in for the others, which compile in
  // the background, since NVRTC compiles one program at a time. Without
  // compiling (BQJIT_NO_COMPILE), every variant must be at hand.
  std::vector<std::shared_ptr<const CompiledKernel>> compiled(n);
  std::vector<KernelIdentity> ids;
  for (const KernelSpec& v : plan->variants) {
    auto id = impl_->cache.compiler().identify(v);
    if (!id)
      return id.takeError();
    ids.push_back(std::move(*id));
  }
  for (int i = 0; i < n; ++i)
    compiled[i] = impl_->cache.find(ids[i]);
  std::vector<int> later;
  bool fullSmMissing = false;
  for (int i = 0; i < n; ++i) {
    if (compiled[i])
      continue;
    if (i != primary && !impl_->config.noCompile) {
      later.push_back(i);
      continue;
    }
    // The full-SM variant only speeds up part of a regime that another
    // variant serves: a cache prewarmed before it existed still serves.
    if (i == plan->fullSmVariant) {
      fullSmMissing = true;
      impl_->config.log(LogLevel::Info, plan->variants[i].label() +
                                            " is not in the cache (BQJIT_NO_COMPILE); few-token "
                                            "launches keep the few-token shape");
      continue;
    }
    auto got = impl_->cache.get(ids[i]);
    if (!got)
      return got.takeError();
    compiled[i] = got->kernel;
  }

  // The variant each slot launches. The full-SM variant's promise of 32
  // registers holds without spills for most H but not all (G = 128 spills 4
  // bytes where H / G is a power of two, tests/test_compiler): where its
  // compiled kernel spills, its slot takes the few-token variant instead.
  std::array<int, kSlotCount> slotVariant;
  for (int slot = 0; slot < kSlotCount; ++slot)
    slotVariant[slot] = plan->variantOfSlot(slot);
  const int fewVariant = plan->variantOf[index(Regime::FewTokens)];
  if (fullSmMissing || (plan->fullSmVariant >= 0 && compiled[plan->fullSmVariant] &&
                        compiled[plan->fullSmVariant]->resources.spills()))
    slotVariant[kFullSmSlot] = fewVariant;

  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto dev = impl_->deviceLocked(device);
  if (!dev)
    return dev.takeError();
  std::vector<std::shared_ptr<const LoadedFunction>> loaded(n);
  for (int i = 0; i < n; ++i) {
    const bool used = std::find(slotVariant.begin(), slotVariant.end(), i) != slotVariant.end();
    if (!compiled[i] || !used)
      continue;
    auto fn = impl_->loadFunctionLocked(compiled[i], *dev);
    if (!fn)
      return fn.takeError();
    loaded[i] = *fn;
  }
  Kernel::Functions fns;
  Kernel::StandIns standIns{};
  for (int slot = 0; slot < kSlotCount; ++slot) {
    const int v = slotVariant[slot];
    standIns[slot] = !loaded[v];
    fns[slot] = loaded[v] ? loaded[v] : loaded[primary];
  }
  Kernel kernel(fns, widestVec, standIns, plan->slotChoice());
  if (impl_->tuner && std::find(plan->fromHeuristic.begin(), plan->fromHeuristic.end(), true) !=
                          plan->fromHeuristic.end()) {
    impl_->tuner->prepare();
    kernel.enableTuning(impl_->tuner, *profile, plan->fromHeuristic);
  }
  if (!later.empty()) {
    // Whether the job runs, fails or is dropped (a stopped worker), its end
    // settles the stand-ins it leaves: a captured launch waiting for one
    // (Kernel::launch) then takes it.
    struct Settle {
      explicit Settle(Kernel k) : kernel(std::move(k)) {}
      Settle(const Settle&) = delete;
      Settle& operator=(const Settle&) = delete;
      ~Settle() { kernel.settleStandIns(); }
      Kernel kernel;
    };
    auto settle = std::make_shared<Settle>(kernel);
    Impl* impl = impl_.get(); // outlives the jobs: ~Impl joins the worker first
    const std::string fullSmFrom = std::to_string(plan->fullSmFrom);
    // One job a variant: the worker keeps its exit handler ahead of NVRTC's
    // teardown at each job's end (CompileWorker), so a job holds one compile.
    for (int i : later)
      impl->worker.enqueue(
          [impl, kernel, id = ids[i], i, slotVariant, fullSmFrom, d = *dev, settle] {
            auto got = impl->cache.get(id);
            if (!got) {
              impl->config.log(LogLevel::Warn, "background compile of " + id.spec.label() +
                                                   " failed (" + consumeToString(got.takeError()) +
                                                   "); its regimes keep the many-token variant");
              return;
            }
            // A spilling full-SM variant leaves its slot to the few-token
            // variant's function, in its slot by now: jobs run in variant order,
            // the few-token variant's before.
            if (slotVariant[kFullSmSlot] == i && got->kernel->resources.spills()) {
              impl->config.log(LogLevel::Info,
                               id.spec.label() + " spills under its full-SM promise (" +
                                   std::to_string(got->kernel->resources.spillStoreBytes) +
                                   " bytes); few-token launches of T >= " + fullSmFrom +
                                   " keep the few-token shape");
              kernel.shareSlot(index(Regime::FewTokens), kFullSmSlot);
              return;
            }
            std::lock_guard<std::mutex> lock(impl->mutex);
            auto fn = impl->loadFunctionLocked(got->kernel, d);
            if (!fn) {
              impl->config.log(LogLevel::Warn, "loading " + id.spec.label() + " failed (" +
                                                   consumeToString(fn.takeError()) +
                                                   "); its regimes keep the many-token variant");
              return;
            }
            for (int slot = 0; slot < kSlotCount; ++slot)
              if (slotVariant[slot] == i)
                kernel.replaceSlot(slot, *fn);
          });
  }
  return kernel;
}

llvm::Expected<std::shared_ptr<const LoadedFunction>>
Service::Impl::loadFunctionLocked(const std::shared_ptr<const CompiledKernel>& kernel, int dev,
                                  bool keep) {
  const CudaDriver& d = *driver;
  auto fnKey = std::make_pair(kernel->key, dev);
  if (auto it = functions.find(fnKey); it != functions.end())
    return it->second;

  auto info = d.deviceInfo(dev);
  if (!info)
    return info.takeError();
  const std::string& arch = kernel->spec.arch;
  auto target = Arch::parse(arch);
  if (!target)
    return target.takeError();
  if (!target->runsOn(Arch::fromComputeCapability(info->ccMajor, info->ccMinor)))
    return makeError(ErrorCode::ArchMismatch, "kernel compiled for " + arch +
                                                  " cannot run on device " + std::to_string(dev) +
                                                  " (" + info->name + ", " + info->arch() +
                                                  "); ask for the spec with arch=" + info->arch());
  auto ctx = primaryContextLocked(dev);
  if (!ctx)
    return ctx.takeError();

  std::shared_ptr<const LoadedLibrary> library = libraries[kernel->key].lock();
  if (!library) {
    auto lib = std::make_shared<LoadedLibrary>();
    lib->driver = driver;
    lib->kernel = kernel;
    const std::string context = "kernel " + kernel->spec.label() + " (key " + kernel->key + ")";
    if (auto err = d.check(d.cuLibraryLoadData(&lib->library, kernel->cubin.data(), nullptr,
                                               nullptr, 0, nullptr, nullptr, 0),
                           "cuLibraryLoadData", context))
      return std::move(err);
    if (auto err =
            d.check(d.cuLibraryGetKernel(&lib->handle, lib->library, kernel->loweredName.c_str()),
                    "cuLibraryGetKernel", context + ", lowered name " + kernel->loweredName))
      return std::move(err);
    library = lib;
    libraries[kernel->key] = library;
  }

  auto fn = std::make_shared<LoadedFunction>();
  fn->library = library;
  fn->context = *ctx;
  fn->device = dev;
  // The template waits for a programmatic predecessor from sm_90 on.
  fn->programmaticLaunch = target->number >= 90;
  fn->programmaticByDefault = config.programmaticLaunch;
  const std::string context =
      "kernel " + kernel->spec.label() + " on device " + std::to_string(dev);
  if (auto err = d.check(d.cuCtxPushCurrent(*ctx), "cuCtxPushCurrent", context))
    return std::move(err);
  CUresult r = d.cuKernelGetFunction(&fn->function, library->handle);
  // Lazy loading would defer the module load to the first launch, which may
  // be inside a graph capture; load it now.
  if (r == CUDA_SUCCESS)
    r = d.cuFuncLoad(fn->function);
  CUcontext popped = nullptr;
  d.cuCtxPopCurrent(&popped);
  if (auto err = d.check(r, "cuKernelGetFunction/cuFuncLoad", context))
    return std::move(err);
  if (keep)
    functions[fnKey] = fn;
  return fn;
}

} // namespace bqjit
