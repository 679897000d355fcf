#include "cache/file_lock.hpp"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

#include "bqjit/error.hpp"

namespace bqjit {

llvm::Expected<std::optional<FileLock>> FileLock::acquire(const std::string& path, int timeoutMs) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return makeError(ErrorCode::CacheError,
                     "cannot open lock file '" + path + "': " + std::strerror(errno));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    struct flock fl;
    std::memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (::fcntl(fd, F_OFD_SETLK, &fl) == 0)
      return std::optional<FileLock>(FileLock(fd, path));
    if (errno != EAGAIN && errno != EACCES && errno != EINTR) {
      int e = errno;
      ::close(fd);
      return makeError(ErrorCode::CacheError,
                       "cannot lock '" + path + "': " + std::strerror(e));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      ::close(fd);
      return std::optional<FileLock>();
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
}

FileLock::~FileLock() {
  if (fd_ >= 0)
    ::close(fd_); // closing the description releases the lock
}

} // namespace bqjit
