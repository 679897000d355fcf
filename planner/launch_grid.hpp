// The grid of a launch: how many blocks a resolved spec's shape launches for
// T rows. The planner's wave rules count them; Kernel::launch launches them.
#pragma once

#include <cstdint>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

/// Blocks along x of a launch of `tokens` rows (clamped to 0..2^40) of a
/// resolved spec (its shape set): one team per (row, group), the padded
/// layouts' extra rows included; swizzled_128x4 has one task per scale byte,
/// its padding rows and columns included, as the template counts them.
int64_t gridBlocks(const KernelSpec& resolved, int64_t tokens);

/// The most rows a launch may have (and the largest row pitch): no device
/// holds more, and the bound keeps T x H, the task count and the pitch in
/// bytes far from int64's end.
inline constexpr int64_t kMaxLaunchRows = int64_t(1) << 40;

} // namespace bqjit
