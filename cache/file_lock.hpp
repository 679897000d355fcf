// A per-key lock across processes and threads: an open-file-description
// lock, which the kernel releases when its holder dies.
#pragma once

#include <optional>
#include <string>

#include <llvm/Support/Error.h>

namespace bqjit {

class FileLock {
public:
  /// Waits up to `timeoutMs` for an exclusive lock on `path` (created if
  /// missing). Returns std::nullopt on timeout, an error if the file cannot
  /// be opened or locked for another reason. `group` >= 0: a lock file this
  /// process creates is made writable by that group (Config::cacheGroup).
  static llvm::Expected<std::optional<FileLock>> acquire(const std::string& path, int timeoutMs,
                                                         int group = -1);

  /// Deletes the lock file at `path` if no one holds it (garbage collection of
  /// the files of keys no longer compiling). Returns whether it was deleted.
  static bool removeIfUnlocked(const std::string& path);

  FileLock(FileLock&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  FileLock& operator=(FileLock&&) = delete;
  FileLock(const FileLock&) = delete;
  ~FileLock();

  const std::string& path() const { return path_; }

private:
  FileLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

} // namespace bqjit
