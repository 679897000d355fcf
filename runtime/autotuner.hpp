// BQJIT_AUTOTUNE: the launch shape of a regime tuned in the background on the
// regime's first launch, and the winner swapped into the kernel's slot.
//
// The rules (which T, which candidates, which winner) are plain functions,
// tested on the CPU; the tuner runs them on a thread of its own, on a stream
// of its own, in the relaxed capture mode, so that neither a launch nor an
// application's graph capture ever waits for it or is disturbed by it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <llvm/Support/Error.h>

#include "bqjit/config.hpp"
#include "bqjit/service.hpp"
#include "planner/device_profile.hpp"
#include "planner/regime.hpp"
#include "planner/tuning_store.hpp"
#include "runtime/compile_worker.hpp"
#include "runtime/loaded_function.hpp"

namespace bqjit {

/// Device memory a tuning may take at most: its buffers, all sets together
/// (less where the device has less than four times this free).
inline constexpr int64_t kTuneBudgetBytes = int64_t(512) << 20;
/// At most this many buffer sets rotate (enough that a set's input has left
/// L2 by its next turn, where a set is smaller than L2).
inline constexpr int kTuneMaxSets = 8;
/// A candidate replaces the heuristic's shape only when faster by more than
/// this share: timings in a busy process are noisy, and a swap for noise
/// would only churn.
inline constexpr double kTuneMargin = 0.02;

/// The buffers of one tuning launch: input (ldx = 2H), q and an upper bound
/// of every scale layout's buffer (swizzled_128x4's padded rows and columns
/// of 4-byte words), for `tokens` rows of one expert.
struct TuneBuffers {
  int64_t xBytes = 0;
  int64_t qBytes = 0;
  int64_t scaleBytes = 0;
  int64_t setBytes() const { return xBytes + qBytes + scaleBytes; }
};
TuneBuffers tuneBuffers(const KernelSpec& spec, int64_t tokens);

/// The rows to tune a regime with, asked by a launch of `tokens` rows: those
/// rows, fewer where one buffer set would exceed `budgetBytes`, but never
/// fewer than the regime's smallest T for this H; none where even that does
/// not fit.
std::optional<int64_t> tuneTokens(const KernelSpec& spec, Regime regime, int64_t tokens,
                                  int64_t budgetBytes = kTuneBudgetBytes);

/// Buffer sets to rotate: enough that together they hold twice the device's
/// L2 (so a set's input is not in L2 at its next turn), at most kTuneMaxSets
/// and what the budget holds, at least one.
int tuneSets(const TuneBuffers& buffers, const DeviceProfile& device,
             int64_t budgetBytes = kTuneBudgetBytes);

/// The shapes to time for one regime of a spec whose kernel already runs
/// `incumbent` there: `incumbent` first, then bqjit tune's candidates for the
/// regime and device, each once, whose vectors are no wider than `widestVec`
/// (a handle's callers align their pointers for its widest vector; a wider
/// shape could not take its slot).
std::vector<LaunchShape> tuneCandidates(const KernelSpec& spec, Regime regime,
                                        const DeviceProfile& device, const LaunchShape& incumbent,
                                        int widestVec);

/// The index of the winner among timings in microseconds whose first entry is
/// the incumbent's: the fastest, unless the incumbent is within `margin` of
/// it. Entries that are not positive (a candidate that failed) never win.
size_t pickWinner(const std::vector<double>& micros, double margin = kTuneMargin);

/// Tunes regimes of kernels on a background thread; owned by the service,
/// reached by the kernels it hands out through a weak reference.
class Autotuner {
public:
  /// Finds or compiles a resolved spec and loads it on a device (the
  /// service's caches and modules).
  using LoadVariant = std::function<llvm::Expected<std::shared_ptr<const LoadedFunction>>(
      const KernelSpec& resolved, int device)>;

  Autotuner(const Config& config, TuningStore& tuning, LoadVariant loadVariant);
  Autotuner(const Autotuner&) = delete;
  Autotuner& operator=(const Autotuner&) = delete;
  ~Autotuner();

  /// Where the spec's kernel on `device` runs the heuristic's shape for
  /// `regime`: tune it, as seen by `kernel`'s first launch of `tokens` rows
  /// there; returns at once. `spec` is the spec as asked for (no shape),
  /// `profile` the device's.
  void request(const Kernel& kernel, const KernelSpec& spec, Regime regime, int64_t tokens,
               const DeviceProfile& profile);

  /// Starts the background thread and registers its exit handling now (it
  /// may compile NVRTC's first program), so that a request from a launch
  /// does neither.
  void prepare();
  /// Waits until no tuning is queued or running (tests and tools).
  void drain();
  /// Drops queued tunings and waits for the running one, which stops at its
  /// next step. Later requests are dropped.
  void stop();

private:
  struct Job {
    Kernel kernel;
    KernelSpec spec;
    Regime regime;
    int64_t tokens;
    DeviceProfile profile;
  };
  void run(const Job& job);
  llvm::Expected<LaunchShape> tune(const Job& job);
  std::string keyOf(const Job& job) const;

  const Config& config_;
  TuningStore& tuning_;
  LoadVariant loadVariant_;
  std::mutex mutex_;
  /// The winners of this process, by spec, regime and device: a later kernel
  /// of the same spec (after Service::invalidate(), or without a cache
  /// directory to store records in) takes the winner without tuning again.
  std::map<std::string, LaunchShape> winners_;
  CompileWorker worker_;
};

} // namespace bqjit
