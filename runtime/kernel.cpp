// Kernel::launch: argument checks and cuLaunchKernel. Nothing here
// synchronizes or touches the disk, and nothing allocates but, with
// BQJIT_AUTOTUNE=1, the first uncaptured launch of a regime (its request).
#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "bqjit/error.hpp"
#include "bqjit/service.hpp"
#include "planner/device_profile.hpp"
#include "planner/launch_grid.hpp"
#include "planner/launch_slots.hpp"
#include "planner/regime.hpp"
#include "runtime/autotuner.hpp"
#include "runtime/loaded_function.hpp"

namespace bqjit {

namespace {
// A caller's garbage count or pitch is an error (launch) or a clamped count
// (the queries) rather than an overflow (launch_grid.hpp).
constexpr int64_t kMaxLaunchPitch = kMaxLaunchRows;

int64_t clampRows(int64_t tokens) {
  return tokens < 0 ? 0 : (tokens > kMaxLaunchRows ? kMaxLaunchRows : tokens);
}
} // namespace

/// The functions of a kernel's launch slots (planner/launch_slots.hpp),
/// shared by every copy of the handle: a variant compiled in the background
/// takes its slots (from a stand-in that computes the same values with
/// another shape), and every copy launches it from then on.
struct Kernel::Slots {
  std::array<std::atomic<const LoadedFunction*>, kSlotCount> fn{};
  int widestVec = 1; ///< the widest vector of all the shapes the slots will hold
  SlotChoice choice;
  int device = 0;
  std::mutex mutex;
  /// Every function a slot ever held: a graph may have captured a launch of
  /// any of them, so they stay loaded while the handle lives.
  std::vector<std::shared_ptr<const LoadedFunction>> owned;
  /// Slots that hold a stand-in while their own variant compiles (guarded by
  /// mutex), their count (read without it on every launch) and the signal
  /// that one of them settled.
  std::array<bool, kSlotCount> standIn{};
  std::atomic<int> standIns{0};
  std::condition_variable settled;
  /// Autotuning: per regime whether its first launch has asked (true from
  /// the start where nothing is to be tuned); the device's profile and the
  /// tuner, which goes with its service. Written before the handle is shared.
  std::array<std::atomic<bool>, kRegimeCount> tuneAsked{};
  std::optional<DeviceProfile> tuneProfile;
  std::weak_ptr<Autotuner> tuner;

  void put(int slot, std::shared_ptr<const LoadedFunction> f) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      fn[slot].store(f.get(), std::memory_order_release);
      owned.push_back(std::move(f));
      settleLocked(slot);
    }
    settled.notify_all();
  }
  /// The slot a launch of `tokens` rows takes.
  int slotOf(int64_t tokens) const { return choice.slotOf(clampRows(tokens)); }
  void settleLocked(int slot) {
    if (standIn[slot]) {
      standIn[slot] = false;
      standIns.fetch_sub(1, std::memory_order_release);
    }
  }
};

struct Kernel::State {
  std::shared_ptr<Slots> slots;
};

Kernel::Kernel(const Functions& fns, int widestVec)
    : Kernel(fns, widestVec, StandIns{}, SlotChoice{}) {}

Kernel::Kernel(const Functions& fns, int widestVec, const StandIns& standIns,
               const SlotChoice& choice) {
  static_assert(std::tuple_size<Functions>::value == kSlotCount, "one function per slot");
  static_assert(std::tuple_size<StandIns>::value == kSlotCount, "one flag per slot");
  auto slots = std::make_shared<Slots>();
  slots->widestVec = widestVec;
  slots->choice = choice;
  slots->choice.hidden = fns[0]->kernel().spec.hidden;
  slots->device = fns[0]->device;
  for (int i = 0; i < kSlotCount; ++i) {
    slots->put(i, fns[i]);
    slots->standIn[i] = standIns[i];
    slots->standIns += standIns[i] ? 1 : 0;
  }
  for (int r = 0; r < kRegimeCount; ++r)
    slots->tuneAsked[r].store(true, std::memory_order_relaxed);
  state_ = std::make_shared<State>(State{std::move(slots)});
}

Kernel Kernel::ownCopy() const {
  Kernel copy = *this;
  copy.state_ = std::make_shared<State>(*state_);
  return copy;
}

void Kernel::replace(Regime regime, std::shared_ptr<const LoadedFunction> fn) const {
  for (int slot = 0; slot < kSlotCount; ++slot)
    if (slotRegime(slot) == regime)
      state_->slots->put(slot, fn);
}

