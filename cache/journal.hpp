// The cache's own record of what happened: one JSON line per event, appended
// with O_APPEND by every process. Stats, compile counts and LRU recency are
// all read from it (never from file access times).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <llvm/Support/Error.h>

namespace bqjit {

enum class CacheEvent { Hit, Miss, Compile, Evict, Corrupt };
const char* toString(CacheEvent event);

struct JournalRecord {
  CacheEvent event = CacheEvent::Hit;
  std::string key;
  int64_t timeMs = 0; ///< unix time in milliseconds
  double compileMs = 0;
  int pid = 0;
};

struct CacheStats {
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t compiles = 0;
  int64_t evictions = 0;
  int64_t corrupt = 0;
  double compileMsTotal = 0;
  double compileMsMax = 0;
};

class Journal {
public:
  explicit Journal(std::string path) : path_(std::move(path)) {}
  const std::string& path() const { return path_; }

  /// Appends one record; a failure is returned for the caller to warn about.
  llvm::Error append(CacheEvent event, const std::string& key, double compileMs = 0) const;
  /// All well-formed records (malformed lines, e.g. from a torn write on a
  /// full disk, are skipped and counted in `malformed`).
  std::vector<JournalRecord> read(int64_t* malformed = nullptr) const;
  CacheStats stats() const;
  /// Last time each key was hit or compiled.
  std::map<std::string, int64_t> lastUse() const;
  /// Rewrites the journal keeping only records of `liveKeys` (atomic rename).
  llvm::Error compact(const std::vector<std::string>& liveKeys) const;

private:
  std::string path_;
};

int64_t unixTimeMs();

} // namespace bqjit
