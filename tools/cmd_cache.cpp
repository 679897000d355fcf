// `bqjit cache ls|stats|verify|clear|gc|dir`: the disk cache, inspected and
// maintained without NVRTC or a GPU.
#include <cstdio>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cache/disk_cache.hpp"
#include "core/json_input.hpp"
#include "tools/commands.hpp"

namespace bqjit::cli {

namespace {

llvm::Error runList(const DiskCache& disk, bool json, const CommandContext& ctx) {
  const std::vector<EntryInfo> entries = disk.list();
  if (json) {
    nlohmann::json j = nlohmann::json::array();
    for (const EntryInfo& e : entries)
      j.push_back({{"key", e.key},
                   {"bytes", e.bytes},
                   {"last_use_ms", e.lastUseMs},
                   {"label", e.label},
                   {"valid", e.valid}});
    ctx.out << jsonText(j, 2) << "\n";
    return llvm::Error::success();
  }
  for (const EntryInfo& e : entries) {
    char size[24];
    std::snprintf(size, sizeof size, "%10s", humanBytes(e.bytes).c_str());
    ctx.out << e.key << "  " << size << "  " << localTime(e.lastUseMs) << "  "
            << (e.valid ? "" : "UNREADABLE: ") << firstLine(e.label) << "\n";
  }
  return llvm::Error::success();
}

llvm::Error runStats(const DiskCache& disk, bool json, const CommandContext& ctx) {
  const std::vector<EntryInfo> entries = disk.list();
  const CacheStats s = disk.journal().stats();
  uint64_t bytes = 0;
  int64_t unreadable = 0;
  for (const EntryInfo& e : entries) {
    bytes += e.bytes;
    unreadable += e.valid ? 0 : 1;
  }
  const uint64_t journalBytes = disk.journal().bytes();
  const double mean = s.compiles > 0 ? s.compileMsTotal / static_cast<double>(s.compiles) : 0.0;
  if (json) {
    ctx.out << jsonText(nlohmann::json({{"root", disk.root()},
                                        {"entries", entries.size()},
                                        {"unreadable", unreadable},
                                        {"bytes", bytes},
                                        {"journal_bytes", journalBytes},
                                        {"total_bytes", bytes + journalBytes},
                                        {"hits", s.hits},
                                        {"misses", s.misses},
                                        {"compiles", s.compiles},
                                        {"compile_ms_total", s.compileMsTotal},
                                        {"compile_ms_mean", mean},
                                        {"compile_ms_max", s.compileMsMax},
                                        {"evictions", s.evictions},
                                        {"corrupt", s.corrupt},
                                        {"remote_hits", s.remoteHits},
                                        {"remote_misses", s.remoteMisses},
                                        {"remote_publishes", s.remotePublishes},
                                        {"remote_errors", s.remoteErrors}}),
                        2)
            << "\n";
    return llvm::Error::success();
  }
  char ms[96];
  std::snprintf(ms, sizeof ms, "total %.1f, mean %.1f, max %.1f", s.compileMsTotal, mean,
                s.compileMsMax);
  ctx.out << "root:        " << disk.root() << "\n"
          << "entries:     " << entries.size();
  if (unreadable > 0)
    ctx.out << " (" << unreadable << " unreadable)";
  ctx.out << "\n"
          << "bytes:       " << bytes << " (" << humanBytes(bytes) << ")\n"
          << "journal:     " << journalBytes << " (" << humanBytes(journalBytes)
          << "; counted in the size limit)\n"
          << "hits:        " << s.hits << "\n"
          << "misses:      " << s.misses << "\n"
          << "compiles:    " << s.compiles << "\n"
          << "compile ms:  " << ms << "\n"
          << "evictions:   " << s.evictions << "\n"
          << "corrupt:     " << s.corrupt << "\n"
          << "remote:      " << s.remoteHits << " hits, " << s.remoteMisses << " misses, "
          << s.remotePublishes << " publishes, " << s.remoteErrors << " errors\n";
  return llvm::Error::success();
}

llvm::Error runVerifyCache(const DiskCache& disk, bool removeBad, const CommandContext& ctx) {
  // Who can write it first: a consistent entry from an untrusted writer is
  // as bad as a corrupt one.
  const std::vector<std::string> writers = disk.trustProblems();
  for (const std::string& problem : writers)
    ctx.out << "UNTRUSTED " << problem << "\n";
  const VerifyReport report = disk.verify();
  std::string keys;
  for (const std::string& problem : report.problems) {
    const std::string key = problem.substr(0, problem.find(':'));
    keys += (keys.empty() ? "" : ", ") + key;
    ctx.out << "BAD " << firstLine(problem) << "\n";
    if (removeBad) {
      if (auto err = disk.remove(key))
        return err;
      ctx.out << "removed " << key << "\n";
    }
  }
  ctx.out << "cache verify: " << report.checked << " entr" << (report.checked == 1 ? "y" : "ies")
          << " checked, " << report.bad << " bad" << (removeBad && report.bad ? " (removed)" : "")
          << "\n";
  if (!writers.empty())
    ctx.out << "cache verify: " << writers.size() << " path" << (writers.size() == 1 ? "" : "s")
            << " writable by someone untrusted: bqjit loads nothing from this cache until they "
               "are fixed\n";
  if (report.bad == 0 && writers.empty())
    return llvm::Error::success();
  if (report.bad == 0)
    return makeError(ErrorCode::CacheError,
                     "cache verify: " + std::to_string(writers.size()) +
                         " path(s) writable by someone untrusted; first: " + writers.front());
  return makeError(ErrorCode::CacheError,
                   "cache verify: " + std::to_string(report.bad) + " of " +
                       std::to_string(report.checked) + " entries are bad: " + keys +
                       (removeBad ? " (removed)" : " (--remove-bad deletes them)"));
}

llvm::Error runClear(const DiskCache& disk, const CommandContext& ctx) {
  const size_t count = disk.list().size();
  if (auto err = disk.clear())
    return err;
  ctx.out << "cache clear: removed " << count << " entr" << (count == 1 ? "y" : "ies") << " from "
          << disk.root() << "\n";
  return llvm::Error::success();
}

llvm::Error runGc(const DiskCache& disk, uint64_t maxBytes, const CommandContext& ctx) {
  auto evicted = disk.collectGarbage(maxBytes, "", EntryCheck::Full);
  if (!evicted)
    return evicted.takeError();
  for (const std::string& key : *evicted)
    ctx.out << key << "\n";
  uint64_t bytes = 0;
  for (const EntryInfo& e : disk.list())
    bytes += e.bytes;
  ctx.out << "cache gc: evicted " << evicted->size() << ", " << bytes << " bytes remain (limit "
          << (maxBytes > 0 ? std::to_string(maxBytes) : std::string("none")) << "); journal "
          << disk.journal().bytes() << " bytes"
          << (maxBytes > 0 ? ", counted in the limit\n" : "\n");
  return llvm::Error::success();
}

// Wraps a cache subcommand body: checks the directory, opens the disk layer.
template <typename Body> Action diskAction(Body body) {
  return [body](const CommandContext& ctx) -> llvm::Error {
    if (auto err = requireCacheDir(ctx.config))
      return err;
    DiskCache disk(ctx.config.cacheDir, ctx.config);
    if (auto err = disk.checkLayout())
      return err;
    return body(disk, ctx);
  };
}

} // namespace

void addCacheCommands(CLI::App& app, Action& action) {
  CLI::App* cache = app.add_subcommand("cache", "Inspect and maintain the disk cache");
  cache->require_subcommand(1);
  setFooter(*cache, "The cache directory is BQJIT_CACHE_DIR (else $XDG_CACHE_HOME/bqjit, else "
                    "~/.cache/bqjit), or --cache-dir.");

  auto json = std::make_shared<bool>(false);
  CLI::App* ls = cache->add_subcommand("ls", "One line per entry: key, size, last use, spec");
  ls->add_flag("--json", *json, "print a JSON array");
  ls->callback([json, &action] {
    action = diskAction(
        [json](const DiskCache& d, const CommandContext& c) { return runList(d, *json, c); });
  });

  CLI::App* stats = cache->add_subcommand("stats", "Entries, bytes and the journal's counters");
  stats->add_flag("--json", *json, "print a JSON object");
  stats->callback([json, &action] {
    action = diskAction(
        [json](const DiskCache& d, const CommandContext& c) { return runStats(d, *json, c); });
  });

  auto removeBad = std::make_shared<bool>(false);
  CLI::App* verify = cache->add_subcommand(
      "verify", "Check every entry's checksums, and who can write the cache (owners, modes)");
  verify->add_flag("--remove-bad", *removeBad, "delete the entries that fail");
  verify->callback([removeBad, &action] {
    action = diskAction([removeBad](const DiskCache& d, const CommandContext& c) {
      return runVerifyCache(d, *removeBad, c);
    });
  });

  CLI::App* clear = cache->add_subcommand("clear", "Remove every entry (asks nothing)");
  clear->callback([&action] { action = diskAction(runClear); });

  auto maxBytes = std::make_shared<int64_t>(-1);
  CLI::App* gc = cache->add_subcommand(
      "gc", "Evict least recently used entries over the size limit; drop broken ones");
  gc->add_option("--max-bytes", *maxBytes, "size limit (default: BQJIT_CACHE_MAX_BYTES; 0: none)")
      ->check(wholeNumber(0));
  gc->callback([maxBytes, &action] {
    action = diskAction([maxBytes](const DiskCache& d, const CommandContext& c) {
      const uint64_t limit =
          *maxBytes >= 0 ? static_cast<uint64_t>(*maxBytes) : c.config.maxCacheBytes;
      return runGc(d, limit, c);
    });
  });

  CLI::App* dir = cache->add_subcommand("dir", "Print the cache directory");
  dir->callback([&action] {
    action = [](const CommandContext& ctx) -> llvm::Error {
      if (auto err = requireCacheDir(ctx.config))
        return err;
      ctx.out << ctx.config.cacheDir << "\n";
      return llvm::Error::success();
    };
  });

  for (CLI::App* sub : {ls, stats, verify, clear, gc, dir})
    setFooter(*sub);
}

} // namespace bqjit::cli
