#include "core/fs_util.hpp"

#include <cerrno>
#include <cstring>
#include <random>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bqjit/error.hpp"

namespace bqjit::fs {

namespace {

llvm::Error ioError(const std::string& what, const std::string& path, int err) {
  return makeError(ErrorCode::CacheError, what + " '" + path + "': " + std::strerror(err));
}

} // namespace

llvm::Error createDirectories(const std::string& path) {
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    partial = path.substr(0, pos);
    if (partial.empty())
      continue;
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
      return ioError("cannot create directory", partial, errno);
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return ioError("not a directory", path, ENOTDIR);
  return llvm::Error::success();
}

llvm::Error writeFileSynced(const std::string& path, const void* data, size_t size) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return ioError("cannot create", path, errno);
  const char* p = static_cast<const char*>(data);
  size_t left = size;
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      int e = n < 0 ? errno : ENOSPC;
      ::close(fd);
      ::unlink(path.c_str());
      return ioError("cannot write", path, e);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return ioError("cannot fsync", path, e);
  }
  if (::close(fd) != 0) {
    int e = errno;
    ::unlink(path.c_str());
    return ioError("cannot close", path, e);
  }
  return llvm::Error::success();
}

llvm::Error replaceFile(const std::string& path, const void* data, size_t size, int group) {
  const std::string tmp = path + ".tmp." + uniqueSuffix();
  if (auto err = writeFileSynced(tmp, data, size))
    return err;
  if (auto err = shareWithGroup(tmp, group)) {
    ::unlink(tmp.c_str());
    return err;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return ioError("cannot replace", path, e);
  }
  return llvm::Error::success();
}

namespace {

llvm::Expected<std::vector<char>> readOpen(const std::string& path, int flags, struct ::stat* st) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | flags);
  if (fd < 0)
    return ioError("cannot open", path, errno);
  if (st && ::fstat(fd, st) != 0) {
    int e = errno;
    ::close(fd);
    return ioError("cannot stat", path, e);
  }
  std::vector<char> out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return ioError("cannot read", path, e);
    }
    if (n == 0)
      break;
    out.insert(out.end(), buf, buf + n);
  }
  ::close(fd);
  return out;
}

} // namespace

llvm::Expected<std::vector<char>> readFile(const std::string& path) {
  return readOpen(path, 0, nullptr);
}

llvm::Expected<std::vector<char>> readFileNoFollow(const std::string& path, struct ::stat* st) {
  return readOpen(path, O_NOFOLLOW, st);
}

llvm::Error syncDirectory(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return ioError("cannot open directory", path, errno);
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0)
    return ioError("cannot fsync directory", path, e);
  return llvm::Error::success();
}

llvm::Error removeTree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0)
    return errno == ENOENT ? llvm::Error::success() : ioError("cannot stat", path, errno);
  if (S_ISDIR(st.st_mode)) {
    for (const auto& name : listDirectory(path))
      if (auto err = removeTree(path + "/" + name))
        return err;
    if (::rmdir(path.c_str()) != 0 && errno != ENOENT)
      return ioError("cannot remove directory", path, errno);
  } else if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ioError("cannot remove", path, errno);
  }
  return llvm::Error::success();
}

std::vector<std::string> listDirectory(const std::string& path) {
  std::vector<std::string> out;
  DIR* d = ::opendir(path.c_str());
  if (!d)
    return out;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..")
      out.push_back(name);
  }
  ::closedir(d);
  return out;
}

uint64_t treeBytes(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0)
    return 0;
  if (!S_ISDIR(st.st_mode))
    return S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size) : 0;
  uint64_t total = 0;
  for (const auto& name : listDirectory(path))
    total += treeBytes(path + "/" + name);
  return total;
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string uniqueSuffix() {
  std::random_device rd;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%d.%08x%08x", static_cast<int>(::getpid()), rd(), rd());
  return buf;
}

llvm::Expected<TempDir> TempDir::create(const std::string& parent, const std::string& prefix) {
  if (auto err = createDirectories(parent))
    return std::move(err);
  std::string path = parent + "/" + prefix + uniqueSuffix();
  if (::mkdir(path.c_str(), 0755) != 0)
    return ioError("cannot create temporary directory", path, errno);
  return TempDir(path);
}

TempDir::~TempDir() {
  if (!path_.empty())
    llvm::consumeError(removeTree(path_));
}

llvm::Error shareWithGroup(int fd, const std::string& path, int group) {
  if (group < 0)
    return llvm::Error::success();
  struct stat st;
  if (::fstat(fd, &st) != 0)
    return makeError(ErrorCode::CacheError,
                     "cannot examine '" + path + "': " + std::strerror(errno));
  if (static_cast<int>(st.st_gid) != group && ::fchown(fd, static_cast<uid_t>(-1), group) != 0)
    return makeError(ErrorCode::CacheError, "cannot give '" + path + "' to the group " + "gid " +
                                                std::to_string(group) +
                                                " (BQJIT_CACHE_GROUP): " + std::strerror(errno));
  const mode_t wanted =
      (st.st_mode & 07777) | (S_ISDIR(st.st_mode) ? (S_IRWXG | S_ISGID) : (S_IRGRP | S_IWGRP));
  if (wanted != (st.st_mode & 07777) && ::fchmod(fd, wanted) != 0)
    return makeError(ErrorCode::CacheError,
                     "cannot make '" + path +
                         "' group-writable (BQJIT_CACHE_GROUP): " + std::strerror(errno));
  return llvm::Error::success();
}

llvm::Error shareWithGroup(const std::string& path, int group) {
  if (group < 0)
    return llvm::Error::success();
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return makeError(ErrorCode::CacheError, "cannot open '" + path + "': " + std::strerror(errno));
  llvm::Error err = shareWithGroup(fd, path, group);
  ::close(fd);
  return err;
}

} // namespace bqjit::fs
