// The `bqjit` command: parses the command line, builds the Config once and
// runs the chosen subcommand.
#include <exception>
#include <iostream>

#include <CLI/CLI.hpp>

#include "core/json_input.hpp"
#include "core/version.hpp"
#include "tools/cli_common.hpp"
#include "tools/commands.hpp"

namespace {

using namespace bqjit::cli;

// "bqjit bogus", "bqjit cache foo" or a bare "bqjit cache": CLI11 only
// says that a subcommand is required. The message names the word, the
// command it was given to and the commands that one has; "" when the error
// is another one.
std::string missingOrUnknownCommand(CLI::App& app) {
  CLI::App* at = &app; // the innermost command the line selected
  for (auto chosen = at->get_subcommands(); !chosen.empty(); chosen = at->get_subcommands())
    at = chosen.back();
  if (at->get_require_subcommand_min() == 0)
    return "";
  std::string command = "bqjit";
  for (const CLI::App* c = at; c != &app; c = c->get_parent())
    command.insert(5, " " + c->get_name());
  std::string known;
  for (const CLI::App* sub : at->get_subcommands([](CLI::App*) { return true; }))
    known += (known.empty() ? "" : ", ") + sub->get_name();
  // A word a subcommand does not take falls through to the app (fallthrough()).
  const std::vector<std::string> extra = app.remaining(/*recurse=*/true);
  if (extra.empty())
    return "'" + command + "' needs a command, one of: " + known + " (see " + command + " --help)";
  const std::string word = bqjit::shownText(extra.front());
  if (!word.empty() && word[0] == '-')
    return "'" + command + "' has no option '" + word + "' (see " + command + " --help)";
  return "'" + word + "' is not a command of '" + command + "' (its commands: " + known + ")";
}

int handleParseError(CLI::App& app, const CLI::ParseError& e) {
  // --help and --version are "errors" with status 0.
  if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success))
    return app.exit(e);
  const bool aboutCommand = dynamic_cast<const CLI::RequiredError*>(&e) != nullptr ||
                            dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr;
  if (const std::string unknown = aboutCommand ? missingOrUnknownCommand(app) : "";
      !unknown.empty()) {
    std::cerr << "bqjit: error: " << unknown << "\n";
    return kExitUsage;
  }
  std::cerr << "bqjit: error: " << e.what() << " (see --help)\n";
  return kExitUsage;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"bqjit: JIT-compiled fused gated activation (silu, swiglu, gelu) + per-group "
               "FP8/INT8/FP4 quantization kernels, cached on disk",
               "bqjit"};
  app.require_subcommand(1);
  app.fallthrough();
  app.set_version_flag("--version", std::string(bqjit::versionString()));
  std::string cacheDir;
  app.add_option("--cache-dir", cacheDir, "cache directory (default: BQJIT_CACHE_DIR)");
  setFooter(app);

  Action action;
  addPrewarmCommand(app, action);
  addPtxCommand(app, action);
  addCacheCommands(app, action);
  addBundleCommands(app, action);
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
  if (!action) {
    std::cerr << "bqjit: error: no command given (see --help)\n";
  } else {
    // Commands report errors as values; an exception from a library they
    // call (an allocation, a JSON or filesystem call) is still one error
    // line and exit status 1, not an abort.
    try {
      if (auto err = action(ctx))
        status = reportError(std::move(err), std::cerr);
      else
        status = kExitOk;
    } catch (const std::exception& e) {
      std::cerr << "bqjit: error: unexpected failure: " << e.what() << "\n";
    }
  }
  std::cout.flush();
  return status;
}
