#include "jit/launch_heuristic.hpp"

#include <algorithm>

namespace bqjit {

namespace {

int largestPow2Dividing(int n, int cap) {
  int p = 1;
  while (p * 2 <= cap && n % (p * 2) == 0)
    p *= 2;
  return p;
}

} // namespace

LaunchShape chooseLaunchShape(const KernelSpec& spec) {
  LaunchShape s;
  // 16-byte loads where G allows it.
  s.vecWidth = largestPow2Dividing(spec.groupSize, 16 / dtypeBytes(spec.inDtype));
  const int vectors = spec.groupSize / s.vecWidth;
  // At least two vectors per thread keeps four 16-byte loads in flight per
  // thread; a wider team shortens the amax reduction.
  s.threadsPerGroup = largestPow2Dividing(vectors, std::min(32, std::max(1, vectors / 2)));
  s.groupsPerBlock = std::max(1, 256 / s.threadsPerGroup);
  return s;
}

KernelSpec resolveShape(KernelSpec spec) {
  if (!spec.shape)
    spec.shape = chooseLaunchShape(spec);
  return spec;
}

std::vector<LaunchShape> candidateShapes(const KernelSpec& spec) {
  std::vector<LaunchShape> out;
  out.push_back(chooseLaunchShape(spec));
  for (int vec = 16; vec >= 1; vec /= 2)
    for (int tpg = 1; tpg <= 32; tpg *= 2)
      for (int threads : {128, 256, 512}) {
        LaunchShape s{tpg, vec, std::max(1, threads / tpg)};
        if (std::find(out.begin(), out.end(), s) != out.end())
          continue;
        if (auto err = validateShape(spec, s)) {
          llvm::consumeError(std::move(err));
          continue;
        }
        // Fewer than 4 bytes per load, or over 64 values per thread, is never faster.
        const int chunks = spec.groupSize / vec / tpg;
        if ((vec * dtypeBytes(spec.inDtype) < 4 && vec * 2 < spec.groupSize / tpg) || chunks * vec > 64)
          continue;
        out.push_back(s);
      }
  return out;
}

} // namespace bqjit
