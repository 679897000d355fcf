// Small filesystem helpers for the disk cache; all errors carry the path.
#pragma once

#include <string>
#include <vector>

#include <llvm/Support/Error.h>

namespace bqjit::fs {

/// mkdir -p.
llvm::Error createDirectories(const std::string& path);
/// Writes a file and fsyncs it; on failure the partial file is removed.
llvm::Error writeFileSynced(const std::string& path, const void* data, size_t size);
/// Replaces a file whole: writes a temporary beside it, fsyncs it and renames
/// it over `path`, so that a reader sees the old file or the new, never half.
llvm::Error replaceFile(const std::string& path, const void* data, size_t size);
/// Reads a whole file.
llvm::Expected<std::vector<char>> readFile(const std::string& path);
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
