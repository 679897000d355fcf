// `bqjit verify SPEC-FIELDS --tokens T`: runs the kernel on the GPU and
// compares its output with the CPU reference.
#include <CLI/CLI.hpp>

#include "tools/commands.hpp"
#include "tools/device_problem.hpp"
#include "tools/gpu_command.hpp"
#include "tools/spec_args.hpp"

namespace bqjit::cli {

llvm::Error runVerify(const GpuOptions& o, const CommandContext& ctx) {
  auto gpu = GpuCommand::open(o, ctx);
  if (!gpu)
    return gpu.takeError();
  auto kernel = gpu->service->getKernel(gpu->spec, gpu->session->device());
  if (!kernel)
    return kernel.takeError();
  auto host = makeHostProblem(kernel->spec(), o);
  if (!host)
    return host.takeError();
  auto device = DeviceProblem::create(*gpu->session, *host, 1);
  if (!device)
    return device.takeError();
  if (auto err = device->poison(0))
    return err;
  if (auto err = kernel->launch(device->args(0), nullptr))
    return err;
  auto report = device->check(0);
  if (!report)
    return report.takeError();

  const std::string what =
      kernel->specFor(o.tokens).label() + " T=" + std::to_string(o.tokens) +
      (o.experts > 1 ? " E=" + std::to_string(o.experts) : "") +
      (kernel->spec().isNvfp4() ? " global_scale=" + std::to_string(host->problem.globalScale)
                                : "") +
      " on " + gpu->session->info().name;
  ctx.out << "verify: " << (report->ok() ? "PASS " : "FAIL ") << what << ": " << report->summary()
          << "\n";
  if (report->ok())
    return llvm::Error::success();
  return makeError(ErrorCode::Internal, "verify: the kernel's output differs from the reference (" +
                                            what + "): " + report->firstMismatch);
}

void addVerifyCommand(CLI::App& app, Action& action) {
  auto options = std::make_shared<GpuOptions>();
  CLI::App* sub = app.add_subcommand(
      "verify", "Run a kernel on the GPU and compare it with the CPU reference (needs a GPU)");
  addGpuOptions(*sub, *options);
  setFooter(*sub, std::string(kSpecFieldsHelp) +
                      ". Without --arch (or arch=) the device's architecture is used. A result "
                      "that differs from the reference exits with status 1.");
  sub->callback([options, &action] {
    action = [options](const CommandContext& ctx) { return runVerify(*options, ctx); };
  });
}

} // namespace bqjit::cli
