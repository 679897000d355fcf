// Launch slots: which of a kernel's compiled variants a launch of T rows
// takes. One slot a regime of T x H, in size order, and after them the
// few-token regime's full-SM slot; the planner's wave rules move launches
// between them by T alone (LaunchPlan::manyTokensFrom, fullSmFrom).
#pragma once

#include <cstdint>

#include "planner/regime.hpp"

namespace bqjit {

inline constexpr int kSlotCount = kRegimeCount + 1;
/// The slot of the few-token regime's launches from LaunchPlan::fullSmFrom.
inline constexpr int kFullSmSlot = kRegimeCount;

/// The regime whose launches a slot serves.
inline constexpr Regime slotRegime(int slot) {
  return slot == kFullSmSlot ? Regime::FewTokens : kRegimes[slot];
}

/// The one name of each slot: its regime's, and "few-token-full-sm".
inline const char* slotName(int slot) {
  return slot == kFullSmSlot ? "few-token-full-sm" : regimeName(kRegimes[slot]);
}

/// The slot choice of one kernel: its H and the planner's token thresholds.
struct SlotChoice {
  int64_t hidden = 0;
  /// Launches of at least this many rows below the many-token regime take
  /// the many-token slot (FP4's swizzled grids on an H200).
  int64_t manyTokensFrom = INT64_MAX;
  /// Few-token launches of at least this many rows take the full-SM slot
  /// (8-bit and swizzled FP4 outputs on an H200).
  int64_t fullSmFrom = INT64_MAX;

  /// The slot of a launch of `rows` rows (0..2^40).
  constexpr int slotOf(int64_t rows) const {
    const Regime r = regimeFor(rows * hidden);
    if (rows >= manyTokensFrom && index(r) < index(Regime::ManyTokens))
      return index(Regime::ManyTokens);
    if (r == Regime::FewTokens && rows >= fullSmFrom)
      return kFullSmSlot;
    return index(r);
  }
};

} // namespace bqjit
