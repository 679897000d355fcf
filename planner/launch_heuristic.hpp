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
/// (every sm_90 device: the H200 and the H100 class): the fewest tokens
/// from which a launch below the many-token regime takes the many-token
/// shape anyway, or none. What decides is the few-token grid against the
/// device's resident blocks, not T x H: the swizzled layout's blocks cover T
/// rounded up to 128 rows, and from 1.4 waves of them (six 256-thread blocks
/// an SM) the two-vector teams' half as many blocks win (bench/NOTES.md,
/// fourteenth session: 1.13 and 1.29 waves lose 10-17% with them; 1.45, 2.02
/// and more waves gain 8-28%).
/// `few` and `many` are the few- and many-token regimes' shapes.
std::optional<int64_t> manyTeamsFromTokens(const KernelSpec& spec, const LaunchShape& few,
                                           const LaunchShape& many, const DeviceProfile& device);

/// Where the few-token regime splits by waves: its shape with the promise of
/// a full multiprocessor, and the fewest tokens that take it.
struct FullSmSplit {
  LaunchShape shape;
  int64_t fromTokens = 0;
};

/// 8-bit float outputs, and FP4 with swizzled_128x4 scales, of 16-bit inputs,
/// in teams of 8 values a thread, on a device that needs twice the bytes in
/// flight (an H200): the few-token shape `few` promised 2048 threads an SM
/// (eight 256-thread blocks, 32 registers, no spills where the rule applies)
/// and the fewest tokens from which it serves few-token launches, or none.
/// What decides is the grid against the blocks the device keeps resident:
/// the unpromised shape's six blocks an SM run the shortest code, so under
/// one wave they win (3072 x 384, 0.73 waves: the promise costs 7%); from
/// about 1.3 waves the promise's fewer waves win (8-bit: 3-7% for swiglu and
/// gelu_tanh, 1-3% for silu at 1.45, 1.70 and 1.94 waves, bench/NOTES.md,
/// fourteenth session; FP4 at 2048 x 1024, 1.29 waves: MXFP4 9%, NVFP4 5%,
/// twenty-first session). The split is put at 1.2 waves of six blocks an SM,
/// between the two measured sides. FP4's few-token launches from 1.4 waves
/// take its two-vector teams (manyTeamsFromTokens), so its split serves the
/// launches between the two.
std::optional<FullSmSplit> fewTokensFullSm(const KernelSpec& spec, const LaunchShape& few,
                                           const DeviceProfile& device);

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
