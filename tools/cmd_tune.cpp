// `bqjit tune SPEC-FIELDS --tokens T`: times every candidate launch shape on
// the GPU and records the fastest correct one in the cache.
#include <algorithm>
#include <cstdio>

#include <CLI/CLI.hpp>

#include "cache/kernel_cache.hpp"
#include "planner/launch_heuristic.hpp"
#include "planner/planner.hpp"
#include "runtime/event_pairs.hpp"
#include "tools/commands.hpp"
#include "tools/device_problem.hpp"
#include "tools/gpu_command.hpp"
#include "tools/spec_args.hpp"

namespace bqjit::cli {

namespace {

// More than twice the L2 of any current GPU (H100/H200: 50 MB), so that by
// the time a buffer set comes round again its input has left L2.
constexpr int64_t kRotationBytes = int64_t(256) << 20;
constexpr int kWarmup = 3;

struct Candidate {
  LaunchShape shape;
  int registers = 0;
  double us = 0;
  std::string status; // "ok", or why it is out
  bool ok() const { return status == "ok"; }
};

// Median launch time in microseconds over the events' launches rotating
// among the buffer sets (continuing at `cursor`), after a short warm-up.
llvm::Expected<double> timeKernel(const Kernel& kernel, const DeviceProblem& device,
                                  const EventPairs& events, int64_t& cursor) {
  return events.medianMicros(nullptr, kWarmup, [&] {
    return kernel.launch(device.args(cursor++ % device.sets()), nullptr);
  });
}

// Compiles, checks and times one shape; failures become the row's status.
llvm::Expected<Candidate> tryShape(GpuCommand& gpu, const KernelSpec& base,
                                   const LaunchShape& shape, const DeviceProblem& device,
                                   const EventPairs& events, int64_t& cursor) {
  Candidate c;
  c.shape = shape;
  KernelSpec spec = base;
  spec.shape = shape;
  auto kernel = gpu.service->getKernel(spec, gpu.session->device());
  if (!kernel) {
    std::string message;
    const ErrorCode code = consumeError(kernel.takeError(), &message);
    // Only a compile failure is the candidate's own problem; the rest ends the run.
    if (code != ErrorCode::CompileFailed)
      return makeError(code, message);
    c.status = "COMPILE FAILED: " + firstLine(message);
    return c;
  }
  c.registers = kernel->compiled().resources.registers;
  if (auto err = device.poison(0))
    return err;
  if (auto err = kernel->launch(device.args(0), nullptr))
    return err;
  auto report = device.check(0);
  if (!report)
    return report.takeError();
  if (!report->ok()) {
    c.status = "WRONG: " + report->firstMismatch;
    return c;
  }
  auto us = timeKernel(*kernel, device, events, cursor);
  if (!us)
    return us.takeError();
  c.us = *us;
  c.status = "ok";
  return c;
}

void printRow(std::ostream& os, size_t index, const Candidate& c, int64_t bytes) {
  char line[160];
  if (c.ok())
    std::snprintf(line, sizeof line, "%3zu  %-22s %7d %5d %10.2f %9.1f  ok%s", index,
                  c.shape.label().c_str(), c.shape.threadsPerBlock(), c.registers, c.us,
                  static_cast<double>(bytes) / (c.us * 1e3), index == 0 ? " (heuristic)" : "");
  else
    std::snprintf(line, sizeof line, "%3zu  %-22s %7d %5d %10s %9s  ", index,
                  c.shape.label().c_str(), c.shape.threadsPerBlock(), c.registers, "-", "-");
  os << line << (c.ok() ? "" : c.status) << std::endl;
}

} // namespace

llvm::Error runTune(const GpuOptions& o, const CommandContext& ctx) {
  auto gpu = GpuCommand::open(o, ctx);
  if (!gpu)
    return gpu.takeError();
  if (gpu->shapeGiven)
    return makeError(ErrorCode::InvalidArgument,
                     "tune picks the launch shape itself; drop threads_per_group, vec_width and "
                     "groups_per_block from the spec");
  const KernelSpec& base = gpu->spec;
  auto host = makeHostProblem(base, o);
  if (!host)
    return host.takeError();
  const int64_t setBytes = host->xBytes() + host->qBytes() + host->scaleBytes();
  const int64_t sets = std::max<int64_t>(2, (kRotationBytes + setBytes - 1) / setBytes);
  auto device = DeviceProblem::create(*gpu->session, *host, sets);
  if (!device)
    return device.takeError();
  EventPairs events(gpu->session->driver());
  if (auto err = events.create(o.iters))
    return err;

  // The record serves launches of the same regime as the tuned token count,
  // and the heuristic's shape for that regime is the one to beat.
  const Regime regime = regimeFor(o.tokens * base.hidden);
  const DeviceProfile profile = gpu->session->info().profile();
  const std::vector<LaunchShape> shapes = candidateShapes(base, regime, profile);
  const int64_t bytes = host->trafficBytes();
  ctx.out << "tune: " << base.label() << " T=" << o.tokens << " on " << gpu->session->info().name
          << ": " << shapes.size() << " shapes, median of " << o.iters << " launches, rotating "
          << sets << " buffer sets (" << humanBytes(uint64_t(sets * setBytes)) << "), " << bytes
          << " bytes per launch\n";
  char header[160];
  std::snprintf(header, sizeof header, "%3s  %-22s %7s %5s %10s %9s  %s", "#", "shape", "threads",
                "regs", "us", "GB/s", "status");
  ctx.out << header << "\n";

  std::vector<Candidate> results;
  int64_t cursor = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    auto c = tryShape(*gpu, base, shapes[i], *device, events, cursor);
    if (!c)
      return c.takeError();
    printRow(ctx.out, i, *c, bytes);
    results.push_back(std::move(*c));
  }

