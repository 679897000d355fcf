// The subcommands of `bqjit`: each adds itself to the CLI11 app and, once
// chosen, leaves the Action main() runs. The run* functions do the work and
// may be called directly (tests).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <llvm/Support/Error.h>

#include "tools/cli_common.hpp"

namespace CLI {
class App;
} // namespace CLI

namespace bqjit::cli {

/// Options of `bqjit prewarm`.
struct PrewarmOptions {
  std::string manifest;
  std::vector<std::string> archs; ///< replaces the manifest's "archs" when not empty
  int jobs = 1;
  bool json = false;
  bool check = false; ///< only check that the cache holds every kernel
};

/// Options of `bqjit ptx`.
struct PtxOptions {
  std::vector<std::string> fields;
  std::string arch;
  std::string model;  ///< a GPU model of the offline table; empty: the arch's default
  int64_t tokens = 0; ///< show the variant a launch of T rows takes; 0: the many-token one
  bool json = false;
  bool noPtx = false;
};

/// Options of `bqjit verify` and `bqjit tune`.
struct GpuOptions {
  std::vector<std::string> fields;
  std::string arch;
  int64_t tokens = 0;
  int64_t ldx = 0; ///< 0: 2H
  int64_t experts = 1;
  float scaleUb = 0.01f;
  /// NVFP4's *global_scale; 0: vLLM's 448 * 6 / amax of the input's y.
  float globalScale = 0.0f;
  int device = 0;
  uint64_t seed = 1;
  int iters = 100;
};

/// Options of `bqjit bundle export`.
struct BundleExportOptions {
  std::string manifest;
  std::vector<std::string> archs;
  std::string output;
};

llvm::Error runBundleExport(const BundleExportOptions& options, const CommandContext& ctx);
llvm::Error runBundleImport(const std::string& path, const CommandContext& ctx);
llvm::Error runBundleList(const std::string& path, bool json, const CommandContext& ctx);
llvm::Error runPrewarm(const PrewarmOptions& options, const CommandContext& ctx);
llvm::Error runPtx(const PtxOptions& options, const CommandContext& ctx);
llvm::Error runVerify(const GpuOptions& options, const CommandContext& ctx);
llvm::Error runTune(const GpuOptions& options, const CommandContext& ctx);
llvm::Error runVersion(const CommandContext& ctx);

/// Each adds its subcommand to `app`; parsing it sets `action`.
void addPrewarmCommand(CLI::App& app, Action& action);
void addPtxCommand(CLI::App& app, Action& action);
void addCacheCommands(CLI::App& app, Action& action);
void addBundleCommands(CLI::App& app, Action& action);
void addVerifyCommand(CLI::App& app, Action& action);
void addTuneCommand(CLI::App& app, Action& action);
void addVersionCommand(CLI::App& app, Action& action);

} // namespace bqjit::cli