void Kernel::replaceSlot(int slot, std::shared_ptr<const LoadedFunction> fn) const {
  state_->slots->put(slot, std::move(fn));
}

void Kernel::shareSlot(int from, int to) const {
  Slots& slots = *state_->slots;
  {
    std::lock_guard<std::mutex> lock(slots.mutex);
    slots.fn[to].store(slots.fn[from].load(std::memory_order_relaxed), std::memory_order_release);
    slots.settleLocked(to);
  }
  slots.settled.notify_all();
}

void Kernel::settleStandIns() const {
  Slots& slots = *state_->slots;
  {
    std::lock_guard<std::mutex> lock(slots.mutex);
    for (int i = 0; i < kSlotCount; ++i)
      slots.settleLocked(i);
  }
  slots.settled.notify_all();
}

void Kernel::waitForVariants() const {
  Slots& slots = *state_->slots;
  std::unique_lock<std::mutex> lock(slots.mutex);
  slots.settled.wait(lock, [&] { return slots.standIns.load(std::memory_order_acquire) == 0; });
}

int Kernel::widestVec() const {
  return state_->slots->widestVec;
}

void Kernel::enableTuning(std::weak_ptr<Autotuner> tuner, const DeviceProfile& profile,
                          const std::array<bool, 4>& tunable) {
  Slots& slots = *state_->slots;
  slots.tuner = std::move(tuner);
  slots.tuneProfile = profile;
  for (int r = 0; r < kRegimeCount; ++r)
    slots.tuneAsked[r].store(!tunable[r], std::memory_order_release);
}

void Kernel::askTuning(int regime, int64_t tokens, CUstream stream) const {
  Slots& slots = *state_->slots;
  // A launch being captured does not ask: the graph keeps the function it
  // captured whatever the tuner finds, and the host's next uncaptured launch
  // of the regime asks instead.
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  const LoadedFunction& fn = *slots.fn[regime].load(std::memory_order_acquire);
  if (fn.driver().cuStreamIsCapturing(stream, &status) != CUDA_SUCCESS ||
      status != CU_STREAM_CAPTURE_STATUS_NONE)
    return;
  if (slots.tuneAsked[regime].exchange(true, std::memory_order_acq_rel))
    return;
  std::shared_ptr<Autotuner> tuner = slots.tuner.lock();
  if (!tuner)
    return;
  // The spec as asked for: the slot's resolved spec less the shape the
  // heuristic gave it.
  KernelSpec asked = fn.kernel().spec;
  asked.shape.reset();
  tuner->request(*this, asked, kRegimes[regime], tokens, *slots.tuneProfile);
}

const LoadedFunction& Kernel::pickForCapture(int64_t tokens, const LoadedFunction& picked,
                                             CUstream stream) const {
  Slots& slots = *state_->slots;
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  // A stream whose status cannot be read is launched on as it is: with the
  // stand-in, which computes the same values.
  if (picked.driver().cuStreamIsCapturing(stream, &status) != CUDA_SUCCESS ||
      status != CU_STREAM_CAPTURE_STATUS_ACTIVE)
    return picked;
  const int slot = slots.slotOf(tokens);
  std::unique_lock<std::mutex> lock(slots.mutex);
  slots.settled.wait(lock, [&] { return !slots.standIn[slot]; });
  return *slots.fn[slot].load(std::memory_order_acquire);
}

const KernelSpec& Kernel::spec() const {
  return compiled().spec;
}
const CompiledKernel& Kernel::compiled() const {
  return state_->slots->fn[index(kDefaultRegime)].load(std::memory_order_acquire)->kernel();
}
int Kernel::device() const {
  return state_->slots->device;
}

const LoadedFunction& Kernel::pick(int64_t tokens) const {
  const Slots& slots = *state_->slots;
  return *slots.fn[slots.slotOf(tokens)].load(std::memory_order_acquire);
}

const KernelSpec& Kernel::specFor(int64_t tokens) const {
  return pick(tokens).kernel().spec;
}

void Kernel::launchDims(const LaunchArgs& args, unsigned grid[3], unsigned block[3]) const {
  const KernelSpec& s = specFor(args.tokens);
  dims(s, args, gridBlocks(s, args.tokens), grid, block);
}

void Kernel::dims(const KernelSpec& s, const LaunchArgs& args, int64_t blocks, unsigned grid[3],
                  unsigned block[3]) {
  grid[0] = static_cast<unsigned>(blocks);
  grid[1] = s.masked ? static_cast<unsigned>(args.numExperts) : 1u;
  grid[2] = 1;
  block[0] = static_cast<unsigned>(s.shape->threadsPerBlock());
  block[1] = block[2] = 1;
}

