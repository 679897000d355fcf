// The cache's own record of what happened: one JSON line per event, appended
// with O_APPEND by every process. Stats, compile counts and LRU recency are
// all read from it (never from file access times).
//
// Compaction keeps it bounded: it rewrites the file with, for each live key,
// its latest record of each kind (what recency needs) and folds every other
// record into one summary line (what stats() needs), so that stats and
// recency are the same before and after. Appenders hold a shared flock on the
// file while they write and compaction an exclusive one while it reads and
// replaces it, so no record appended during a compaction is lost.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <llvm/Support/Error.h>

namespace bqjit {

/// Remote* are the fleet tier's (remote_tier.hpp): a kernel fetched from it,
/// not found there, stored there, and a fault (down, slow, full, a bad entry).
enum class CacheEvent {
  Hit,
  Miss,
  Compile,
  Evict,
  Corrupt,
  RemoteHit,
  RemoteMiss,
  RemotePublish,
  RemoteError
};
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
  int64_t remoteHits = 0;
  int64_t remoteMisses = 0;
  int64_t remotePublishes = 0;
  int64_t remoteErrors = 0;
  double compileMsTotal = 0;
  double compileMsMax = 0;
};

/// An append that finds the journal larger than this compacts it (when it is
/// also twice the size its last compaction left), so that a cache that is
/// only ever read from, and never collected, stays bounded too.
constexpr uint64_t kJournalAutoCompactBytes = 1u << 20;

class Journal {
public:
  /// The keys whose records compaction keeps (the cache's entries); listed
  /// while the journal is locked, so that an entry published meanwhile is seen.
  using LiveKeys = std::function<std::vector<std::string>()>;

  /// Without `liveKeys`, the keys whose latest record is not an eviction or a
  /// corrupt entry count as live.
  /// `group` (Config::cacheGroup, -1: none): the file is made group-writable
  /// for it, so that every service account of a shared cache can append.
  explicit Journal(std::string path, LiveKeys liveKeys = nullptr,
                   uint64_t autoCompactBytes = kJournalAutoCompactBytes, int group = -1)
      : path_(std::move(path)), liveKeys_(std::move(liveKeys)), autoCompactBytes_(autoCompactBytes),
        group_(group) {}
  const std::string& path() const { return path_; }

  /// Appends one record; a failure is returned for the caller to warn about.
  /// May compact the journal first (see kJournalAutoCompactBytes).
  llvm::Error append(CacheEvent event, const std::string& key, double compileMs = 0) const;
  /// All well-formed records (malformed lines, e.g. from a torn write on a
  /// full disk, are skipped and counted in `malformed`). The summary line of
  /// a compaction is no record: its counts are in stats() only.
  std::vector<JournalRecord> read(int64_t* malformed = nullptr) const;
  CacheStats stats() const;
  /// Last time each key was hit (on disk or from the remote tier) or compiled.
  std::map<std::string, int64_t> lastUse() const;
  /// Size of the journal file in bytes (0 when there is none).
  uint64_t bytes() const;
  /// Rewrites the journal (atomic rename) keeping, of the records of
  /// `liveKeys`, the latest of each kind; every other record, and earlier
  /// summaries, are folded into one summary line. stats() is unchanged, and
  /// so is lastUse() for the live keys.
  llvm::Error compact(const std::vector<std::string>& liveKeys) const;
  /// compact() with the constructor's live keys, when the journal is larger
  /// than `maxBytes`. Returns whether it compacted.
  llvm::Expected<bool> compactIfLarger(uint64_t maxBytes) const;

private:
  llvm::Expected<bool> compactLocked(const LiveKeys& live, uint64_t ifLargerThan, bool wait) const;
  std::string path_;
  LiveKeys liveKeys_;
  uint64_t autoCompactBytes_;
  int group_;
};

int64_t unixTimeMs();

} // namespace bqjit
