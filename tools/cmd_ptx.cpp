// `bqjit ptx SPEC-FIELDS`: the PTX of a kernel and what ptxas made of it.
#include <algorithm>
#include <cstdio>
#include <optional>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bqjit/service.hpp"
#include "cache/kernel_cache.hpp"
#include "core/json_input.hpp"
#include "planner/device_profile.hpp"
#include "planner/launch_grid.hpp"
#include "planner/launch_slots.hpp"
#include "planner/planner.hpp"
#include "tools/commands.hpp"
#include "tools/spec_args.hpp"

namespace bqjit::cli {

namespace {

std::string shapeText(const LaunchShape& s) {
  return "threads_per_group=" + std::to_string(s.threadsPerGroup) +
         " vec_width=" + std::to_string(s.vecWidth) +
         " groups_per_block=" + std::to_string(s.groupsPerBlock) + " (" +
         std::to_string(s.threadsPerBlock()) + " threads/block)";
}

void printReport(std::ostream& os, const CompiledKernel& k, KernelSource source) {
  const ResourceReport& r = k.resources;
  char ms[32];
  std::snprintf(ms, sizeof ms, "%.1f ms", k.compileMs);
  auto row = [&](const char* name, const std::string& value) {
    char head[24];
    std::snprintf(head, sizeof head, "%-15s", name);
    os << "// " << head << value << "\n";
  };
  os << "// ---- bqjit resource report ----\n";
  row("kernel:", k.spec.label());
  row("cache key:", k.key);
  row("lowered name:", k.loweredName);
  if (r.registers < 0) // PTX for a GPU newer than NVRTC (Compiler::ptxFallback)
    row("registers:", "unknown: the image is " +
                          k.options.front().substr(k.options.front().find('=') + 1) +
                          " PTX, compiled by the driver when it loads");
  else
    row("registers:", std::to_string(r.registers));
  row("spill stores:", std::to_string(r.spillStoreBytes) + " bytes");
  row("spill loads:", std::to_string(r.spillLoadBytes) + " bytes");
  row("stack frame:", std::to_string(r.stackFrameBytes) + " bytes");
  row("shared memory:", std::to_string(r.sharedBytes) + " bytes");
  row("barriers:", std::to_string(r.barriers));
  row("launch shape:", shapeText(*k.spec.shape));
  row("compile time:", std::string(ms) + " (NVRTC " + k.nvrtcVersion + ")");
  row("source:", toString(source));
}

nlohmann::json reportJson(const CompiledKernel& k, KernelSource source, bool withPtx) {
  const LaunchShape& s = *k.spec.shape;
  nlohmann::json j = {{"spec", k.spec.toJson()},
                      {"label", k.spec.label()},
                      {"key", k.key},
                      {"lowered_name", k.loweredName},
                      {"resources", k.resources.toJson()},
                      {"launch",
                       {{"threads_per_group", s.threadsPerGroup},
                        {"vec_width", s.vecWidth},
                        {"groups_per_block", s.groupsPerBlock},
                        {"threads_per_block", s.threadsPerBlock()}}},
                      {"compile_ms", k.compileMs},
                      {"nvrtc", k.nvrtcVersion},
                      {"options", k.options},
                      {"source", toString(source)}};
  if (withPtx)
    j["ptx"] = k.ptx;
  return j;
}

/// The launches of a plan by token count: runs of consecutive T that take
/// the same slot, in T order (the last run has no end).
struct LaunchRun {
  int64_t from = 0, to = 0; ///< to == 0: no end
  int slot = 0;
};

std::vector<LaunchRun> launchRuns(const LaunchPlan& plan) {
  const SlotChoice choice = plan.slotChoice();
  const int64_t h = choice.hidden;
  std::vector<int64_t> starts;
  for (Regime r : kRegimes)
    starts.push_back(regimeFirstTokens(r, h));
  for (int64_t t : {choice.manyTokensFrom, choice.fullSmFrom})
    if (t < INT64_MAX)
      starts.push_back(t);
  std::sort(starts.begin(), starts.end());
  starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
  std::vector<LaunchRun> runs;
  for (int64_t t : starts) {
    if (t < 1 || t > kMaxLaunchRows)
      continue;
    const int slot = choice.slotOf(t);
    if (!runs.empty() && runs.back().slot == slot)
      continue;
    if (!runs.empty())
      runs.back().to = t - 1;
    runs.push_back({t, 0, slot});
  }
  return runs;
}

std::string tokensText(const LaunchRun& r) {
  return "T " + std::to_string(r.from) + (r.to ? ".." + std::to_string(r.to) : "+");
}

} // namespace

llvm::Error runPtx(const PtxOptions& o, const CommandContext& ctx) {
  auto args = parseSpecArgs(o.fields, o.arch);
  if (!args)
    return args.takeError();
  std::optional<DeviceProfile> device;
  if (!o.model.empty()) {
    device = DeviceProfile::known(o.model);
    if (!device)
      return makeError(ErrorCode::InvalidArgument,
                       "--model '" + o.model +
                           "': not a known GPU model; known: " + DeviceProfile::knownModelList());
    if (!args->archGiven)
      args->spec.arch = device->arch.str();
  }
  auto service = Service::create(ctx.config);
  if (!service)
    return service.takeError();
  // One plan, for the device named (else the architecture's default): the
  // report is of the variant a launch of --tokens rows takes (else the
  // many-token regime's), and every launch's variant is named below.
  auto plan = device ? (*service)->planner().plan(args->spec, *device)
                     : (*service)->planner().plan(args->spec);
  if (!plan)
    return plan.takeError();
  const KernelSpec& shown =
      o.tokens > 0 ? plan->variantForTokens(o.tokens) : plan->variantFor(kDefaultRegime);
  auto got = (*service)->cache().getResolved(shown);
  if (!got)
    return got.takeError();
  const CompiledKernel& k = *got->kernel;
  const std::vector<LaunchRun> runs = launchRuns(*plan);
  const bool fullSmSpills = plan->fullSmVariant >= 0 &&
                            shown == plan->variants[plan->fullSmVariant] && k.resources.spills();
  if (o.json) {
    nlohmann::json j = reportJson(k, got->source, !o.noPtx);
    j["device"] = device ? device->model : "";
    nlohmann::json launches = nlohmann::json::array();
    for (const LaunchRun& r : runs) {
      const LaunchShape& s = *plan->variants[plan->variantOfSlot(r.slot)].shape;
      nlohmann::json run = {
          {"tokens_from", r.from}, {"slot", slotName(r.slot)}, {"launch", s.toJson()}};
      run["tokens_to"] = r.to ? nlohmann::json(r.to) : nlohmann::json(nullptr);
      launches.push_back(std::move(run));
    }
    j["launches"] = std::move(launches);
    ctx.out << jsonText(j, 2) << "\n";
    return llvm::Error::success();
  }
  if (!o.noPtx) {
    ctx.out << k.ptx;
    if (!k.ptx.empty() && k.ptx.back() != '\n')
      ctx.out << "\n";
  }
  printReport(ctx.out, k, got->source);
  if (fullSmSpills)
    ctx.out << "// (it spills under its full-SM promise: the service gives these launches the "
               "few-token shape)\n";
  // Which variant each launch takes, so that any one's PTX is one command
  // away.
  ctx.out << "// launches" << (device ? " on " + device->model : "")
          << ", by T (H = " << shown.hidden << "):\n";
  for (const LaunchRun& r : runs) {
    const LaunchShape& s = *plan->variants[plan->variantOfSlot(r.slot)].shape;
    ctx.out << "//   " << tokensText(r) << ": " << slotName(r.slot) << ", tpg=" << s.threadsPerGroup
            << " vec=" << s.vecWidth << " gpb=" << s.groupsPerBlock << " mbs=" << s.minBlocksPerSm
            << (s == *shown.shape ? " (this report)" : "") << "\n";
  }
  return llvm::Error::success();
}

void addPtxCommand(CLI::App& app, Action& action) {
  auto options = std::make_shared<PtxOptions>();
  CLI::App* sub = app.add_subcommand(
      "ptx", "Compile (or load from the cache) a kernel; print its PTX and resource report");
  sub->add_option("SPEC-FIELDS", options->fields, "key=value fields of the spec")->required();
  sub->add_option("--arch", options->arch, "target architecture (default: arch= or sm_90)");
  sub->add_option("--model", options->model,
                  "plan for this GPU model of the offline table (e.g. \"H200\"); its arch "
                  "unless one is given");
  sub->add_option("-T,--tokens", options->tokens,
                  "report the variant a launch of this many rows takes (default: the "
                  "many-token regime's)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 40));
  sub->add_flag("--json", options->json, "print one JSON object (PTX included)");
  sub->add_flag("--no-ptx", options->noPtx, "leave the PTX out");
  setFooter(*sub, kSpecFieldsHelp);
  sub->callback([options, &action] {
    action = [options](const CommandContext& ctx) { return runPtx(*options, ctx); };
  });
}

} // namespace bqjit::cli
