// What `verify` and `tune` share: their options, and opening the service,
// the driver and the device for the spec on their command line.
#pragma once

#include <memory>

#include <llvm/Support/Error.h>

#include "bqjit/service.hpp"
#include "tools/commands.hpp"
#include "tools/gpu_session.hpp"

namespace bqjit::cli {

/// The service, the current device and the spec (arch set for the device).
/// Declare DeviceProblems after it: their buffers must go first.
struct GpuCommand {
  std::unique_ptr<Service> service;
  std::unique_ptr<GpuSession> session;
  KernelSpec spec;
  bool shapeGiven = false;

  /// Parses the spec, loads the driver (a NoDriver error without one),
  /// makes `--device` current and sets the arch from it unless one was given.
  static llvm::Expected<GpuCommand> open(const GpuOptions& options, const CommandContext& ctx);
};

/// Adds SPEC-FIELDS, --arch, --tokens, --ldx, --experts, --scale-ub,
/// --device and --seed to a subcommand.
void addGpuOptions(CLI::App& sub, GpuOptions& options);

} // namespace bqjit::cli
