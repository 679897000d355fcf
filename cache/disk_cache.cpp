#include "cache/disk_cache.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"
#include "cache/entry_format.hpp"
#include "core/json_input.hpp"
#include "cache/log_lines.hpp"
#include "core/fs_util.hpp"
#include "jit/cache_key.hpp"

namespace bqjit {

uint64_t journalBudget(size_t entries, uint64_t maxBytes) {
  uint64_t floor = 64 * 1024;
  if (maxBytes > 0)
    floor = std::min<uint64_t>(floor, std::max<uint64_t>(4 * 1024, maxBytes / 16));
  return floor + 1024 * static_cast<uint64_t>(entries);
}

DiskCache::DiskCache(const std::string& cacheDir, const Config& config)
    : cacheDir_(cacheDir), root_(cacheDir + "/" + kCacheLayoutDir), config_(config),
      policy_(TrustPolicy::of(config)),
      journal_(
          root_ + "/journal.log",
          [entries = root_ + "/entries"] { return fs::listDirectory(entries); },
          kJournalAutoCompactBytes, config.cacheGroup) {}

llvm::Error DiskCache::prepare() const {
  for (const char* sub : {"/entries", "/tmp", "/locks", "/tuned"})
    if (auto err = fs::createDirectories(root_ + sub))
      return err;
  if (config_.cacheGroup >= 0)
    for (const std::string& dir :
         {root_, root_ + "/entries", root_ + "/tmp", root_ + "/locks", root_ + "/tuned"})
      if (::access(dir.c_str(), W_OK) == 0)
        if (auto err = fs::shareWithGroup(dir, config_.cacheGroup))
          return err;
  if (::access(root_.c_str(), W_OK) != 0)
    return makeError(ErrorCode::CacheError,
                     "cache directory '" + root_ + "' is not writable: " + std::strerror(errno));
  logCacheRoot(config_, root_, journal_.path());
  return llvm::Error::success();
}

llvm::Error DiskCache::checkLayout() const {
  for (const std::string& path : {cacheDir_, root_, root_ + "/entries"}) {
    const std::string what = path == cacheDir_
                                 ? "cache directory '" + path + "' (BQJIT_CACHE_DIR or --cache-dir)"
                                 : "cache path '" + path + "'";
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT)
        return llvm::Error::success(); // not created yet: an empty cache
      return makeError(ErrorCode::CacheError, "cannot use " + what + ": " + std::strerror(errno) +
                                                  "; it must be a directory");
    }
    if (!S_ISDIR(st.st_mode))
      return makeError(ErrorCode::CacheError,
                       what + " is " +
                           (S_ISREG(st.st_mode) ? "a regular file" : "not a directory") +
                           ": it must be a directory");
  }
  return llvm::Error::success();
}

llvm::Error DiskCache::checkTrust() const {
  for (const std::string& path : {cacheDir_, root_, root_ + "/entries", root_ + "/tmp",
                                  root_ + "/locks", root_ + "/tuned", journal_.path()})
    if (auto problem = checkWriters(path, policy_, /*follow=*/path == cacheDir_))
      return makeError(ErrorCode::CacheError, "refusing to load kernels from the cache at '" +
                                                  cacheDir_ + "': " + *problem);
  return llvm::Error::success();
}

std::vector<std::string> DiskCache::trustProblems() const {
  std::vector<std::string> out;
  for (const std::string& path : {cacheDir_, root_, root_ + "/entries", root_ + "/tmp",
                                  root_ + "/locks", root_ + "/tuned", journal_.path()})
    if (auto problem = checkWriters(path, policy_, /*follow=*/path == cacheDir_))
      out.push_back(*problem);
  // Entries are verify()'s (problemOf checks their writers as it reads them).
  for (const char* sub : {"/tuned", "/locks"})
    for (const auto& name : fs::listDirectory(root_ + sub))
      if (auto problem = checkWriters(root_ + sub + "/" + name, policy_))
        out.push_back(*problem);
  return out;
}

