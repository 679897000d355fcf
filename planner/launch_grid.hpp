// The grid of a launch: how many blocks a resolved spec's shape launches for
// T rows. The planner's wave rules count them; Kernel::launch launches them.
#pragma once

#include <cstdint>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

/// Blocks along x of a launch of `tokens` rows (clamped to 0..2^40) of a
/// resolved spec (its shape set), as the template counts them: one team per
/// (row, group), the padded layouts' extra rows included. swizzled_128x4: one
/// task per scale byte of the row pairs that hold a live row
/// (swizzledLivePairs), their padding rows and columns included, then the
/// blocks that zero a partial band's other pairs, 16 bytes a thread: counted
/// by the template's own arithmetic (templates/swizzled_tasks.cuh).
int64_t gridBlocks(const KernelSpec& resolved, int64_t tokens);

/// Blocks as the planner's wave rules count them: gridBlocks, but for
/// swizzled_128x4 one task per scale byte of every row of its 128-row bands,
/// the grid those rules were fitted and measured with. Counted over live row
/// pairs, the rules moved 18432 and 25600 x 16 and x 30 to shapes 30-45%
/// slower on an H100 (bench/NOTES.md, thirty-first session).
int64_t waveBlocks(const KernelSpec& resolved, int64_t tokens);

/// swizzled_128x4's row pairs that hold a live row among `tokens` rows. A
/// row pair is the 8 rows whose scale bytes fill one 32-byte sector of each
/// of a 128-row band's tiles: rows 2p, 2p + 1 and the same 32, 64 and 96 rows
/// on, for p in 0..15. Every full band has 16; a partial band of r rows its
/// first min(16, ceil(r / 2)).
int64_t swizzledLivePairs(int64_t tokens);

/// The most rows a launch may have (and the largest row pitch): no device
/// holds more, and the bound keeps T x H, the task count and the pitch in
/// bytes far from int64's end.
inline constexpr int64_t kMaxLaunchRows = int64_t(1) << 40;

} // namespace bqjit
