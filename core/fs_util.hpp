// Small filesystem helpers for the disk cache; all errors carry the path.
#pragma once

#include <string>
#include <vector>

#include <sys/stat.h>

#include <llvm/Support/Error.h>

namespace bqjit::fs {

/// mkdir -p.
llvm::Error createDirectories(const std::string& path);
/// Writes a file and fsyncs it; on failure the partial file is removed.
llvm::Error writeFileSynced(const std::string& path, const void* data, size_t size);
/// Replaces a file whole: writes a temporary beside it, fsyncs it and renames
/// it over `path`, so that a reader sees the old file or the new, never half.
/// `group` >= 0: the new file is shared with it first (shareWithGroup).
llvm::Error replaceFile(const std::string& path, const void* data, size_t size, int group = -1);
/// With a trusted group, makes a file or directory that this process created
/// belong to that group and be group-writable (directories also set-group-id,
/// so that what is created inside them belongs to the group too), other bits
/// as the umask left them. Without one, does nothing. Errors name the path.
llvm::Error shareWithGroup(int fd, const std::string& path, int group);
llvm::Error shareWithGroup(const std::string& path, int group);

/// Reads a whole file.
llvm::Expected<std::vector<char>> readFile(const std::string& path);
/// Reads a whole file that is not a symbolic link, and the status of what
/// was read (fstat of the open file, so that a check of it is about these bytes).
llvm::Expected<std::vector<char>> readFileNoFollow(const std::string& path, struct ::stat* st);
/// fsync of a directory, so that a rename inside it is durable.
llvm::Error syncDirectory(const std::string& path);
/// rm -rf; a missing path is not an error.
llvm::Error removeTree(const std::string& path);
/// Names of the entries of a directory (no "." or ".."); missing dir -> empty.
std::vector<std::string> listDirectory(const std::string& path);
/// Total bytes of the regular files below a path.
uint64_t treeBytes(const std::string& path);
bool exists(const std::string& path);
/// A unique name for temporaries: "<pid>.<random hex>".
std::string uniqueSuffix();

/// A temporary directory removed on destruction unless released.
class TempDir {
public:
  static llvm::Expected<TempDir> create(const std::string& parent, const std::string& prefix);
  TempDir(TempDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  ~TempDir();
  const std::string& path() const { return path_; }
  /// Keeps the directory (it was renamed into place).
  void release() { path_.clear(); }

private:
  explicit TempDir(std::string p) : path_(std::move(p)) {}
  std::string path_;
};

} // namespace bqjit::fs
