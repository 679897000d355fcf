// `bqjit ptx SPEC-FIELDS`: the PTX of a kernel and what ptxas made of it.
#include <cstdio>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bqjit/service.hpp"
#include "cache/kernel_cache.hpp"
#include "core/json_input.hpp"
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

} // namespace

llvm::Error runPtx(const PtxOptions& o, const CommandContext& ctx) {
  auto args = parseSpecArgs(o.fields, o.arch);
  if (!args)
    return args.takeError();
  auto service = Service::create(ctx.config);
  if (!service)
    return service.takeError();
  // One plan: the report is of the default regime's shape, and the others
  // are named below.
  auto plan = (*service)->planner().plan(args->spec);
  if (!plan)
    return plan.takeError();
  const KernelSpec& shown = plan->variantFor(kDefaultRegime);
  auto got = (*service)->cache().getResolved(shown);
  if (!got)
    return got.takeError();
  const CompiledKernel& k = *got->kernel;
  if (o.json) {
    ctx.out << jsonText(reportJson(k, got->source, !o.noPtx), 2) << "\n";
    return llvm::Error::success();
  }
  if (!o.noPtx) {
    ctx.out << k.ptx;
    if (!k.ptx.empty() && k.ptx.back() != '\n')
      ctx.out << "\n";
  }
  printReport(ctx.out, k, got->source);
  // Say which shapes the other regimes' launches take, so that their PTX is
  // one command away.
  for (Regime regime : kRegimes) {
    const LaunchShape& s = *plan->variantFor(regime).shape;
    if (s == *shown.shape)
      continue;
    ctx.out << "// " << regimeName(regime) << ": launches with T x H ";
    if (regime == kRegimes.back())
      ctx.out << "> " << regimeMinElements(regime) - 1;
    else
      ctx.out << "<= " << regimeMaxElements(regime);
    ctx.out << " use tpg=" << s.threadsPerGroup << " vec=" << s.vecWidth
            << " gpb=" << s.groupsPerBlock << " mbs=" << s.minBlocksPerSm
            << " (give these fields to see that kernel)\n";
  }
  if (plan->fullSmVariant >= 0) {
    const LaunchShape& s = *plan->variants[plan->fullSmVariant].shape;
    ctx.out << "// few-token launches of T >= " << plan->fullSmFrom
            << " use tpg=" << s.threadsPerGroup << " vec=" << s.vecWidth
            << " gpb=" << s.groupsPerBlock << " mbs=" << s.minBlocksPerSm
            << " (the full-SM promise)\n";
  }
  return llvm::Error::success();
}

void addPtxCommand(CLI::App& app, Action& action) {
  auto options = std::make_shared<PtxOptions>();
  CLI::App* sub = app.add_subcommand(
      "ptx", "Compile (or load from the cache) a kernel; print its PTX and resource report");
  sub->add_option("SPEC-FIELDS", options->fields, "key=value fields of the spec")->required();
  sub->add_option("--arch", options->arch, "target architecture (default: arch= or sm_90)");
  sub->add_flag("--json", options->json, "print one JSON object (PTX included)");
  sub->add_flag("--no-ptx", options->noPtx, "leave the PTX out");
  setFooter(*sub, kSpecFieldsHelp);
  sub->callback([options, &action] {
    action = [options](const CommandContext& ctx) { return runPtx(*options, ctx); };
  });
}

} // namespace bqjit::cli
