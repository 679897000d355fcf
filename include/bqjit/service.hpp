// The C++ service API: ask for the kernel of a spec, launch it on a stream.
//
//   auto config = bqjit::Config::fromEnvironment();
//   auto service = bqjit::Service::create(*config);
//   auto kernel = (*service)->getKernel(spec, /*device=*/0);
//   kernel->launch(args, stream);
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>

#include <cuda.h>
#include <llvm/Support/Error.h>

#include "bqjit/compiled_kernel.hpp"
#include "bqjit/config.hpp"
#include "bqjit/kernel_spec.hpp"

namespace bqjit {

class Autotuner;
class CudaDriver;
class KernelCache;
class Planner;
struct DeviceProfile;
enum class Regime : int;
struct LoadedFunction;
struct SlotChoice;

/// Run-time arguments of one launch; every pointer is device memory.
struct LaunchArgs {
  const void* x = nullptr;          ///< [E][tokens][ldx] input, gate then up
  int64_t ldx = 0;                  ///< elements between rows of x; 2H..2^40
  int64_t tokens = 0;               ///< T (T_max for masked batches), 0..2^40; 0 launches nothing
  void* q = nullptr;                ///< [E][tokens][H] quantized output
  void* scales = nullptr;           ///< scales, laid out per the spec's scale layout
  const float* scaleUb = nullptr;   ///< one float; required iff the spec has a scale bound
  const int32_t* maskedM = nullptr; ///< [E] live rows per expert; required iff masked
  int64_t numExperts = 1;           ///< E; must be 1 unless masked
  /// One float, NVFP4's global scale (docs/contract.md section 8: finite and > 0,
  /// by vLLM's convention 448 * 6 / amax of the tensor); required iff the spec
  /// is NVFP4 (fp4_e2m1, G = 16), ignored otherwise.
  const float* globalScale = nullptr;
  /// Programmatic dependent launch (CUDA's launch attribute, sm_90 and newer):
  /// the kernel may start while the previous kernel on the stream is still
  /// running, which hides its launch latency behind that kernel's tail. The
  /// kernel waits for the previous kernel's memory before touching any
  /// (griddepcontrol.wait), so the results are the same; a kernel after it
  /// that was itself launched this way must wait likewise before reading q or
  /// the scales. Captured in CUDA graphs as a programmatic edge. Ignored on
  /// GPUs older than sm_90. Unset: the service's Config::programmaticLaunch
  /// (BQJIT_PDL, on by default); true or false decides for this launch.
  std::optional<bool> programmaticDependentLaunch;
};

/// A kernel loaded on one device: a cheap, copyable handle. When the spec
/// left the launch shape to bqjit, it holds a compiled shape per launch slot
/// (planner/launch_slots.hpp: one a regime of T x H, and the few-token
/// regime's full-SM slot; one shape where two agree), and each launch picks
/// by its token count (on an H200, FP4 with swizzled scales and 8-bit outputs
/// also by the waves its grid makes: LaunchPlan::manyTokensFrom and
/// fullSmFrom). The modules it uses stay loaded while a copy of it exists: a
/// host that captures a launch in a CUDA graph keeps the handle for the
/// graph's lifetime.
class Kernel {
public:
  /// The resolved spec of the default (many-token) regime's shape.
  const KernelSpec& spec() const;
  const CompiledKernel& compiled() const;
  /// The spec a launch with `tokens` rows uses (a count outside 0..2^40: that
  /// of the nearest count inside).
  const KernelSpec& specFor(int64_t tokens) const;
  /// The CUdevice ordinal the kernel is loaded on.
  int device() const;
  /// Grid and block of a launch with these arguments (arguments launch()
  /// accepts; others give dimensions no launch would use).
  void launchDims(const LaunchArgs& args, unsigned grid[3], unsigned block[3]) const;