namespace {

constexpr const char* kUntrusted = "not trusted: ";

struct RawEntry {
  std::string metaText;
  std::vector<char> cubin;
  std::string ptx;
  std::string untrusted; ///< why someone untrusted may have written it
};

// Reads an entry's files, each checked for who may have written it (the
// status of the open file: the bytes read are the bytes checked).
llvm::Expected<RawEntry> readEntry(const std::string& dir, const TrustPolicy& policy) {
  RawEntry raw;
  if (auto problem = checkWriters(dir, policy)) {
    raw.untrusted = *problem;
    return raw;
  }
  auto readOne = [&](const char* name) -> llvm::Expected<std::vector<char>> {
    const std::string path = dir + "/" + name;
    if (auto problem = checkWriters(path, policy)) { // a symbolic link, say
      raw.untrusted = *problem;
      return std::vector<char>();
    }
    struct stat st;
    auto bytes = fs::readFileNoFollow(path, &st);
    if (bytes)
      if (auto problem = untrustedWriter(path, st, policy))
        raw.untrusted = *problem;
    return bytes;
  };
  auto meta = readOne(kMetaFile);
  if (!meta)
    return meta.takeError();
  if (!raw.untrusted.empty())
    return raw;
  raw.metaText.assign(meta->begin(), meta->end());
  auto cubin = readOne(kCubinFile);
  if (!cubin)
    return cubin.takeError();
  if (!raw.untrusted.empty())
    return raw;
  raw.cubin = std::move(*cubin);
  auto ptx = readOne(kPtxFile);
  if (!ptx)
    return ptx.takeError();
  raw.ptx.assign(ptx->begin(), ptx->end());
  return raw;
}

// Verifies a raw entry read from `key`'s directory and builds the kernel.
llvm::Expected<CompiledKernel> decodeEntry(const std::string& key, RawEntry raw) {
  if (!raw.untrusted.empty())
    return makeError(ErrorCode::CacheError, kUntrusted + raw.untrusted);
  CompiledKernel k;
  if (auto err = parseMetadata(raw.metaText, k))
    return std::move(err);
  if (k.key != key)
    return makeError(ErrorCode::CacheError,
                     "metadata key " + k.key + " differs from the directory name");
  if (auto err = checkPayload(nlohmann::json::parse(raw.metaText), raw.cubin, raw.ptx))
    return std::move(err);
  k.cubin = std::move(raw.cubin);
  k.ptx = std::move(raw.ptx);
  return k;
}

bool isKeyName(const std::string& name) {
  return name.size() == 32 && name.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// Whether the process that made a temporary named "<what>.<pid>.<random>" is gone.
bool writerDied(const std::string& name) {
  const auto last = name.rfind('.');
  if (last == std::string::npos || last == 0)
    return false;
  const auto before = name.rfind('.', last - 1);
  const size_t start = before == std::string::npos ? 0 : before + 1;
  const std::string pid = name.substr(start, last - start);
  if (pid.empty() || pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos)
    return false;
  return ::kill(std::atoi(pid.c_str()), 0) != 0 && errno == ESRCH;
}

bool hasAllFiles(const std::string& dir) {
  for (const char* name : {kMetaFile, kCubinFile, kPtxFile}) {
    struct stat st;
    if (::stat((dir + "/" + name).c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      return false;
  }
  return true;
}

} // namespace

std::optional<CompiledKernel> DiskCache::load(const std::string& key, std::string* problem) const {
  const std::string dir = entryDir(key);
  if (!fs::exists(dir))
    return std::nullopt;
  auto raw = readEntry(dir, policy_);
  const bool readFailed = !raw;
  llvm::Expected<CompiledKernel> kernel =
      raw ? decodeEntry(key, std::move(*raw)) : llvm::Expected<CompiledKernel>(raw.takeError());
  if (kernel) {
    logLoadedFromDisk(config_, *kernel, dir);
    return std::move(*kernel);
  }
  std::string message;
  consumeError(kernel.takeError(), &message);
  // A reader racing with an eviction sees files vanish: that is a miss.
  if (!fs::exists(dir))
    return std::nullopt;
  // All files there but unreadable (out of descriptors, permissions, I/O): this
  // process's trouble, not the entry's. Deleting it would cost every other
  // process a recompile.
  if (readFailed && hasAllFiles(dir)) {
    config_.log(LogLevel::Warn,
                "cannot read cache entry " + key + " (" + message + "); compiling it instead");
    return std::nullopt;
  }
  if (problem)
    *problem = message;
  config_.log(LogLevel::Warn,
              "cache entry " + key +
                  (message.rfind(kUntrusted, 0) == 0 ? " is refused" : " is corrupt") +
                  " and will be recompiled: " + message);
  llvm::consumeError(journal_.append(CacheEvent::Corrupt, key));
  llvm::consumeError(remove(key));
  return std::nullopt;
}

llvm::Error DiskCache::publish(const CompiledKernel& kernel, const std::string& keyInputs) const {
  auto tmp = fs::TempDir::create(root_ + "/tmp", kernel.key + ".");
  if (!tmp)
    return tmp.takeError();
  const std::string meta = jsonText(makeMetadata(kernel, keyInputs), 2) + "\n";
  if (auto err = fs::writeFileSynced(tmp->path() + "/" + kCubinFile, kernel.cubin.data(),
                                     kernel.cubin.size()))
    return err;
  if (auto err =
          fs::writeFileSynced(tmp->path() + "/" + kPtxFile, kernel.ptx.data(), kernel.ptx.size()))
    return err;
  if (auto err = fs::writeFileSynced(tmp->path() + "/" + kMetaFile, meta.data(), meta.size()))
    return err;
  if (config_.cacheGroup >= 0)
    for (const std::string& path : {tmp->path() + "/" + kCubinFile, tmp->path() + "/" + kPtxFile,
                                    tmp->path() + "/" + kMetaFile, tmp->path()})
      if (auto err = fs::shareWithGroup(path, config_.cacheGroup))
        return err;
  if (auto err = fs::syncDirectory(tmp->path()))
    return err;
  const std::string target = entryDir(kernel.key);
  if (::rename(tmp->path().c_str(), target.c_str()) != 0) {
    if (errno == EEXIST || errno == ENOTEMPTY)
      return llvm::Error::success(); // another writer won; the TempDir removes ours
    return makeError(ErrorCode::CacheError,
                     "cannot publish cache entry '" + target + "': " + std::strerror(errno));
  }
  tmp->release();
  logEntryStored(config_, kernel.key, target);
  return fs::syncDirectory(root_ + "/entries");
}

llvm::Expected<std::optional<FileLock>> DiskCache::lockKey(const std::string& key,
                                                           int timeoutMs) const {
  return FileLock::acquire(root_ + "/locks/" + key + ".lock", timeoutMs, config_.cacheGroup);
}

std::vector<EntryInfo> DiskCache::list() const {
  std::vector<EntryInfo> out;
  auto lastUse = journal_.lastUse();
  for (const auto& key : fs::listDirectory(root_ + "/entries")) {
    EntryInfo info;
    info.key = key;
    info.bytes = fs::treeBytes(entryDir(key));
    info.lastUseMs = lastUse.count(key) ? lastUse[key] : 0;
    auto metaText = fs::readFile(entryDir(key) + "/" + kMetaFile);
    CompiledKernel k;
    if (!metaText) {
      consumeError(metaText.takeError(), &info.label);
    } else if (auto err = parseMetadata(std::string(metaText->begin(), metaText->end()), k)) {
      consumeError(std::move(err), &info.label);
    } else {
      info.valid = isKeyName(key);
      info.label = k.spec.label();
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(),
            [](const EntryInfo& a, const EntryInfo& b) { return a.lastUseMs > b.lastUseMs; });
  return out;
}

std::optional<std::string> DiskCache::problemOf(const std::string& key, bool* transient) const {
  auto raw = readEntry(entryDir(key), policy_);
  const bool readFailed = !raw;
  llvm::Expected<CompiledKernel> kernel =
      raw ? decodeEntry(key, std::move(*raw)) : llvm::Expected<CompiledKernel>(raw.takeError());
  if (transient)
    *transient = false;
  if (kernel)
    return std::nullopt;
  std::string message;
  consumeError(kernel.takeError(), &message);
  if (transient)
    *transient = readFailed && hasAllFiles(entryDir(key));
  return message;
}

VerifyReport DiskCache::verify() const {
  VerifyReport report;
  for (const auto& key : fs::listDirectory(root_ + "/entries")) {
    ++report.checked;
    if (auto problem = problemOf(key, nullptr)) {
      ++report.bad;
      report.problems.push_back(key + ": " + *problem);
    }
  }
  return report;
}

llvm::Error DiskCache::remove(const std::string& key) const {
  // Rename first so that the entry disappears at once for every reader.
  const std::string doomed = root_ + "/tmp/removed." + key + "." + fs::uniqueSuffix();
  if (::rename(entryDir(key).c_str(), doomed.c_str()) != 0)
    return errno == ENOENT
               ? llvm::Error::success()
               : makeError(ErrorCode::CacheError, "cannot remove cache entry '" + entryDir(key) +
                                                      "': " + std::strerror(errno));
  return fs::removeTree(doomed);
}

llvm::Error DiskCache::clear() const {
  for (const auto& key : fs::listDirectory(root_ + "/entries"))
    if (auto err = remove(key))
      return err;
  for (const char* sub : {"/tuned", "/tmp"})
    for (const auto& name : fs::listDirectory(root_ + sub))
      if (auto err = fs::removeTree(root_ + sub + "/" + name))
        return err;
  return fs::removeTree(journal_.path());
}

llvm::Expected<std::vector<std::string>>
DiskCache::collectGarbage(uint64_t maxBytes, const std::string& keep, EntryCheck check) const {
  // Temporaries of writers that died ("<what>.<pid>.<random>", see uniqueSuffix),
  // and entries that a remover renamed away but did not finish deleting.
  for (const auto& name : fs::listDirectory(root_ + "/tmp"))
    if (writerDied(name) || name.rfind("removed.", 0) == 0)
      llvm::consumeError(fs::removeTree(root_ + "/tmp/" + name));
  for (const char* sub : {"", "/tuned"}) // "<file>.tmp.<pid>.<random>" of atomic rewrites
    for (const auto& name : fs::listDirectory(root_ + sub))
      if (name.find(".tmp.") != std::string::npos && writerDied(name))
        llvm::consumeError(fs::removeTree(root_ + sub + "/" + name));
  // One lock file per key ever compiled would pile up; only unheld ones go.
  for (const auto& name : fs::listDirectory(root_ + "/locks"))
    FileLock::removeIfUnlocked(root_ + "/locks/" + name);
  // The journal counts against the limit; compacting it comes before
  // evicting anything for its sake.
  const uint64_t journalBefore = journal_.bytes();
  auto compacted = journal_.compactIfLarger(
      journalBudget(fs::listDirectory(root_ + "/entries").size(), maxBytes));
  if (!compacted)
    config_.log(LogLevel::Warn,
                "cannot compact the cache journal: " + consumeToString(compacted.takeError()));
  else if (*compacted)
    logJournalCompacted(config_, journal_.path(), journalBefore, journal_.bytes());

  std::vector<std::string> evicted;
  auto entries = list(); // most recently used first
  uint64_t total = journal_.bytes();
  for (const auto& e : entries)
    total += e.bytes;
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    if (it->key == keep)
      continue;
    std::string problem;
    if (!it->valid || check == EntryCheck::Full) {
      bool transient = false;
      auto bad = problemOf(it->key, &transient);
      if (bad && !transient)
        problem = *bad;
      else if (!bad && !it->valid)
        problem = "'" + it->key + "' is not a cache key";
    }
    const bool overLimit = maxBytes > 0 && total > maxBytes;
    if (problem.empty() && !overLimit)
      continue;
    if (auto err = remove(it->key))
      return std::move(err);
    llvm::consumeError(journal_.append(CacheEvent::Evict, it->key));
    logEvicted(config_, it->key, it->bytes, it->valid ? it->label : "", problem);
    total -= std::min(total, it->bytes);
    evicted.push_back(it->key);
  }
  return evicted;
}

} // namespace bqjit
