// `bqjit version`: what this build is and what it targets.
#include <CLI/CLI.hpp>

#include "core/version.hpp"
#include "jit/cache_key.hpp"
#include "jit/toolchain.hpp"
#include "tools/commands.hpp"

namespace bqjit::cli {

llvm::Error runVersion(const CommandContext& ctx) {
  ctx.out << "bqjit " << versionString() << "\n";
  // The cache's own version: it changes when entries of older builds can no
  // longer be used, not with each release.
  ctx.out << "cache format " << kCacheFormatVersion << "\n";
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
