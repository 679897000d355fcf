// The default launch shape of a spec, used unless the user or a tuning
// record gives one.
#pragma once

#include <vector>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

/// The heuristic's choice for a validated spec (its `shape` is ignored),
/// with vectors of at most `maxVecWidth` elements (for inputs or outputs that
/// are not 16-byte aligned).
LaunchShape chooseLaunchShape(const KernelSpec& spec, int maxVecWidth = 16);

/// The spec with `shape` filled in by the heuristic when it is unset.
KernelSpec resolveShape(KernelSpec spec);

/// Every valid shape worth timing for a spec, the heuristic's first.
std::vector<LaunchShape> candidateShapes(const KernelSpec& spec);

} // namespace bqjit
