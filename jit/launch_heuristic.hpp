// The default launch shape of a spec, used unless the user or a tuning
// record gives one.
#pragma once

#include <cstdint>
#include <vector>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

/// What a launch shape is tuned for. T is a run-time value, so a spec
/// without an explicit shape is compiled for each (once where two agree)
/// and every launch picks by T x H.
enum class Regime {
  Throughput, ///< many tokens: power-of-two teams, several vectors per thread
  Latency,    ///< few tokens: one 16-byte vector per thread
  Tiny,       ///< very few tokens: one vector of 8 bytes or more per thread,
              ///< teams of up to 32: the shortest chain
  Bulk,       ///< very many tokens: the throughput teams in blocks of 8192
              ///< elements where G divides 8192
};

/// The number of regimes, for tables indexed by Regime.
inline constexpr int kRegimeCount = 4;

/// Launches with at most this many elements (tokens x H) take the latency
/// shape; measured crossover on an H100 (bench/NOTES.md, version 2).
inline constexpr int64_t kLatencyMaxElements = int64_t(1) << 22;
/// Launches with at most this many elements take the tiny shape
/// (bench/NOTES.md, version 4).
inline constexpr int64_t kTinyMaxElements = int64_t(1) << 20;

/// Launches with more than this many elements take the bulk shape
/// (bench/NOTES.md, version 6).
inline constexpr int64_t kThroughputMaxElements = int64_t(1) << 25;

/// The largest tokens x H a regime serves (very many tokens: no limit).
inline constexpr int64_t regimeMaxElements(Regime regime) {
  return regime == Regime::Tiny         ? kTinyMaxElements
         : regime == Regime::Latency    ? kLatencyMaxElements
         : regime == Regime::Throughput ? kThroughputMaxElements
                                        : INT64_MAX;
}

/// The regimes from the fewest elements to the most: each serves from one
/// past the previous one's regimeMaxElements up to its own.
inline constexpr Regime kRegimesBySize[kRegimeCount] = {Regime::Tiny, Regime::Latency,
                                                        Regime::Throughput, Regime::Bulk};

/// The smallest tokens x H a regime serves.
inline constexpr int64_t regimeMinElements(Regime regime) {
  int64_t min = 0;
  for (Regime r : kRegimesBySize) {
    if (r == regime)
      break;
    min = regimeMaxElements(r) + 1;
  }
  return min;
}

/// The regime of a launch of `elements` = tokens x H: the narrowest that serves it.
inline Regime regimeFor(int64_t elements) {
  for (Regime r : kRegimesBySize)
    if (elements <= regimeMaxElements(r))
      return r;
  return Regime::Bulk; // not reached: the last regime has no limit
}

/// "many-token", "few-token", "very-few-token" or "very-many-token".
const char* regimeName(Regime regime);

/// The heuristic's choice for a validated spec (its `shape` is ignored),
/// with vectors of at most `maxVecWidth` elements (for inputs or outputs that
/// are not 16-byte aligned).
LaunchShape chooseLaunchShape(const KernelSpec& spec, int maxVecWidth = 16,
                              Regime regime = Regime::Throughput);

/// The spec with `shape` filled in by the heuristic when it is unset.
KernelSpec resolveShape(KernelSpec spec);

/// Every valid shape worth timing for a spec, the heuristic's shape for
/// `regime` first.
std::vector<LaunchShape> candidateShapes(const KernelSpec& spec,
                                         Regime regime = Regime::Throughput);

} // namespace bqjit