  const Candidate* best = nullptr;
  std::vector<std::string> broken;
  for (const Candidate& c : results) {
    if (!c.ok())
      broken.push_back(c.shape.label() + ": " + c.status);
    else if (!best || c.us < best->us)
      best = &c;
  }
  if (!best)
    return makeError(ErrorCode::Internal,
                     "tune: no candidate shape gave correct results; first: " + broken.front());
  if (auto err = gpu->service->planner().tuning().store(base, best->shape, regime, profile))
    return err;
  char line[200];
  std::snprintf(line, sizeof line, "tune: best %s at %.2f us (%.1f GB/s)",
                best->shape.label().c_str(), best->us,
                static_cast<double>(bytes) / (best->us * 1e3));
  ctx.out << line;
  if (results.front().ok() && best != &results.front())
    ctx.out << ", " << static_cast<int>(100.0 * (results.front().us / best->us - 1.0) + 0.5)
            << "% faster than the heuristic's " << results.front().shape.label();
  ctx.out << "; stored for " << base.label() << " (" << regimeName(regime) << " launches on "
          << profile.slug() << ")\n";
  if (!broken.empty())
    return makeError(ErrorCode::Internal,
                     "tune: " + std::to_string(broken.size()) +
                         " candidate shape(s) failed (a kernel bug; the winner above is "
                         "verified): " +
                         broken.front());
  return llvm::Error::success();
}

void addTuneCommand(CLI::App& app, Action& action) {
  auto options = std::make_shared<GpuOptions>();
  CLI::App* sub = app.add_subcommand(
      "tune", "Time every candidate launch shape on the GPU and store the fastest (needs a GPU)");
  addGpuOptions(*sub, *options);
  sub->add_option("--iters", options->iters, "timed launches per shape (median reported)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  setFooter(*sub, std::string(kSpecFieldsHelp) +
                      ". Leave the launch shape out. Each shape is checked against the CPU "
                      "reference once, then timed with CUDA events, rotating among buffer sets "
                      "of over 256 MiB in all so that L2 never holds the input. The winner is "
                      "recorded in the cache and used for this spec from then on.");
  sub->callback([options, &action] {
    action = [options](const CommandContext& ctx) { return runTune(*options, ctx); };
  });
}

} // namespace bqjit::cli
