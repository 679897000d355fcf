// The `bqjit` command: parses the command line, builds the Config once and
// runs the chosen subcommand.
#include <iostream>

#include <CLI/CLI.hpp>

#include "tools/cli_common.hpp"
#include "tools/commands.hpp"

namespace {

using namespace bqjit::cli;

int handleParseError(CLI::App& app, const CLI::ParseError& e) {
  // --help and --version are "errors" with status 0.
  if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success))
    return app.exit(e);
  std::cerr << "bqjit: error: " << e.what() << " (see --help)\n";
  return kExitUsage;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"bqjit: JIT-compiled fused silu(gate)*up + per-group FP8/INT8 quantization "
               "kernels, cached on disk",
               "bqjit"};
  app.require_subcommand(1);
  app.fallthrough();
  app.set_version_flag("--version", BQJIT_VERSION);
  std::string cacheDir;
  app.add_option("--cache-dir", cacheDir, "cache directory (default: BQJIT_CACHE_DIR)");
  setFooter(app);

  Action action;
  addPrewarmCommand(app, action);
  addPtxCommand(app, action);
  addCacheCommands(app, action);
  addVerifyCommand(app, action);
  addTuneCommand(app, action);
  addVersionCommand(app, action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return handleParseError(app, e);
  }

  auto config = bqjit::Config::fromEnvironment();
  if (!config)
    return reportError(config.takeError(), std::cerr);
  if (!cacheDir.empty())
    config->cacheDir = cacheDir;

  const CommandContext ctx{*config, std::cout, std::cerr};
  int status = kExitOther;
  if (!action)
    std::cerr << "bqjit: error: no command given (see --help)\n";
  else if (auto err = action(ctx))
    status = reportError(std::move(err), std::cerr);
  else
    status = kExitOk;
  std::cout.flush();
  return status;
}
