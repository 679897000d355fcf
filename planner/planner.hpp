// The planner: which launch shapes a spec needs and which of them serves a
// launch of T tokens. It owns the regimes, the heuristic and the tuning
// records; it knows nothing of compiling or caching kernels.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <llvm/Support/Error.h>

#include "bqjit/config.hpp"
#include "bqjit/kernel_spec.hpp"
#include "planner/launch_slots.hpp"
#include "planner/regime.hpp"
#include "planner/tuning_store.hpp"

namespace bqjit {

/// The resolved specs a launch may use and which of them serves each regime.
struct LaunchPlan {
  /// Resolved specs (shape and occupancy set), each shape once, in the size
  /// order of the first regime each serves.
  std::vector<KernelSpec> variants;
  /// Index into `variants`, per Regime.
  std::array<int, kRegimeCount> variantOf{};
  /// Per Regime, whether the heuristic chose its shape (the spec gave none
  /// and no tuning record of the device exists): what autotuning may improve.
  std::array<bool, kRegimeCount> fromHeuristic{};
  /// Launches of at least this many tokens take the many-token regime's
  /// variant whatever their T x H (manyTeamsFromTokens: FP4's swizzled
  /// grids on sm_90 devices); INT64_MAX: none do.
  int64_t manyTokensFrom = INT64_MAX;
  /// Few-token launches of at least this many tokens take
  /// `variants[fullSmVariant]`, the few-token shape promised a full
  /// multiprocessor (fewTokensFullSm: 8-bit and swizzled FP4 outputs on an
  /// H200 from 1.2 waves; FP4's below manyTokensFrom); INT64_MAX (and -1):
  /// none do.
  int64_t fullSmFrom = INT64_MAX;
  int fullSmVariant = -1;

  const KernelSpec& variantFor(Regime regime) const { return variants[variantOf[index(regime)]]; }
  /// Which slot a launch of T rows takes (launch_slots.hpp).
  SlotChoice slotChoice() const {
    return SlotChoice{variants.front().hidden, manyTokensFrom, fullSmFrom};
  }
  /// The index into `variants` of a slot.
  int variantOfSlot(int slot) const {
    return slot == kFullSmSlot
               ? (fullSmVariant >= 0 ? fullSmVariant : variantOf[index(Regime::FewTokens)])
               : variantOf[slot];
  }
  /// The variant a launch of `rows` rows (0..2^40) takes.
  const KernelSpec& variantForTokens(int64_t rows) const {
    return variants[variantOfSlot(slotChoice().slotOf(rows))];
  }
};

class Planner {
public:
  /// Tuning records live under Config::cacheDir (none without one).
  /// `codeIdentity` names the kernel code (TuningStore).
  Planner(const Config& config, std::string codeIdentity);

  /// Validates `spec` (the entry point's one validation) and plans it: a spec
  /// with a shape uses that shape for every regime (occupancy derived where
  /// not given); otherwise each regime takes its tuning record, else the
  /// heuristic's shape, and regimes whose shapes agree share one variant.
  /// The heuristic's shapes and the tuning records are those of `device`.
  llvm::Expected<LaunchPlan> plan(const KernelSpec& spec, const DeviceProfile& device) const;
  /// plan() for the default device of the spec's architecture
  /// (DeviceProfile::forArch): what a GPU bqjit does not know gets.
  llvm::Expected<LaunchPlan> plan(const KernelSpec& spec) const;

  /// The resolved spec one regime launches with (validates `spec`).
  llvm::Expected<KernelSpec> resolve(const KernelSpec& spec, Regime regime,
                                     const DeviceProfile& device) const;
  /// resolve() on the default device of the spec's architecture.
  llvm::Expected<KernelSpec> resolve(const KernelSpec& spec, Regime regime = kDefaultRegime) const;

  TuningStore& tuning() { return tuning_; }
  const TuningStore& tuning() const { return tuning_; }

private:
  LaunchPlan planValid(const KernelSpec& spec, const DeviceProfile& device) const;
  /// `heuristic`, if given, tells whether the heuristic chose the shape.
  LaunchShape shapeFor(const KernelSpec& spec, Regime regime, const DeviceProfile& device,
                       bool* heuristic = nullptr) const;
  TuningStore tuning_;
};

} // namespace bqjit
