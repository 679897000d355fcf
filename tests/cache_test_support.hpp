// Test helpers for code below the planner: a spec resolved as the planner
// would (the many-token heuristic's shape, occupancy derived), its identity,
// and a cache lookup by spec.
#pragma once

#include <chrono>
#include <string>

#include "bqjit/error.hpp"
#include "cache/kernel_cache.hpp"
#include "planner/launch_heuristic.hpp"

namespace bqjit::test {

inline KernelSpec resolvedSpec(KernelSpec s) {
  s.shape = s.shape ? withDerivedOccupancy(s, *s.shape) : chooseLaunchShape(s);
  return s;
}

/// The cache key of a spec once resolved ("" and a test failure if it has none).
inline std::string keyOf(const Compiler& compiler, const KernelSpec& spec) {
  auto id = compiler.identify(resolvedSpec(spec));
  return id ? id->key : consumeToString(id.takeError());
}

/// Milliseconds since `start` on the steady clock.
inline double msSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

/// A small spec with an explicit launch shape, so that it is exactly one
/// entry; k picks H = 128 k.
inline KernelSpec specNumber(int k) {
  KernelSpec s;
  s.hidden = 128 * k;
  s.groupSize = 128;
  s.inDtype = InDtype::BF16;
  s.arch = "sm_90";
  s.shape = LaunchShape{16, 8, 8, 0};
  return s;
}

inline llvm::Expected<KernelCache::Result> getSpec(KernelCache& cache, const KernelSpec& spec) {
  return cache.getResolved(resolvedSpec(spec));
}

} // namespace bqjit::test
