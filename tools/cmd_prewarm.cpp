// `bqjit prewarm MANIFEST.json`: compiles every spec x arch of a manifest
// into the disk cache with N worker threads sharing one KernelCache.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bqjit/service.hpp"
#include "cache/kernel_cache.hpp"
#include "core/fs_util.hpp"
#include "core/json_input.hpp"
#include "planner/planner.hpp"
#include "tools/commands.hpp"
#include "tools/manifest.hpp"

namespace bqjit::cli {

namespace {

enum class ItemStatus { Compiled, Cached, Failed };

struct ItemResult {
  ItemStatus status = ItemStatus::Failed;
  double ms = 0;
  std::string key;
  ErrorCode code = ErrorCode::Internal;
  std::string message;
};

const char* statusName(ItemStatus s) {
  switch (s) {
  case ItemStatus::Compiled:
    return "compiled";
  case ItemStatus::Cached:
    return "cached";
  case ItemStatus::Failed:
    return "failed";
  }
  return "?";
}

double msSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

ItemResult prewarmOne(const Planner& planner, KernelCache& cache, const ManifestItem& item) {
  ItemResult r;
  const auto start = std::chrono::steady_clock::now();
  // Every shape a launch of the spec may pick on the item's device, one per regime.
  auto plan = planner.plan(item.spec, item.device);
  if (!plan) {
    r.code = consumeError(plan.takeError(), &r.message);
    r.ms = msSince(start);
    return r;
  }
  r.status = ItemStatus::Cached;
  const int reported = plan->variantOf[index(kDefaultRegime)];
  for (size_t i = 0; i < plan->variants.size(); ++i) {
    auto got = cache.getResolved(plan->variants[i]);
    if (!got) {
      r.code = consumeError(got.takeError(), &r.message);
      r.status = ItemStatus::Failed;
      break;
    }
    if (static_cast<int>(i) == reported)
      r.key = got->kernel->key;
    // Prewarm exists to fill the disk: a kernel that is only in memory failed.
    const std::string entry = cache.disk()->entryDir(got->kernel->key);
    if (!got->notStored.empty() || !fs::exists(entry)) {
      r.code = ErrorCode::CacheError;
      r.message = "compiled " + plan->variants[i].label() + " but did not store it in the cache (" +
                  (got->notStored.empty() ? "no entry at '" + entry + "'" : got->notStored) + ")";
      r.status = ItemStatus::Failed;
      break;
    }
    if (got->source == KernelSource::Compiled)
      r.status = ItemStatus::Compiled;
  }
  r.ms = msSince(start);
  return r;
}

/// What `--check` found of one manifest item: the variants absent or bad.
struct CheckResult {
  std::vector<std::string> missing; ///< "<label> (key <key>): <why>"
  ErrorCode code = ErrorCode::NotInCache;
};

CheckResult checkOne(const Planner& planner, const Compiler& compiler, const DiskCache& disk,
                     const ManifestItem& item) {
  CheckResult r;
  auto plan = planner.plan(item.spec, item.device);
  if (!plan) {
    std::string message;
    r.code = consumeError(plan.takeError(), &message);
    r.missing.push_back(item.label() + ": " + message);
    return r;
  }
  for (const KernelSpec& v : plan->variants) {
    auto id = compiler.identify(v);
    if (!id) {
      r.missing.push_back(v.label() + ": " + consumeToString(id.takeError()));
      continue;
    }
    if (!fs::exists(disk.entryDir(id->key)))
      r.missing.push_back(v.label() + " (key " + id->key + "): not in the cache");
    else if (auto problem = disk.problemOf(id->key, nullptr))
      r.missing.push_back(v.label() + " (key " + id->key + "): " + *problem);
  }
  return r;
}

/// `prewarm --check`: whether the cache holds every kernel of the manifest,
/// reading only (no directory, lock, journal line or entry is written).
llvm::Error runCheck(const PrewarmOptions& o, const Manifest& manifest, const CommandContext& ctx) {
  auto compiler = Compiler::create();
  if (!compiler)
    return compiler.takeError();
  const Planner planner(ctx.config, compiler->codeIdentity());
  const DiskCache disk(ctx.config.cacheDir, ctx.config);
  if (!fs::exists(disk.root()))
    return makeError(ErrorCode::NotInCache, "check: the cache '" + ctx.config.cacheDir +
                                                "' holds no kernels (no " + disk.root() + ")");
  const size_t total = manifest.items.size();
  size_t complete = 0;
  nlohmann::json items = nlohmann::json::array();
  std::vector<std::string> missing;
  for (size_t i = 0; i < total; ++i) {
    const ManifestItem& item = manifest.items[i];
    CheckResult r = checkOne(planner, *compiler, disk, item);
    complete += r.missing.empty();
    items.push_back({{"label", item.label()},
                     {"spec", item.spec.toJson()},
                     {"device", item.device.slug()},
                     {"present", r.missing.empty()},
                     {"missing", r.missing}});
    if (!o.json)
      ctx.err << "[" << i + 1 << "/" << total << "] "
              << (r.missing.empty() ? "present " : "MISSING ") << item.label() << "\n";
    for (auto& m : r.missing)
      missing.push_back(std::move(m));
  }
  if (o.json)
    ctx.out << jsonText(nlohmann::json({{"manifest", manifest.path},
                                        {"cache", ctx.config.cacheDir},
                                        {"complete", complete},
                                        {"incomplete", total - complete},
                                        {"missing", missing},
                                        {"items", std::move(items)}}),
                        2)
            << "\n";
  else
    ctx.out << "check: " << complete << " of " << total << " kernel(s) complete in "
            << ctx.config.cacheDir << "\n";
  ctx.out.flush();
  if (missing.empty())
    return llvm::Error::success();
  std::string list;
  for (size_t i = 0; i < missing.size() && i < 20; ++i)
    list += "\n  " + missing[i];
  if (missing.size() > 20)
    list += "\n  ... and " + std::to_string(missing.size() - 20) + " more";
  return makeError(ErrorCode::NotInCache, "check: " + std::to_string(total - complete) + " of " +
                                              std::to_string(total) +
                                              " kernel(s) incomplete; missing:" + list);
}

std::string progressLine(size_t done, size_t total, const ManifestItem& item, const ItemResult& r) {
  std::string line = "[" + std::to_string(done) + "/" + std::to_string(total) + "] ";
  if (r.status == ItemStatus::Failed)
    return line + "FAILED " + item.label() + ": " + firstLine(r.message);
  char ms[32];
  std::snprintf(ms, sizeof ms, "%.0f", r.ms);
  return line + statusName(r.status) + " " + item.label() + " (" + ms + " ms)";
}

nlohmann::json toJson(const Manifest& m, const std::vector<ItemResult>& results, double seconds) {
  nlohmann::json items = nlohmann::json::array();
  int64_t counts[3] = {0, 0, 0};
  for (size_t i = 0; i < results.size(); ++i) {
    const ItemResult& r = results[i];
    ++counts[static_cast<int>(r.status)];
    nlohmann::json item = {{"label", m.items[i].label()},
                           {"spec", m.items[i].spec.toJson()},
                           {"device", m.items[i].device.slug()},
                           {"status", statusName(r.status)},
                           {"ms", r.ms}};
    if (r.status == ItemStatus::Failed)
      item["error"] = {{"code", errorCodeName(r.code)}, {"message", r.message}};
    else
      item["key"] = r.key;
    items.push_back(std::move(item));
  }
  return {{"manifest", m.path},       {"compiled", counts[0]},      {"cached", counts[1]},
          {"failed", counts[2]},      {"duplicates", m.duplicates}, {"seconds", seconds},
          {"items", std::move(items)}};
}

} // namespace

llvm::Error runPrewarm(const PrewarmOptions& o, const CommandContext& ctx) {
  auto manifest = loadManifest(o.manifest, o.archs);
  if (!manifest)
    return manifest.takeError();
  if (auto err = requireCacheDir(ctx.config))
    return err;
  if (o.check)
    return runCheck(o, *manifest, ctx);
  auto service = Service::create(ctx.config);
  if (!service)
    return service.takeError();
  KernelCache& cache = (*service)->cache();
  const Planner& planner = (*service)->planner();
  // Fail up front rather than "compile" into memory only.
  if (!cache.diskRefusal().empty())
    return makeError(ErrorCode::CacheError, cache.diskRefusal());
  if (auto err = cache.disk()->prepare())
    return err;

  const std::vector<ManifestItem>& items = manifest->items;
  const size_t total = items.size();
  const size_t jobs = std::max<size_t>(1, std::min<size_t>(o.jobs, total));
  ctx.err << "prewarm: " << total << " kernel(s) from " << o.manifest << " into "
          << ctx.config.cacheDir << " with " << jobs << " job(s)";
  if (manifest->duplicates > 0)
    ctx.err << " (" << manifest->duplicates << " duplicate entr"
            << (manifest->duplicates == 1 ? "y" : "ies") << " skipped)";
  ctx.err << "\n";

  std::vector<ItemResult> results(total);
  std::atomic<size_t> next{0};
  std::mutex printMutex;
  size_t done = 0;
  auto worker = [&] {
    for (size_t i = next++; i < total; i = next++) {
      results[i] = prewarmOne(planner, cache, items[i]);
      std::lock_guard<std::mutex> lock(printMutex);
      ctx.err << progressLine(++done, total, items[i], results[i]) << std::endl;
    }
  };
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (size_t t = 1; t < jobs; ++t)
    threads.emplace_back(worker);
  worker();
  for (auto& t : threads)
    t.join();
  const double seconds = msSince(start) / 1000.0;

  nlohmann::json summary = toJson(*manifest, results, seconds);
  if (o.json) {
    ctx.out << jsonText(summary, 2) << "\n";
  } else {
    char line[160];
    std::snprintf(line, sizeof line,
                  "prewarm: %lld compiled, %lld already cached, %lld failed in "
                  "%.1f s",
                  summary["compiled"].get<long long>(), summary["cached"].get<long long>(),
                  summary["failed"].get<long long>(), seconds);
    ctx.out << line << "\n";
  }
  ctx.out.flush();

  const int64_t failed = summary["failed"].get<int64_t>();
  for (size_t i = 0; i < total; ++i)
    if (results[i].status == ItemStatus::Failed)
      return makeError(results[i].code, "prewarm: " + std::to_string(failed) + " of " +
                                            std::to_string(total) +
                                            " kernel(s) failed; first: " + items[i].label() + ": " +
                                            firstLine(results[i].message));
  return llvm::Error::success();
}

void addPrewarmCommand(CLI::App& app, Action& action) {
  auto options = std::make_shared<PrewarmOptions>();
  options->jobs = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  CLI::App* sub =
      app.add_subcommand("prewarm", "Compile every spec x arch of a manifest into the disk cache");
  sub->add_option("MANIFEST", options->manifest, "manifest JSON file")->required();
  sub->add_option("--arch", options->archs,
                  "architecture(s) to compile for, replacing the manifest's \"archs\" "
                  "(repeat or comma-separate: --arch sm_90,sm_100)")
      ->delimiter(',')
      ->allow_extra_args(false);
  sub->add_option("-j,--jobs", options->jobs, "worker threads (default: CPU count)")
      ->check(CLI::Range(1, 1024));
  sub->add_flag("--json", options->json, "print the summary as JSON on stdout");
  sub->add_flag("--check", options->check,
                "compile nothing and write nothing: exit 0 when the cache holds every kernel "
                "of the manifest, else list the missing ones (exit 6)");
  setFooter(
      *sub,
      "Manifest: {\"archs\": [\"sm_90\"], \"devices\": [\"H200\"], \"defaults\": {spec fields}, "
      "\"specs\": [{spec}, "
      "...], \"comment\": \"...\"}. Each spec is a KernelSpec JSON object (hidden, "
      "group_size, in_dtype, out_dtype, scale_layout, ue8m0, scale_ub, masked, arch, "
      "launch, activation, alpha, beta, limit, gate_up, scale_rounding, min_scale) over "
      "\"defaults\"; "
      "one naming \"arch\" is built for that arch only, the "
      "others for every entry of \"archs\" (that architecture's default launch shapes) and of "
      "\"devices\" (a GPU model's launch shapes, on its architecture). Progress goes to stderr, "
      "the summary to stdout.");
  sub->callback([options, &action] {
    action = [options](const CommandContext& ctx) { return runPrewarm(*options, ctx); };
  });
}

} // namespace bqjit::cli
