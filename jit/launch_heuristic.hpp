// The default launch shape of a spec, used unless the user or a tuning
// record gives one.
#pragma once

#include <cstdint>
#include <vector>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

/// What a launch shape is tuned for. T is a run-time value, so a spec
/// without an explicit shape is compiled in both and the launch picks one.
enum class Regime {
  Throughput, ///< many tokens: two or more vectors per thread, fewer threads
  Latency,    ///< few tokens: one vector per thread, the shortest chain
};

/// Launches with at most this many elements (tokens x H) take the latency
/// shape; measured crossover on an H100 (bench/NOTES.md, version 2).
inline constexpr int64_t kLatencyMaxElements = int64_t(1) << 22;

/// The heuristic's choice for a validated spec (its `shape` is ignored),
/// with vectors of at most `maxVecWidth` elements (for inputs or outputs that
/// are not 16-byte aligned).
LaunchShape chooseLaunchShape(const KernelSpec& spec, int maxVecWidth = 16,
                              Regime regime = Regime::Throughput);

/// The spec with `shape` filled in by the heuristic when it is unset.
KernelSpec resolveShape(KernelSpec spec);

/// Every valid shape worth timing for a spec, the heuristic's first.
std::vector<LaunchShape> candidateShapes(const KernelSpec& spec);

} // namespace bqjit
