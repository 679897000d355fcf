#include "planner/launch_grid.hpp"

#include <algorithm>

// The template's own count of a swizzled_128x4 launch, compiled here for the host.
#define BQJIT_HD inline
#include "bqjit/swizzled_tasks.cuh"

namespace bqjit {

namespace {

int64_t ceilDiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

} // namespace

int64_t swizzledLivePairs(int64_t tokens) {
  tokens = std::clamp<int64_t>(tokens, 0, kMaxLaunchRows);
  return tokens / 128 * 16 + bqjit_kernel::partialBandPairs(tokens);
}

int64_t gridBlocks(const KernelSpec& s, int64_t tokens) {
  tokens = std::clamp<int64_t>(tokens, 0, kMaxLaunchRows);
  const int64_t gpb = s.shape->groupsPerBlock;
  if (s.scaleLayout == ScaleLayout::Swizzled128x4) {
    // The task blocks, then the zeroing blocks: 16 bytes a thread.
    const int tileCols = (s.numGroups() + 3) / 4;
    return bqjit_kernel::swizzledTaskBlocks(tokens, tileCols, int(gpb)) +
           bqjit_kernel::swizzledZeroBlocks(tokens, tileCols, int(s.shape->threadsPerBlock()));
  }
  const bool padded =
      s.scaleLayout == ScaleLayout::ColTma || s.scaleLayout == ScaleLayout::Ue8m0Packed;
  return ceilDiv((padded ? (tokens + 3) / 4 * 4 : tokens) * s.numGroups(), gpb);
}

int64_t waveBlocks(const KernelSpec& s, int64_t tokens) {
  if (s.scaleLayout != ScaleLayout::Swizzled128x4)
    return gridBlocks(s, tokens);
  tokens = std::clamp<int64_t>(tokens, 0, kMaxLaunchRows);
  return ceilDiv((tokens + 127) / 128 * 128 * ((s.numGroups() + 3) / 4 * 4),
                 s.shape->groupsPerBlock);
}

} // namespace bqjit
