#include "runtime/autotuner.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "bqjit/error.hpp"
#include "planner/launch_heuristic.hpp"
#include "runtime/device_buffer.hpp"
#include "runtime/event_pairs.hpp"

namespace bqjit {

namespace {

constexpr int kWarmup = 2;
constexpr int kIters = 10; // timed launches a round, median taken
constexpr int kRounds = 3; // rounds over all candidates, best median kept
constexpr size_t kStageBytes = size_t(8) << 20;

/// Input bits that are finite values of magnitude 1/8 to 2, either sign, with
/// random mantissas: y and its groups' scales stay ordinary for every output
/// type, and every shape computes the same bytes from them.
std::vector<uint8_t> inputPattern(InDtype dtype, size_t bytes) {
  std::vector<uint8_t> out(bytes);
  uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 32);
  };
  const int width = dtypeBytes(dtype);
  for (size_t i = 0; i + width <= bytes; i += width) {
    const uint32_t r = next();
    const uint32_t sign = r >> 31;
    const uint32_t exponent = (r >> 28) & 3; // 0..3, -3..0 below
    uint32_t bits = 0;
    switch (dtype) {
    case InDtype::BF16:
      bits = sign << 15 | (124 + exponent) << 7 | (r & 0x7f);
      break;
    case InDtype::FP16:
      bits = sign << 15 | (12 + exponent) << 10 | (r & 0x3ff);
      break;
    case InDtype::FP32:
      bits = sign << 31 | (124 + exponent) << 23 | (r & 0x7fffff);
      break;
    }
    std::memcpy(out.data() + i, &bits, static_cast<size_t>(width));
  }
  return out;
}

/// Makes a context current on the calling thread for a scope.
class ContextScope {
public:
  ContextScope(const CudaDriver& d, CUcontext ctx) : d_(d) {
    pushed_ = d.cuCtxPushCurrent(ctx) == CUDA_SUCCESS;
  }
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;
  ~ContextScope() {
    CUcontext popped = nullptr;
    if (pushed_)
      d_.cuCtxPopCurrent(&popped);
  }
  bool ok() const { return pushed_; }

private:
  const CudaDriver& d_;
  bool pushed_ = false;
};

/// A non-blocking stream of the current context: nothing the tuner enqueues
/// waits for, or makes wait, the legacy default stream, which another
/// thread's capture would forbid.
class OwnStream {
public:
  explicit OwnStream(const CudaDriver& d) : d_(d) {}
  OwnStream(const OwnStream&) = delete;
  OwnStream& operator=(const OwnStream&) = delete;
  ~OwnStream() {
    if (stream_) {
      d_.cuStreamSynchronize(stream_);
      d_.cuStreamDestroy(stream_);
    }
  }
  llvm::Error create() {
    return d_.check(d_.cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  }
  CUstream get() const { return stream_; }

private:
  const CudaDriver& d_;
  CUstream stream_ = nullptr;
};

} // namespace

TuneBuffers tuneBuffers(const KernelSpec& spec, int64_t tokens) {
  TuneBuffers b;
  b.xBytes = tokens * 2 * int64_t(spec.hidden) * dtypeBytes(spec.inDtype);
  b.qBytes = tokens * spec.outputRowBytes();
  b.scaleBytes = (tokens + 127) / 128 * 128 * ((spec.numGroups() + 3) / 4 * 4) * 4;
  return b;
}

std::optional<int64_t> tuneTokens(const KernelSpec& spec, Regime regime, int64_t tokens,
                                  int64_t budgetBytes) {
  const int64_t hidden = spec.hidden;
  const int64_t fewest = regimeFirstTokens(regime, hidden);
  int64_t t = std::max(tokens, fewest);
  const int64_t perToken = std::max<int64_t>(1, tuneBuffers(spec, 128).setBytes() / 128);
  if (tuneBuffers(spec, t).setBytes() > budgetBytes)
    t = std::max(fewest, budgetBytes / perToken);
  while (t > fewest && tuneBuffers(spec, t).setBytes() > budgetBytes)
    --t;
  if (tuneBuffers(spec, t).setBytes() > budgetBytes)
    return std::nullopt;
  return t;
}

int tuneSets(const TuneBuffers& buffers, const DeviceProfile& device, int64_t budgetBytes) {
  const int64_t set = std::max<int64_t>(1, buffers.setBytes());
  const int64_t forL2 = (2 * device.l2Bytes + set - 1) / set;
  const int64_t fit = budgetBytes / set;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({forL2, fit, kTuneMaxSets})));
}

