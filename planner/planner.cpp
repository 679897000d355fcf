#include "planner/planner.hpp"

#include <algorithm>
#include <array>
#include <optional>

#include "planner/launch_heuristic.hpp"

namespace bqjit {

namespace {

std::string tuningDirectory(const Config& config) {
  return config.cacheDir.empty() ? "" : config.cacheDir + "/" + kCacheLayoutDir + "/tuned";
}

/// The default device of a validated spec's architecture.
DeviceProfile archDefault(const KernelSpec& spec) {
  auto arch = spec.targetArch(); // validated: always parses
  return arch ? DeviceProfile::forArch(*arch) : DeviceProfile::reference();
}

} // namespace

Planner::Planner(const Config& config, std::string codeIdentity)
    : tuning_(tuningDirectory(config), std::move(codeIdentity), config) {}

LaunchShape Planner::shapeFor(const KernelSpec& spec, Regime regime, const DeviceProfile& device,
                              bool* heuristic) const {
  if (heuristic)
    *heuristic = false;
  if (spec.shape)
    return withDerivedOccupancy(spec, *spec.shape);
  if (auto tuned = tuning_.find(spec, regime, device))
    return withDerivedOccupancy(spec, *tuned);
  if (heuristic)
    *heuristic = true;
  return chooseLaunchShape(spec, regime, device);
}

llvm::Expected<LaunchPlan> Planner::plan(const KernelSpec& spec) const {
  if (auto err = spec.validate())
    return std::move(err);
  return planValid(spec, archDefault(spec));
}

llvm::Expected<LaunchPlan> Planner::plan(const KernelSpec& spec,
                                         const DeviceProfile& device) const {
  if (auto err = spec.validate())
    return std::move(err);
  return planValid(spec, device);
}

LaunchPlan Planner::planValid(const KernelSpec& spec, const DeviceProfile& device) const {
  LaunchPlan plan;
  std::array<LaunchShape, kRegimeCount> shapes, heuristic;
  for (Regime r : kRegimes) {
    shapes[index(r)] = shapeFor(spec, r, device, &plan.fromHeuristic[index(r)]);
    heuristic[index(r)] = chooseLaunchShape(spec, r, device);
  }
  // The wave rules choose only between the heuristic's own shapes: a spec's
  // own shape or a tuning record of the regimes they touch is not overruled,
  // unless the record kept the heuristic's shape (an autotuning that found
  // nothing faster stores that shape, and must not lose the rule by it).
  const auto ruled = [&](Regime r) {
    return !spec.shape && shapes[index(r)] == heuristic[index(r)];
  };
  const Regime few = Regime::FewTokens;
  auto split = fewTokensFullSm(spec, heuristic[index(few)], device);
  if (split && !spec.shape &&
      (shapes[index(few)] == heuristic[index(few)] || shapes[index(few)] == split->shape))
    // A record that kept either side's shape gives the regime both again.
    shapes[index(few)] = heuristic[index(few)];
  else
    split.reset();
  if (ruled(Regime::VeryFewTokens) && ruled(few) && ruled(Regime::ManyTokens))
    if (auto from = manyTeamsFromTokens(spec, shapes[index(few)], shapes[index(Regime::ManyTokens)],
                                        device))
      plan.manyTokensFrom = *from;
  // Past the few-token regime's last T, or from a T whose launches the
  // many-token teams take (FP4), the split serves nothing. From the regime's
  // first T it serves every few-token launch, the few-token variant still
  // planned: where the promise spills, the service gives the slot that one.
  std::optional<LaunchShape> fullSm;
  if (split && split->fromTokens <= regimeLastTokens(few, spec.hidden) &&
      split->fromTokens < plan.manyTokensFrom) {
    fullSm = split->shape;
    plan.fullSmFrom = std::max(split->fromTokens, regimeFirstTokens(few, spec.hidden));
  }
  // Each shape once, in the size order of the first slot it serves.
  auto variantOf = [&](const LaunchShape& shape) {
    auto same = std::find_if(plan.variants.begin(), plan.variants.end(),
                             [&](const KernelSpec& v) { return *v.shape == shape; });
    if (same == plan.variants.end()) {
      KernelSpec resolved = spec;
      resolved.shape = shape;
      plan.variants.push_back(std::move(resolved));
      return static_cast<int>(plan.variants.size()) - 1;
    }
    return static_cast<int>(same - plan.variants.begin());
  };
  for (Regime r : kRegimes) {
    plan.variantOf[index(r)] = variantOf(shapes[index(r)]);
    if (r == Regime::FewTokens && fullSm)
      plan.fullSmVariant = variantOf(*fullSm);
  }
  return plan;
}

llvm::Expected<KernelSpec> Planner::resolve(const KernelSpec& spec, Regime regime) const {
  if (auto err = spec.validate())
    return std::move(err);
  KernelSpec resolved = spec;
  resolved.shape = shapeFor(spec, regime, archDefault(spec));
  return resolved;
}

llvm::Expected<KernelSpec> Planner::resolve(const KernelSpec& spec, Regime regime,
                                            const DeviceProfile& device) const {
  if (auto err = spec.validate())
    return std::move(err);
  KernelSpec resolved = spec;
  resolved.shape = shapeFor(spec, regime, device);
  return resolved;
}

} // namespace bqjit
