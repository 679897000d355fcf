// `bqjit version`: what this build is and what it targets.
#include <CLI/CLI.hpp>

#include "jit/toolchain.hpp"
#include "tools/commands.hpp"

#ifndef BQJIT_VERSION
#error "BQJIT_VERSION must be defined by the build (tools/CMakeLists.txt)"
#endif

namespace bqjit::cli {

llvm::Error runVersion(const CommandContext& ctx) {
  ctx.out << "bqjit " << BQJIT_VERSION << "\n";
  auto nvrtc = queryNvrtcIdentity();
  if (!nvrtc)
    return nvrtc.takeError();
  ctx.out << "NVRTC " << nvrtc->toString() << "\n";
  ctx.out << "archs:";
  for (int arch : nvrtcSupportedArchs())
    if (arch >= 80)
      ctx.out << " sm_" << arch;
  ctx.out << " (those NVRTC supports from sm_80 on; suffixes a/f allowed)\n";
  ctx.out << "cache: " << (ctx.config.cacheDir.empty() ? "(none)" : ctx.config.cacheDir);
  if (ctx.config.maxCacheBytes > 0)
    ctx.out << " (limit " << ctx.config.maxCacheBytes << " bytes)";
  ctx.out << "\n";
  return llvm::Error::success();
}

void addVersionCommand(CLI::App& app, Action& action) {
  CLI::App* sub = app.add_subcommand("version", "Print versions, supported archs, cache dir");
  setFooter(*sub);
  sub->callback([&action] { action = runVersion; });
}

} // namespace bqjit::cli
