#include "planner/launch_grid.hpp"

#include <algorithm>

namespace bqjit {

int64_t gridBlocks(const KernelSpec& s, int64_t tokens) {
  tokens = std::clamp<int64_t>(tokens, 0, kMaxLaunchRows);
  const bool padded =
      s.scaleLayout == ScaleLayout::ColTma || s.scaleLayout == ScaleLayout::Ue8m0Packed;
  int64_t tasks = (padded ? (tokens + 3) / 4 * 4 : tokens) * s.numGroups();
  if (s.scaleLayout == ScaleLayout::Swizzled128x4)
    tasks = (tokens + 127) / 128 * 128 * ((s.numGroups() + 3) / 4 * 4);
  return (tasks + s.shape->groupsPerBlock - 1) / s.shape->groupsPerBlock;
}

} // namespace bqjit
