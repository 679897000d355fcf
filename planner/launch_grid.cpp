#include "planner/launch_grid.hpp"

#include <algorithm>

namespace bqjit {

namespace {

// Row pairs of a partial 128-row band that hold a live row (0 where T is a
// multiple of 128).
int64_t partialBandPairs(int64_t tokens) {
  const int64_t partial = tokens % 128;
  return partial == 0 ? 0 : std::min<int64_t>(16, (partial + 1) / 2);
}

int64_t ceilDiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

} // namespace

int64_t swizzledLivePairs(int64_t tokens) {
  tokens = std::clamp<int64_t>(tokens, 0, kMaxLaunchRows);
  return tokens / 128 * 16 + partialBandPairs(tokens);
}

int64_t gridBlocks(const KernelSpec& s, int64_t tokens) {
  tokens = std::clamp<int64_t>(tokens, 0, kMaxLaunchRows);
  const int64_t gpb = s.shape->groupsPerBlock;
  if (s.scaleLayout == ScaleLayout::Swizzled128x4) {
    const int64_t tileCols = (s.numGroups() + 3) / 4;
    int64_t blocks = ceilDiv(swizzledLivePairs(tokens) * 8 * tileCols * 4, gpb);
    const int64_t pairs = partialBandPairs(tokens);
    if (pairs > 0 && pairs < 16) // the zeroing blocks: 16 bytes a thread
      blocks += ceilDiv(tileCols * (32 - 2 * pairs), int64_t(s.shape->threadsPerBlock()));
    return blocks;
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
