#include "cache/file_lock.hpp"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bqjit/error.hpp"
#include "core/fs_util.hpp"

namespace bqjit {

namespace {

bool tryLock(int fd) {
  struct flock fl;
  std::memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  return ::fcntl(fd, F_OFD_SETLK, &fl) == 0;
}

// Whether `fd` is still the file that `path` names.
bool isCurrentFile(int fd, const std::string& path) {
  struct stat held, named;
  return ::fstat(fd, &held) == 0 && held.st_nlink > 0 && ::stat(path.c_str(), &named) == 0 &&
         held.st_dev == named.st_dev && held.st_ino == named.st_ino;
}

} // namespace

llvm::Expected<std::optional<FileLock>> FileLock::acquire(const std::string& path, int timeoutMs,
                                                          int group) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  auto pause = std::chrono::milliseconds(1);
  int fd = -1;
  int staleInARow = 0;
  for (;;) {
    if (fd < 0) {
      fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0)
        return makeError(ErrorCode::CacheError,
                         "cannot open lock file '" + path + "': " + std::strerror(errno));
      if (group >= 0) // another member's file stays as it is
        llvm::consumeError(fs::shareWithGroup(fd, path, group));
    }
    if (tryLock(fd)) {
      if (isCurrentFile(fd, path))
        return std::optional<FileLock>(FileLock(fd, path));
      // Garbage collection deleted the file between our open and our lock
      // (removeIfUnlocked): whoever opens the path now gets a new file, so this
      // lock excludes no one. The new file is likely free: retry at once.
      ::close(fd);
      fd = -1;
      if (++staleInARow < 3)
        continue;
    } else if (errno != EAGAIN && errno != EACCES && errno != EINTR) {
      int e = errno;
      ::close(fd);
      return makeError(ErrorCode::CacheError, "cannot lock '" + path + "': " + std::strerror(e));
    } else {
      staleInARow = 0;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      if (fd >= 0)
        ::close(fd);
      return std::optional<FileLock>();
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
}

bool FileLock::removeIfUnlocked(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return false;
  bool removed = false;
  if (tryLock(fd) && isCurrentFile(fd, path))
    removed = ::unlink(path.c_str()) == 0; // unlinked while held: see acquire
  ::close(fd);
  return removed;
}

FileLock::~FileLock() {
  if (fd_ >= 0)
    ::close(fd_); // closing the description releases the lock
}

} // namespace bqjit