std::vector<LaunchShape> tuneCandidates(const KernelSpec& spec, Regime regime,
                                        const DeviceProfile& device, const LaunchShape& incumbent,
                                        int widestVec) {
  std::vector<LaunchShape> out{incumbent};
  for (const LaunchShape& s : candidateShapes(spec, regime, device))
    if (s.vecWidth <= widestVec && std::find(out.begin(), out.end(), s) == out.end())
      out.push_back(s);
  return out;
}

size_t pickWinner(const std::vector<double>& micros, double margin) {
  size_t best = 0;
  for (size_t i = 1; i < micros.size(); ++i)
    if (micros[i] > 0 && (micros[best] <= 0 || micros[i] < micros[best]))
      best = i;
  if (best != 0 && micros[0] > 0 && micros[0] <= micros[best] * (1.0 + margin))
    return 0;
  return best;
}

Autotuner::Autotuner(const Config& config, TuningStore& tuning, LoadVariant loadVariant)
    : config_(config), tuning_(tuning), loadVariant_(std::move(loadVariant)),
      worker_({}, "bqjit-tune") {}

Autotuner::~Autotuner() {
  stop();
}

void Autotuner::prepare() {
  worker_.start();
}

void Autotuner::drain() {
  worker_.drain();
}

void Autotuner::stop() {
  worker_.stop();
}

void Autotuner::request(const Kernel& kernel, const KernelSpec& spec, Regime regime, int64_t tokens,
                        const DeviceProfile& profile) {
  auto job = std::make_shared<Job>(Job{kernel, spec, regime, tokens, profile});
  worker_.enqueue([this, job] { run(*job); });
}

std::string Autotuner::keyOf(const Job& job) const {
  return job.spec.canonical() + "|" + regimeName(job.regime) + "|" + job.profile.slug() + "|" +
         std::to_string(job.kernel.device());
}

void Autotuner::run(const Job& job) {
  const CudaDriver& d = job.kernel.pick(job.tokens).driver();
  // The calls below (allocations, frees, module loads) are ones another
  // thread's capture in the global mode forbids; in the relaxed mode they
  // neither fail nor invalidate that capture.
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  d.cuThreadExchangeStreamCaptureMode(&mode);
  const std::string what =
      job.spec.label() + " (" + regimeName(job.regime) + " launches on " + job.profile.slug() + ")";
  // A variant still compiling would take the slot after the winner.
  job.kernel.waitForVariants();

  const std::string key = keyOf(job);
  std::optional<LaunchShape> known;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = winners_.find(key); it != winners_.end())
      known = it->second;
  }
  if (known) {
    if (*known == *job.kernel.pick(job.tokens).kernel().spec.shape ||
        known->vecWidth > job.kernel.widestVec())
      return;
    KernelSpec resolved = job.spec;
    resolved.shape = *known;
    auto fn = loadVariant_(resolved, job.kernel.device());
    if (!fn) {
      config_.log(LogLevel::Warn, "autotune: loading the winner " + known->label() + " of " + what +
                                      " failed (" + consumeToString(fn.takeError()) + ")");
      return;
    }
    job.kernel.replace(job.regime, *fn);
    return;
  }

  auto winner = tune(job);
  if (!winner && worker_.stopRequested()) {
    llvm::consumeError(winner.takeError()); // the service goes: nothing to say
    return;
  }
  if (!winner) {
    config_.log(LogLevel::Warn, "autotune of " + what +
                                    " stopped: " + consumeToString(winner.takeError()) +
                                    "; the heuristic's shape stays");
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  winners_[key] = *winner;
}

