#include "planner/planner.hpp"

#include <algorithm>

#include "planner/launch_heuristic.hpp"

namespace bqjit {

namespace {

std::string tuningDirectory(const Config& config) {
  return config.cacheDir.empty() ? "" : config.cacheDir + "/" + kCacheLayoutDir + "/tuned";
}

/// The default device of a validated spec's architecture.
DeviceProfile archDefault(const KernelSpec& spec) {
  auto arch = Arch::parse(spec.arch);
  if (!arch) {
    llvm::consumeError(arch.takeError()); // validated: cannot happen
    return DeviceProfile::reference();
  }
  return DeviceProfile::forArch(*arch);
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
  for (Regime r : kRegimes) {
    KernelSpec resolved = spec;
    resolved.shape = shapeFor(spec, r, device, &plan.fromHeuristic[index(r)]);
    auto same = std::find_if(plan.variants.begin(), plan.variants.end(),
                             [&](const KernelSpec& v) { return v.shape == resolved.shape; });
    plan.variantOf[index(r)] = static_cast<int>(same - plan.variants.begin());
    if (same == plan.variants.end())
      plan.variants.push_back(std::move(resolved));
  }
  // Only between the heuristic's own shapes: a tuning record of a regime
  // below many tokens is not overruled.
  if (plan.fromHeuristic[index(Regime::VeryFewTokens)] &&
      plan.fromHeuristic[index(Regime::FewTokens)] && plan.fromHeuristic[index(Regime::ManyTokens)])
    if (auto from = manyTeamsFromTokens(spec, *plan.variantFor(Regime::FewTokens).shape,
                                        *plan.variantFor(Regime::ManyTokens).shape, device))
      plan.manyTokensFrom = *from;
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