  /// Checks the arguments (null or misaligned pointers for the widest vector
  /// of its shapes, ldx outside 2H..2^40, tokens outside 0..2^40, a stream
  /// of another context) and enqueues the kernel on `stream`. No allocation,
  /// synchronization or disk access, so it may be captured in a CUDA graph.
  /// A captured launch whose regime's variant still compiles in the
  /// background (a new spec, Service::finishVariants()) waits for that
  /// variant rather than capture the stand-in, so a graph always holds the
  /// planned shape. With Config::autotune, the first launch of a regime that
  /// is not captured queues that regime's tuning (one small allocation) and
  /// returns.
  llvm::Error launch(const LaunchArgs& args, CUstream stream) const;

private:
  friend class Service;
  friend class Autotuner;
  /// One function per launch slot (planner/launch_slots.hpp: the regimes in
  /// Regime order, then the few-token regime's full-SM slot), the same one
  /// repeated where slots share a shape.
  using Functions = std::array<std::shared_ptr<const LoadedFunction>, 5>;
  struct Slots; ///< the functions per slot, shared by every copy
  struct State; ///< one copy's reference to the slots
  /// Per slot, whether its function stands in for a variant still compiling.
  using StandIns = std::array<bool, 5>;
  /// `widestVec`: the widest vector of every shape the kernel will hold.
  /// `choice` (its thresholds; H is the functions'): which slot a launch of
  /// T rows takes.
  Kernel(const Functions& fns, int widestVec, const StandIns& standIns, const SlotChoice& choice);
  /// One shape for every T: no stand-ins, no thresholds.
  Kernel(const Functions& fns, int widestVec);
  /// The same slots under a reference count of its own.
  Kernel ownCopy() const;
  /// Puts a function in every slot of a regime, for this handle and every
  /// copy; a stand-in there is settled.
  void replace(Regime regime, std::shared_ptr<const LoadedFunction> fn) const;
  /// Puts a function in one slot, likewise.
  void replaceSlot(int slot, std::shared_ptr<const LoadedFunction> fn) const;
  /// Puts in slot `to` what slot `from` holds now, likewise.
  void shareSlot(int from, int to) const;
  /// Settles every stand-in left: no variant will replace it.
  void settleStandIns() const;
  /// Waits until no slot holds a stand-in.
  void waitForVariants() const;
  /// The widest vector any of its shapes may have (what callers align for).
  int widestVec() const;
  /// Autotuning (Config::autotune): the first launch of each regime marked in
  /// `tunable`, not being captured, asks `tuner` to tune it on the device of
  /// `profile`. Before the handle is shared.
  void enableTuning(std::weak_ptr<Autotuner> tuner, const DeviceProfile& profile,
                    const std::array<bool, 4>& tunable);
  /// The cold path of a launch whose regime has not asked yet.
  void askTuning(int regime, int64_t tokens, CUstream stream) const;
  const LoadedFunction& pick(int64_t tokens) const;
  /// `picked`, or, where `stream` is capturing a graph and the regime's slot
  /// holds a stand-in, the regime's own variant once it has settled.
  const LoadedFunction& pickForCapture(int64_t tokens, const LoadedFunction& picked,
                                       CUstream stream) const;
  /// The launch's dimensions, for `blocks` = gridBlocks(spec, args.tokens).
  static void dims(const KernelSpec& spec, const LaunchArgs& args, int64_t blocks, unsigned grid[3],
                   unsigned block[3]);
  std::shared_ptr<const State> state_; ///< one reference count per copy
};

/// Process-wide kernel service: owns the cache, the compiler and, when a
/// driver is present, the loaded modules. Thread-safe.
class Service {
public:
  /// Never needs a GPU: the driver is opened on the first getKernel().
  static llvm::Expected<std::unique_ptr<Service>> create(Config config);
  ~Service();

  /// The compiled kernel of a spec, from memory, disk or NVRTC; works
  /// without a GPU or driver.
  llvm::Expected<std::shared_ptr<const CompiledKernel>> compile(const KernelSpec& spec);

  /// The kernel of `spec` loaded on `device` (-1: the device of the current
  /// context, else 0). The spec's architecture must match the device's.
  /// A repeated request is answered from memory (a hash-map lookup, no
  /// allocation, no file access, no lock that a compile or load holds) until
  /// something that can change the answer happens: a tuning record stored
  /// through planner().tuning() in this process, reloadTuning(), invalidate().
  llvm::Expected<Kernel> getKernel(const KernelSpec& spec, int device = -1);

  /// Reads tuning records again (those another process stored, e.g. by
  /// `bqjit tune`); the next getKernel of each spec plans anew.
  void reloadTuning();

  /// Forgets every kernel handed out and the service's own references to
  /// loaded modules (after a device reset, say): the next getKernel loads
  /// again. Handles already given stay valid, and keep their modules loaded,
  /// for as long as they are held. (Each thread also remembers its recent
  /// answers with a handle of its own; a thread lets go of those at its next
  /// getKernel on this service, or when it exits.)
  void invalidate();

  /// `spec` with its architecture set to the device's (e.g. "sm_90").
  llvm::Expected<KernelSpec> forDevice(KernelSpec spec, int device = -1);

  /// The properties of a device (-1: the current context's) that its launch
  /// shapes derive from, read from the driver once.
  llvm::Expected<DeviceProfile> deviceProfile(int device = -1);

  /// Waits until every kernel handed out holds its own variant in every
  /// slot. (A new spec's getKernel compiles the many-token variant only and
  /// lets it stand in for the regimes whose variants are not yet compiled;
  /// those compile on a background thread and take their slots as they
  /// load, in every copy of the handle. Results are the same either way.)
  void finishVariants();

  /// Waits until the autotuner (Config::autotune, BQJIT_AUTOTUNE) has
  /// finished every tuning asked for so far: the winners are in their slots
  /// and stored as tuning records. Returns at once without autotuning.
  void finishTuning();

  /// The driver, loading it if needed (ErrorCode::NoDriver without one).
  llvm::Expected<std::shared_ptr<const CudaDriver>> driver();

  /// The layers below, for tools: launch shapes and tuning records; kernels
  /// by identity.
  Planner& planner();
  KernelCache& cache();
  const Config& config() const;

private:
  struct Impl;
  explicit Service(std::unique_ptr<Impl> impl);
  /// getKernel without the warm path: plan, get each variant, load.
  llvm::Expected<Kernel> loadKernel(const KernelSpec& spec, int device);
  std::unique_ptr<Impl> impl_;
};

} // namespace bqjit
