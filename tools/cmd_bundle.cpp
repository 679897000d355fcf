// `bqjit bundle export|import|ls`: every kernel of a manifest in one signed
// file (cache/bundle.hpp), for container images and air-gapped machines.
#include <set>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bqjit/service.hpp"
#include "cache/bundle.hpp"
#include "cache/kernel_cache.hpp"
#include "core/fs_util.hpp"
#include "core/json_input.hpp"
#include "planner/planner.hpp"
#include "tools/commands.hpp"
#include "tools/manifest.hpp"

namespace bqjit::cli {

llvm::Error runBundleExport(const BundleExportOptions& o, const CommandContext& ctx) {
  auto manifest = loadManifest(o.manifest, o.archs);
  if (!manifest)
    return manifest.takeError();
  auto auth = Authenticator::fromConfig(ctx.config, "bundle export");
  if (!auth)
    return auth.takeError();
  auto service = Service::create(ctx.config);
  if (!service)
    return service.takeError();
  KernelCache& cache = (*service)->cache();
  const Planner& planner = (*service)->planner();
  std::vector<BundleItem> items;
  std::set<std::string> keys;
  int compiled = 0;
  for (const ManifestItem& item : manifest->items) {
    auto plan = planner.plan(item.spec, item.device);
    if (!plan)
      return plan.takeError();
    for (const KernelSpec& variant : plan->variants) {
      auto id = cache.compiler().identify(variant);
      if (!id)
        return id.takeError();
      if (!keys.insert(id->key).second)
        continue;
      auto got = cache.get(*id);
      if (!got)
        return got.takeError();
      compiled += got->source == KernelSource::Compiled;
      items.push_back({*got->kernel, id->keyText});
    }
  }
  const std::string bytes = writeBundle(items, *auth);
  if (auto err = fs::replaceFile(o.output, bytes.data(), bytes.size()))
    return err;
  ctx.out << "bundle export: " << items.size() << " kernel(s) (" << compiled << " compiled, "
          << items.size() - compiled << " from the cache) of " << manifest->items.size()
          << " spec(s) to " << o.output << " (" << humanBytes(bytes.size()) << ", "
          << (auth->secret ? "signed" : "UNSIGNED: BQJIT_INSECURE_UNSIGNED=1") << ")\n";
  return llvm::Error::success();
}

namespace {

llvm::Expected<BundleContents> readBundleFile(const std::string& path, const Config& config,
                                              const std::string& what) {
  auto auth = Authenticator::fromConfig(config, what);
  if (!auth)
    return auth.takeError();
  auto bytes = fs::readFile(path);
  if (!bytes)
    return bytes.takeError();
  auto contents = readBundle(llvm::StringRef(bytes->data(), bytes->size()), *auth);
  if (!contents)
    return makeError(ErrorCode::CacheError,
                     "'" + path + "': " + consumeToString(contents.takeError()));
  return contents;
}

} // namespace

llvm::Error runBundleImport(const std::string& path, const CommandContext& ctx) {
  if (auto err = requireCacheDir(ctx.config))
    return err;
  // Everything is validated before any entry is written.
  auto contents = readBundleFile(path, ctx.config, "bundle import");
  if (!contents)
    return contents.takeError();
  auto compiler = Compiler::create();
  if (!compiler)
    return compiler.takeError();
  const std::string local = compiler->identity().toString();
  if (!contents->items.empty() && contents->nvrtc != local)
    return makeError(ErrorCode::CacheError,
                     "'" + path + "': bundle kernels were compiled by NVRTC " + contents->nvrtc +
                         ", this bqjit uses " + local + ": they would never be loaded");
  DiskCache disk(ctx.config.cacheDir, ctx.config);
  if (auto err = disk.checkLayout())
    return err;
  if (auto err = disk.prepare())
    return err;
  if (auto err = disk.checkTrust())
    return err;
  std::string refusal;
  auto remote = RemoteTier::create(ctx.config, &refusal);
  if (!refusal.empty())
    ctx.err << "bqjit: warning: " << refusal << "\n";
  size_t added = 0, present = 0, published = 0;
  for (const BundleItem& item : contents->items) {
    if (fs::exists(disk.entryDir(item.kernel.key)) && !disk.problemOf(item.kernel.key, nullptr)) {
      ++present;
    } else {
      llvm::consumeError(disk.remove(item.kernel.key));
      if (auto err = disk.publish(item.kernel, item.keyInputs))
        return err;
      ++added;
    }
    if (remote)
      published += remote->publish(item.kernel, item.keyInputs);
  }
  ctx.out << "bundle import: " << contents->items.size() << " kernel(s) from " << path << ": "
          << added << " added, " << present << " already in " << ctx.config.cacheDir;
  if (remote)
    ctx.out << "; " << published << " published to " << remote->shown();
  ctx.out << "\n";
  return llvm::Error::success();
}

llvm::Error runBundleList(const std::string& path, bool json, const CommandContext& ctx) {
  auto contents = readBundleFile(path, ctx.config, "bundle ls");
  if (!contents)
    return contents.takeError();
  if (json) {
    nlohmann::json entries = nlohmann::json::array();
    for (const BundleItem& item : contents->items)
      entries.push_back({{"key", item.kernel.key},
                         {"arch", item.kernel.spec.arch},
                         {"label", item.kernel.spec.label()},
                         {"cubin_bytes", item.kernel.cubin.size()}});
    ctx.out << jsonText(nlohmann::json({{"nvrtc", contents->nvrtc},
                                        {"cache_format", contents->cacheFormat},
                                        {"signed", contents->signedBundle},
                                        {"created_unix_ms", contents->createdUnixMs},
                                        {"entries", std::move(entries)}}),
                        2)
            << "\n";
    return llvm::Error::success();
  }
  for (const BundleItem& item : contents->items)
    ctx.out << item.kernel.key << "  " << humanBytes(item.kernel.cubin.size()) << "  "
            << item.kernel.spec.label() << "\n";
  ctx.out << "bundle: " << contents->items.size() << " kernel(s), NVRTC " << contents->nvrtc
          << ", cache format " << contents->cacheFormat << ", "
          << (contents->signedBundle ? "signed" : "unsigned") << ", created "
          << localTime(contents->createdUnixMs) << "\n";
  return llvm::Error::success();
}

void addBundleCommands(CLI::App& app, Action& action) {
  CLI::App* bundle =
      app.add_subcommand("bundle", "Kernels of a manifest in one signed file, and back");
  bundle->require_subcommand(1);
  setFooter(*bundle, "Bundles are signed with the fleet secret (BQJIT_CACHE_SECRET_FILE) and "
                     "verified whole before anything is written.");

  auto options = std::make_shared<BundleExportOptions>();
  CLI::App* ex = bundle->add_subcommand(
      "export", "Write every kernel of a manifest (compiling the missing ones) to one file");
  ex->add_option("MANIFEST", options->manifest, "manifest JSON file")->required();
  ex->add_option("--arch", options->archs,
                 "architecture(s), replacing the manifest's \"archs\" (repeat or "
                 "comma-separate)")
      ->delimiter(',')
      ->allow_extra_args(false);
  ex->add_option("-o,--output", options->output, "the bundle file to write")->required();
  ex->callback([options, &action] {
    action = [options](const CommandContext& ctx) { return runBundleExport(*options, ctx); };
  });

  auto path = std::make_shared<std::string>();
  CLI::App* im = bundle->add_subcommand(
      "import", "Validate a bundle whole, then add its kernels to the cache (and the remote)");
  im->add_option("FILE", *path, "bundle file")->required();
  im->callback([path, &action] {
    action = [path](const CommandContext& ctx) { return runBundleImport(*path, ctx); };
  });

  auto json = std::make_shared<bool>(false);
  CLI::App* ls = bundle->add_subcommand("ls", "Validate a bundle and list its kernels");
  ls->add_option("FILE", *path, "bundle file")->required();
  ls->add_flag("--json", *json, "print a JSON object");
  ls->callback([path, json, &action] {
    action = [path, json](const CommandContext& ctx) { return runBundleList(*path, *json, ctx); };
  });
  for (CLI::App* sub : {ex, im, ls})
    setFooter(*sub);
}

} // namespace bqjit::cli
