// The disk layer: one directory per key, published whole by rename.
//
//   <root>/v1/entries/<key>/{kernel.cubin, kernel.ptx, meta.json}
//   <root>/v1/tmp/       private directories of writers in progress
//   <root>/v1/locks/     one lock file per key (compile once across processes)
//   <root>/v1/tuned/     tuned launch shapes, one JSON file per untuned spec
//   <root>/v1/journal.log  hits, misses, compiles, evictions (see journal.hpp)
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <llvm/Support/Error.h>

#include "bqjit/compiled_kernel.hpp"
#include "bqjit/config.hpp"
#include "cache/file_lock.hpp"
#include "cache/journal.hpp"
#include "cache/trust.hpp"

namespace bqjit {

struct EntryInfo {
  std::string key;
  std::string label; ///< spec label, or why the entry is unreadable
  uint64_t bytes = 0;
  int64_t lastUseMs = 0;
  bool valid = false;
};

/// How closely garbage collection looks at each entry.
enum class EntryCheck {
  Metadata, ///< parse meta.json only (eviction passes after a compile)
  Full,     ///< every checksum, as verify() does (`bqjit cache gc`)
};

/// The journal may take this much room before a collection compacts it (a
/// compacted journal holds a few lines per entry): 1 KiB per entry plus
/// 64 KiB, or, under a size limit, plus a sixteenth of it (4 to 64 KiB).
uint64_t journalBudget(size_t entries, uint64_t maxBytes);

struct VerifyReport {
  int64_t checked = 0;
  int64_t bad = 0;
  std::vector<std::string> problems; ///< "<key>: <what is wrong>"
};

class DiskCache {
public:
  /// `cacheDir` is Config::cacheDir; the versioned root goes below it.
  DiskCache(const std::string& cacheDir, const Config& config);

  const std::string& root() const { return root_; }
  std::string entryDir(const std::string& key) const { return root_ + "/entries/" + key; }
  const Journal& journal() const { return journal_; }

  /// Creates the directories. An error says why the cache cannot be written.
  llvm::Error prepare() const;

  /// An error when the cache directory, its versioned root or entries/
  /// exists but is not a directory (BQJIT_CACHE_DIR naming a regular file):
  /// reading it would report an empty, healthy cache. Missing is fine (empty).
  llvm::Error checkLayout() const;

  /// Whether only trusted writers can write the cache (see trust.hpp): the
  /// cache directory, its versioned root, entries/, tmp/, locks/, tuned/ and
  /// the journal. An error (CacheError) names the first path that fails, its
  /// owner and mode, and the fix; bqjit then loads nothing from the cache.
  llvm::Error checkTrust() const;
  /// Every such problem of the tree, its tuning records and lock files
  /// (`bqjit cache verify`; verify() reports those of entries).
  std::vector<std::string> trustProblems() const;

  /// Reads and verifies an entry: std::nullopt when absent. A corrupt entry
  /// (bad checksum, truncated, altered, unreadable metadata, other format) or
  /// one that someone untrusted can write (its directory or a file owned by
  /// another user, group- or world-writable, a symbolic link) is removed, recorded as corrupt, and
  /// reported through `problem`. An entry whose files are all there but cannot be read by this
  /// process (out of descriptors, permissions) is left in place: a miss, with a warning.
  std::optional<CompiledKernel> load(const std::string& key, std::string* problem = nullptr) const;

  /// Publishes an entry atomically: written in a private directory, fsynced,
  /// renamed into place. If another writer published the key first, theirs stays.
  llvm::Error publish(const CompiledKernel& kernel, const std::string& keyInputs) const;

  /// The cross-process lock of a key (nullopt after `timeoutMs`).
  llvm::Expected<std::optional<FileLock>> lockKey(const std::string& key, int timeoutMs) const;

  std::vector<EntryInfo> list() const;
  VerifyReport verify() const;
  llvm::Error remove(const std::string& key) const;
  llvm::Error clear() const;
  /// Evicts least recently used entries until the entries and the journal
  /// together take at most `maxBytes` (0: no limit), sparing `keep`; removes
  /// bad entries (unreadable metadata; with EntryCheck::Full, every entry that
  /// verify() calls bad, except one whose files are all there but cannot be
  /// read by this process, as load() leaves it), the temporaries of writers
  /// that died and the lock files nobody holds; compacts the journal when it
  /// is over journalBudget(). Returns the keys evicted, in order.
  llvm::Expected<std::vector<std::string>>
  collectGarbage(uint64_t maxBytes, const std::string& keep = "",
                 EntryCheck check = EntryCheck::Metadata) const;

  /// Why an entry fails verification (std::nullopt: it is good), reading
  /// only; `transient` is set when its files are all there but could not be read.
  std::optional<std::string> problemOf(const std::string& key, bool* transient) const;

private:
  std::string cacheDir_;
  std::string root_;
  const Config& config_;
  TrustPolicy policy_;
  Journal journal_;
};

} // namespace bqjit