namespace {

llvm::Error argError(const KernelSpec& spec, const std::string& field, const std::string& value,
                     const std::string& rule) {
  return makeError(ErrorCode::InvalidArgument, "launch argument '" + field + "' = " + value + ": " +
                                                   rule + " (kernel " + spec.label() + ")");
}

std::string hexPointer(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

llvm::Error checkPointer(const KernelSpec& spec, const char* field, const void* p, int align) {
  if (!p)
    return argError(spec, field, "null", "must be a device pointer");
  if (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(align) != 0)
    return argError(spec, field, hexPointer(p),
                    "must be aligned to " + std::to_string(align) + " bytes for this kernel");
  return llvm::Error::success();
}

/// The device of a context, or -1 when the driver can't tell. Only on the
/// error path: it pushes and pops the context on this thread.
int deviceOfContext(const CudaDriver& d, CUcontext ctx) {
  if (!ctx || d.cuCtxPushCurrent(ctx) != CUDA_SUCCESS)
    return -1;
  CUdevice dev = -1;
  if (d.cuCtxGetDevice(&dev) != CUDA_SUCCESS)
    dev = -1;
  CUcontext popped = nullptr;
  d.cuCtxPopCurrent(&popped);
  return static_cast<int>(dev);
}

/// Why a stream whose context is `streamCtx` can't run a function loaded in
/// the primary context of `device`: names the stream's device as well.
std::string streamContextRule(const CudaDriver& d, CUcontext streamCtx, bool legacy, int device) {
  const std::string dev = std::to_string(device);
  const std::string loaded = "this kernel is loaded in the primary context of device " + dev;
  if (!streamCtx)
    return "the default stream needs a current context, and none is current to this thread; " +
           loaded + ": make that context current or pass a stream of it";
  const std::string whose = legacy ? "the default stream's context (this thread's current context)"
                                   : "the stream's context";
  const int streamDevice = deviceOfContext(d, streamCtx);
  if (streamDevice < 0)
    return whose + " is not the primary context of device " + dev +
           ", where this kernel is loaded (the device of that context could not be determined)";
  const std::string other = std::to_string(streamDevice);
  if (streamDevice != device)
    return whose + " is on device " + other + ", but " + loaded + "; use a stream of device " +
           dev + "'s primary context, or get the kernel for device " + other;
  return whose + " is another context on device " + dev + ", not its primary context, where " +
         "this kernel is loaded; use a stream of device " + dev + "'s primary context";
}

} // namespace

llvm::Error Kernel::launch(const LaunchArgs& a, CUstream stream) const {
  const Slots& slots = *state_->slots;
  if (a.tokens < 0 || a.tokens > kMaxLaunchRows)
    return argError(slots.fn[0].load(std::memory_order_acquire)->kernel().spec, "tokens",
                    std::to_string(a.tokens),
                    "must be in 0.." + std::to_string(kMaxLaunchRows) + " (2^40)");
  const int slot = slots.slotOf(a.tokens);
  const LoadedFunction* picked = slots.fn[slot].load(std::memory_order_acquire);
  // A graph keeps the function it captured: while a variant still compiles
  // in the background, a captured launch waits for it rather than capture
  // its stand-in (on the warm path this costs one atomic load).
  if (state_->slots->standIns.load(std::memory_order_acquire) > 0)
    picked = &pickForCapture(a.tokens, *picked, stream);
  const LoadedFunction& fn = *picked;
  const KernelSpec& s = fn.kernel().spec;
  // The widest vector of the launch shapes, whichever this T takes: what a
  // caller may pass must not depend on the token count.
  const int vec = state_->slots->widestVec;
  const int vecBytes = vec * dtypeBytes(s.inDtype);
  if (a.ldx > kMaxLaunchPitch)
    return argError(s, "ldx", std::to_string(a.ldx),
                    "must be at most " + std::to_string(kMaxLaunchPitch) + " (2^40)");
  if (a.ldx < 2 * static_cast<int64_t>(s.hidden))
    return argError(s, "ldx", std::to_string(a.ldx),
                    "must be >= 2H = " + std::to_string(2 * s.hidden));
  if ((a.ldx * dtypeBytes(s.inDtype)) % vecBytes != 0)
    return argError(s, "ldx", std::to_string(a.ldx),
                    "row pitch must be a multiple of the " + std::to_string(vecBytes) +
                        "-byte vector loads (vec_width " + std::to_string(vec) +
                        ", the widest of this kernel's launch shapes)");
  if (!s.masked && a.numExperts != 1)
    return argError(s, "numExperts", std::to_string(a.numExperts),
                    "must be 1 for an unmasked kernel");
  if (s.masked && (a.numExperts < 1 || a.numExperts > 65535))
    return argError(s, "numExperts", std::to_string(a.numExperts), "must be in 1..65535");
  if (auto err = checkPointer(s, "x", a.x, vecBytes))
    return err;
  // The widest store of q: a vector's codes (fp4_e2m1: half a byte each).
  if (auto err = checkPointer(s, "q", a.q, std::max(1, vec * outBits(s.outDtype) / 8)))
    return err;
  // bytes: one byte per scale; the others store fp32s or 4-byte words
  // (swizzled_128x4's padding rows).
  if (auto err = checkPointer(s, "scales", a.scales, s.scaleLayout == ScaleLayout::Bytes ? 1 : 4))
    return err;
  if (s.needsGlobalScale()) {
    if (!a.globalScale)
      return argError(s, "globalScale", "null",
                      "NVFP4 (fp4_e2m1, group_size 16) needs a device pointer to its fp32 "
                      "global_scale (448 * 6 / amax of the tensor, by vLLM's convention)");
    if (auto err = checkPointer(s, "globalScale", a.globalScale, 4))
      return err;
  }
  if (s.hasScaleUb)
    if (auto err = checkPointer(s, "scaleUb", a.scaleUb, 4))
      return err;
  if (s.masked)
    if (auto err = checkPointer(s, "maskedM", a.maskedM, 4))
      return err;

  const CudaDriver& d = fn.driver();
  // The stream must belong to the context the function was loaded in.
  CUcontext streamCtx = nullptr;
  const bool legacy =
      stream == nullptr || stream == CU_STREAM_LEGACY || stream == CU_STREAM_PER_THREAD;
  CUresult r = legacy ? d.cuCtxGetCurrent(&streamCtx) : d.cuStreamGetCtx(stream, &streamCtx);
  if (r != CUDA_SUCCESS)
    return d.check(r, legacy ? "cuCtxGetCurrent" : "cuStreamGetCtx",
                   "stream " + hexPointer(stream) + " for kernel " + s.label());
  if (streamCtx != fn.context)
    return argError(s, "stream", hexPointer(stream),
                    streamContextRule(d, streamCtx, legacy, fn.device));
  if (a.tokens == 0)
    return llvm::Error::success();

  const int64_t blocks = gridBlocks(s, a.tokens);
  if (blocks > INT32_MAX)
    return argError(s, "tokens", std::to_string(a.tokens), "needs more than 2^31-1 blocks");
  unsigned grid[3], block[3];
  dims(s, a, blocks, grid, block); // the picked function's shape, even if a slot changes meanwhile

  const void* x = a.x;
  int64_t ldx = a.ldx, rows = a.tokens;
  void* q = a.q;
  void* scales = a.scales;
  const float* ub = a.scaleUb;
  const int32_t* masked = a.maskedM;
  const float* globalScale = a.globalScale;
  void* params[] = {&x, &ldx, &rows, &q, &scales, &ub, &masked, &globalScale};
  if (fn.programmaticLaunch && a.programmaticDependentLaunch.value_or(fn.programmaticByDefault)) {
    CUlaunchAttribute attribute{};
    attribute.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attribute.value.programmaticStreamSerializationAllowed = 1;
    CUlaunchConfig config{};
    config.gridDimX = grid[0];
    config.gridDimY = grid[1];
    config.gridDimZ = grid[2];
    config.blockDimX = block[0];
    config.blockDimY = block[1];
    config.blockDimZ = block[2];
    config.hStream = stream;
    config.attrs = &attribute;
    config.numAttrs = 1;
    r = d.cuLaunchKernelEx(&config, fn.function, params, nullptr);
    if (r != CUDA_SUCCESS)
      return d.check(r, "cuLaunchKernelEx (programmatic dependent launch)", "kernel " + s.label());
  } else {
    r = d.cuLaunchKernel(fn.function, grid[0], grid[1], grid[2], block[0], block[1], block[2], 0,
                         stream, params, nullptr);
    // The message is built only on failure: the launch path allocates nothing.
    if (r != CUDA_SUCCESS)
      return d.check(r, "cuLaunchKernel", "kernel " + s.label());
  }
  // Autotuning asks once a regime, after its launch is enqueued (one atomic
  // load on the warm path).
  const int regime = index(slotRegime(slot));
  if (!slots.tuneAsked[regime].load(std::memory_order_relaxed))
    askTuning(regime, a.tokens, stream);
  return llvm::Error::success();
}

} // namespace bqjit
