// The default launch shape of a spec for each regime, and the candidates
// `bqjit tune` times. Every occupancy decision (block size, blocks per SM
// promised to ptxas) is made here.
#pragma once

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
