// The default launch shape of a spec for each regime, and the candidates
// `bqjit tune` times. Every occupancy decision (block size, blocks per SM
// promised to ptxas) is made here.
#pragma once

#include <optional>
#include <vector>

#include "bqjit/kernel_spec.hpp"
#include "planner/device_profile.hpp"
#include "planner/regime.hpp"

namespace bqjit {

/// The heuristic's shape for a validated spec (its `shape` is ignored) on a
/// device, with vectors of at most `maxVecWidth` elements; minBlocksPerSm is
/// derived. The device's bytes in flight (inFlightMultiple) set the team and
/// block sizes of the many-token regimes.
LaunchShape chooseLaunchShape(const KernelSpec& spec, Regime regime, const DeviceProfile& device,
                              int maxVecWidth = 16);
/// chooseLaunchShape on an architecture's default device (DeviceProfile::forArch).
LaunchShape chooseLaunchShape(const KernelSpec& spec, Regime regime = kDefaultRegime,
                              int maxVecWidth = 16);

/// How many times the reference class's bytes in flight a device needs,
/// as the heuristic rounds it: 1 (H100 and slower per SM) or 2 (H200).
int inFlightMultiple(const DeviceProfile& device);

/// FP4 with swizzled_128x4 scales (plain batches) on a device whose
/// many-token teams read twice the elements a thread of its few-token teams
/// (an H200): the fewest tokens from which a launch below the many-token
/// regime takes the many-token shape anyway, or none. What decides is the
/// few-token grid against the device's resident blocks, not T x H: the
/// swizzled layout's blocks cover T rounded up to 128 rows, and from 1.4
/// waves of them (six 256-thread blocks an SM) the two-vector teams' half
/// as many blocks win (bench/NOTES.md, fourteenth session: 1.13 and 1.29
/// waves lose 10-17% with them; 1.45, 2.02 and more waves gain 8-28%).
/// `few` and `many` are the few- and many-token regimes' shapes.
std::optional<int64_t> manyTeamsFromTokens(const KernelSpec& spec, const LaunchShape& few,
                                           const LaunchShape& many, const DeviceProfile& device);

/// Blocks per multiprocessor to promise ptxas for a shape: 0 (registers left
/// to ptxas) where a thread's work fits the 64 registers ptxas gives a
/// 256-thread block by default, else as many blocks as the register file
/// holds at a rough count of the registers the thread needs.
int deriveMinBlocksPerSm(const KernelSpec& spec, const LaunchShape& shape);

/// `shape` with minBlocksPerSm derived where it is LaunchShape::kDerived.
LaunchShape withDerivedOccupancy(const KernelSpec& spec, LaunchShape shape);

/// Every valid shape worth timing for a spec, the heuristic's shape for
/// `regime` first; minBlocksPerSm derived.
std::vector<LaunchShape> candidateShapes(const KernelSpec& spec, Regime regime = kDefaultRegime,
                                         const DeviceProfile& device = DeviceProfile::reference());

} // namespace bqjit
