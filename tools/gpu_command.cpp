#include "tools/gpu_command.hpp"

#include <CLI/CLI.hpp>

#include "tools/spec_args.hpp"

namespace bqjit::cli {

llvm::Expected<GpuCommand> GpuCommand::open(const GpuOptions& o, const CommandContext& ctx) {
  auto args = parseSpecArgs(o.fields, o.arch);
  if (!args)
    return args.takeError();
  GpuCommand g;
  g.shapeGiven = args->shapeGiven;
  auto service = Service::create(ctx.config);
  if (!service)
    return service.takeError();
  g.service = std::move(*service);
  // The driver first: without one there is no point in compiling.
  auto driver = g.service->driver();
  if (!driver)
    return driver.takeError();
  auto session = GpuSession::open(*driver, o.device);
  if (!session)
    return session.takeError();
  g.session = std::move(*session);
  g.spec = args->spec;
  if (!args->archGiven) {
    auto forDevice = g.service->forDevice(g.spec, o.device);
    if (!forDevice)
      return forDevice.takeError();
    g.spec = std::move(*forDevice);
  }
  return g;
}

void addGpuOptions(CLI::App& sub, GpuOptions& o) {
  sub.add_option("SPEC-FIELDS", o.fields, "key=value fields of the spec")->required();
  sub.add_option("--arch", o.arch, "target architecture (default: the device's)");
  sub.add_option("-T,--tokens", o.tokens, "tokens T (T_max when masked)")
      ->required()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  sub.add_option("--ldx", o.ldx, "elements between rows of x (default: 2H)")->check(wholeNumber(0));
  sub.add_option("--experts", o.experts, "experts E of a masked spec")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(65535)));
  sub.add_option("--scale-ub", o.scaleUb, "*scale_ub for a spec with scale_ub=1")
      ->capture_default_str()
      ->check(positiveNumber());
  sub.add_option("--global-scale", o.globalScale,
                 "*global_scale of an NVFP4 spec (fp4_e2m1, G=16); default: 448 * 6 / amax of "
                 "the input's activations, as vLLM computes it")
      ->check(positiveNumber());
  sub.add_option("-d,--device", o.device, "CUDA device ordinal")
      ->capture_default_str()
      ->check(wholeNumber(0, INT32_MAX));
  sub.add_option("--seed", o.seed, "seed of the random input")->capture_default_str();
}

} // namespace bqjit::cli