llvm::Expected<LaunchShape> Autotuner::tune(const Job& job) {
  const Kernel& kernel = job.kernel;
  // The function the asking launch took: where the planner splits a regime
  // by waves (its full-SM slot), the shape of the launch's own side.
  const LoadedFunction& incumbent = kernel.pick(job.tokens);
  const KernelSpec& spec = job.spec;
  const CudaDriver& d = incumbent.driver();
  std::shared_ptr<const CudaDriver> driver = incumbent.library->driver;
  const std::string what =
      spec.label() + " (" + regimeName(job.regime) + " launches on " + job.profile.slug() + ")";
  ContextScope scope(d, incumbent.context);
  if (!scope.ok())
    return makeError(ErrorCode::DriverError, "cannot make device " +
                                                 std::to_string(incumbent.device) +
                                                 "'s primary context current");

  size_t freeBytes = 0, totalBytes = 0;
  if (auto err = d.check(d.cuMemGetInfo(&freeBytes, &totalBytes), "cuMemGetInfo"))
    return err;
  const int64_t budget = std::min<int64_t>(kTuneBudgetBytes, static_cast<int64_t>(freeBytes / 4));
  const std::optional<int64_t> tokens = tuneTokens(spec, job.regime, job.tokens, budget);
  if (!tokens)
    return makeError(ErrorCode::InvalidArgument,
                     "its smallest tuning problem does not fit in " + std::to_string(budget) +
                         " bytes (a quarter of the device's free memory, at most " +
                         std::to_string(kTuneBudgetBytes) + ")");
  const TuneBuffers sizes = tuneBuffers(spec, *tokens);
  const int sets = tuneSets(sizes, job.profile, budget);
  const size_t xStride = DeviceBuffer::aligned(sizes.xBytes),
               qStride = DeviceBuffer::aligned(sizes.qBytes),
               sStride = DeviceBuffer::aligned(sizes.scaleBytes);

  auto x = DeviceBuffer::allocate(driver, sets * xStride, "the autotuner's input");
  if (!x)
    return x.takeError();
  auto q = DeviceBuffer::allocate(driver, sets * qStride, "the autotuner's q");
  if (!q)
    return q.takeError();
  auto scales = DeviceBuffer::allocate(driver, sets * sStride, "the autotuner's scales");
  if (!scales)
    return scales.takeError();
  auto scalars = DeviceBuffer::allocate(driver, 16, "the autotuner's scalars");
  if (!scalars)
    return scalars.takeError();
  // After the buffers: it is synchronized and destroyed before they are
  // freed, whichever way this returns.
  OwnStream stream(d);
  if (auto err = stream.create())
    return err;

  // Scalars: scale_ub too large to bind, NVFP4's global scale 1 (block
  // scales of a few units), every row of the one expert live.
  const std::vector<uint8_t> pattern =
      inputPattern(spec.inDtype, std::min<size_t>(kStageBytes, static_cast<size_t>(sizes.xBytes)));
  struct {
    float scaleUb = 1e30f;
    float globalScale = 1.0f;
    int32_t maskedM = 0;
  } hostScalars;
  hostScalars.maskedM = static_cast<int32_t>(*tokens);
  if (auto err = d.check(
          d.cuMemcpyHtoDAsync(scalars->get(), &hostScalars, sizeof hostScalars, stream.get()),
          "cuMemcpyHtoDAsync", "the autotuner's scalars"))
    return err;
  for (int set = 0; set < sets; ++set)
    for (size_t done = 0; done < static_cast<size_t>(sizes.xBytes); done += pattern.size()) {
      const size_t n = std::min(pattern.size(), static_cast<size_t>(sizes.xBytes) - done);
      if (auto err = d.check(
              d.cuMemcpyHtoDAsync(x->get() + set * xStride + done, pattern.data(), n, stream.get()),
              "cuMemcpyHtoDAsync", "the autotuner's input"))
        return err;
    }

  auto args = [&](int set) {
    LaunchArgs a;
    a.x = x->at(set * xStride);
    a.ldx = 2 * int64_t(spec.hidden);
    a.tokens = *tokens;
    a.q = q->at(set * qStride);
    a.scales = scales->at(set * sStride);
    a.scaleUb = spec.hasScaleUb ? static_cast<const float*>(scalars->at(0)) : nullptr;
    a.globalScale = spec.needsGlobalScale() ? static_cast<const float*>(scalars->at(4)) : nullptr;
    a.maskedM = spec.masked ? static_cast<const int32_t*>(scalars->at(8)) : nullptr;
    a.numExperts = 1;
    a.programmaticDependentLaunch = false;
    return a;
  };
  // Set 0's outputs after one launch, zeroed before it (the bytes a layout
  // leaves unwritten stay zero for every shape).
  auto result = [&](const Kernel& k) -> llvm::Expected<std::vector<uint8_t>> {
    std::vector<uint8_t> out(static_cast<size_t>(sizes.qBytes + sizes.scaleBytes));
    if (auto err = d.check(d.cuMemsetD8Async(q->get(), 0, sizes.qBytes, stream.get()),
                           "cuMemsetD8Async", "q"))
      return err;
    if (auto err = d.check(d.cuMemsetD8Async(scales->get(), 0, sizes.scaleBytes, stream.get()),
                           "cuMemsetD8Async", "scales"))
      return err;
    if (auto err = k.launch(args(0), stream.get()))
      return err;
    if (auto err = d.check(d.cuMemcpyDtoHAsync(out.data(), q->get(), sizes.qBytes, stream.get()),
                           "cuMemcpyDtoHAsync", "q"))
      return err;
    if (auto err = d.check(d.cuMemcpyDtoHAsync(out.data() + sizes.qBytes, scales->get(),
                                               sizes.scaleBytes, stream.get()),
                           "cuMemcpyDtoHAsync", "scales"))
      return err;
    if (auto err = d.check(d.cuStreamSynchronize(stream.get()), "cuStreamSynchronize"))
      return err;
    return out;
  };

  const LaunchShape incumbentShape = *incumbent.kernel().spec.shape;
  const std::vector<LaunchShape> shapes =
      tuneCandidates(spec, job.regime, job.profile, incumbentShape, kernel.widestVec());
  config_.log(LogLevel::Info, "autotune: " + what + " at T = " + std::to_string(*tokens) + ", " +
                                  std::to_string(shapes.size()) + " shapes, " +
                                  std::to_string(sets) + " buffer set(s)");
  // One handle per candidate, every regime on its one function.
  std::vector<std::optional<Kernel>> kernels(shapes.size());
  std::vector<std::shared_ptr<const LoadedFunction>> functions(shapes.size());
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (worker_.stopRequested())
      return makeError(ErrorCode::Internal, "the service is stopping");
    std::shared_ptr<const LoadedFunction> fn;
    if (i == 0) {
      fn = std::shared_ptr<const LoadedFunction>(std::shared_ptr<const void>(), &incumbent);
    } else {
      KernelSpec resolved = spec;
      resolved.shape = shapes[i];
      auto loaded = loadVariant_(resolved, kernel.device());
      CompileWorker::compiled();
      if (!loaded) {
        config_.log(LogLevel::Debug, "autotune: " + shapes[i].label() + " of " + what +
                                         " left out: " + consumeToString(loaded.takeError()));
        continue;
      }
      fn = *loaded;
    }
    functions[i] = fn;
    kernels[i] = Kernel(Kernel::Functions{fn, fn, fn, fn, fn}, shapes[i].vecWidth);
  }

  auto expected = result(*kernels[0]);
  if (!expected)
    return expected.takeError();
  for (size_t i = 1; i < shapes.size(); ++i) {
    if (!kernels[i])
      continue;
    auto got = result(*kernels[i]);
    if (!got)
      return got.takeError();
    if (*got != *expected) {
      config_.log(LogLevel::Warn, "autotune: " + shapes[i].label() + " of " + what +
                                      " gives other bytes than " + shapes[0].label() +
                                      " (a kernel bug); left out");
      kernels[i].reset();
    }
  }

  EventPairs events(d);
  if (auto err = events.create(kIters))
    return err;
  std::vector<double> micros(shapes.size(), 0.0);
  int cursor = 0;
  for (int round = 0; round < kRounds; ++round)
    for (size_t i = 0; i < shapes.size(); ++i) {
      if (!kernels[i])
        continue;
      if (worker_.stopRequested())
        return makeError(ErrorCode::Internal, "the service is stopping");
      auto us = events.medianMicros(stream.get(), kWarmup, [&] {
        return kernels[i]->launch(args(cursor++ % sets), stream.get());
      });
      if (!us)
        return us.takeError();
      micros[i] = micros[i] > 0 ? std::min(micros[i], *us) : *us;
    }

  const size_t best = pickWinner(micros);
  if (micros[best] <= 0)
    return makeError(ErrorCode::Internal, "no shape could be timed");
  const LaunchShape& shape = shapes[best];
  if (!tuning_.directory().empty())
    if (auto err = tuning_.store(spec, shape, job.regime, job.profile))
      config_.log(LogLevel::Warn, "autotune: storing the record of " + what + " failed (" +
                                      consumeToString(std::move(err)) + ")");
  if (best != 0)
    kernel.replace(job.regime, functions[best]);
  // The fastest other shape and how many were timed: what a kept heuristic
  // was measured against.
  size_t other = 0, timed = 0;
  for (size_t i = 1; i < micros.size(); ++i)
    if (micros[i] > 0) {
      ++timed;
      if (other == 0 || micros[i] < micros[other])
        other = i;
    }
  char line[384];
  std::snprintf(line, sizeof line,
                "%s at %.2f us against the heuristic's %s at %.2f us (%zu of %zu other shapes "
                "timed, the fastest %s at %.2f us)",
                shape.label().c_str(), micros[best], shapes[0].label().c_str(), micros[0], timed,
                shapes.size() - 1, other ? shapes[other].label().c_str() : "none",
                other ? micros[other] : 0.0);
  config_.log(LogLevel::Info, "autotune: " + what + ": " + line +
                                  (best != 0 ? "; swapped in" : "; the heuristic's stays"));
  return shape;
}

} // namespace bqjit
