// FileLock: exclusion between descriptors of one process and between
// processes, release on destruction and on the holder's death.
#include "cache/file_lock.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "core/fs_util.hpp"

namespace bqjit {
namespace {

using Clock = std::chrono::steady_clock;

double msSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

class FileLockTest : public testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bqjit_file_lock_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/key.lock";
  }
  void TearDown() override { llvm::consumeError(fs::removeTree(dir_)); }

  /// Acquires or fails the test; nullopt means "timed out".
  std::optional<FileLock> acquire(int timeoutMs) {
    auto lock = FileLock::acquire(path_, timeoutMs);
    if (!lock) {
      ADD_FAILURE() << consumeToString(lock.takeError());
      return std::nullopt;
    }
    return std::move(*lock);
  }

  std::string dir_, path_;
};

TEST_F(FileLockTest, AcquireCreatesTheFile) {
  auto lock = acquire(0);
  ASSERT_TRUE(lock.has_value());
  EXPECT_EQ(lock->path(), path_);
  EXPECT_TRUE(fs::exists(path_));
}

TEST_F(FileLockTest, SecondLockInSameProcessTimesOut) {
  auto first = acquire(1000);
  ASSERT_TRUE(first.has_value());
  const auto start = Clock::now();
  auto second = acquire(200);
  const double waited = msSince(start);
  EXPECT_FALSE(second.has_value());
  EXPECT_GE(waited, 200.0);
  EXPECT_LT(waited, 2000.0);
  // A zero timeout tries exactly once.
  const auto start0 = Clock::now();
  EXPECT_FALSE(acquire(0).has_value());
  EXPECT_LT(msSince(start0), 200.0);
}

TEST_F(FileLockTest, ReleasedOnDestruction) {
  {
    auto first = acquire(1000);
    ASSERT_TRUE(first.has_value());
    EXPECT_FALSE(acquire(50).has_value());
  }
  const auto start = Clock::now();
  auto again = acquire(1000);
  EXPECT_TRUE(again.has_value());
  EXPECT_LT(msSince(start), 500.0);
}

TEST_F(FileLockTest, WaiterGetsTheLockWhenReleased) {
  auto first = acquire(1000);
  ASSERT_TRUE(first.has_value());
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    first.reset();
  });
  const auto start = Clock::now();
  auto second = acquire(5000);
  const double waited = msSince(start);
  releaser.join();
  EXPECT_TRUE(second.has_value());
  EXPECT_GE(waited, 100.0);
  EXPECT_LT(waited, 4000.0);
}

TEST_F(FileLockTest, MovedLockStaysHeld) {
  auto first = acquire(1000);
  ASSERT_TRUE(first.has_value());
  std::optional<FileLock> moved;
  moved.emplace(std::move(*first));
  first.reset(); // the moved-from lock must not release it
  EXPECT_FALSE(acquire(50).has_value());
  moved.reset();
  EXPECT_TRUE(acquire(1000).has_value());
}

TEST_F(FileLockTest, ThreadsExcludeEachOther) {
  std::atomic<int> inside{0};
  std::atomic<int> overlaps{0};
  std::atomic<int> entered{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        auto lock = FileLock::acquire(path_, 10000);
        if (!lock || !*lock) {
          if (!lock)
            llvm::consumeError(lock.takeError());
          continue;
        }
        if (inside.fetch_add(1) != 0)
          ++overlaps;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        inside.fetch_sub(1);
        ++entered;
      }
    });
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(entered.load(), 40);
  EXPECT_EQ(overlaps.load(), 0);
}

TEST_F(FileLockTest, KilledHolderReleasesTheLock) {
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(ready[0]);
    auto lock = FileLock::acquire(path_, 5000);
    const char ok = (lock && *lock) ? 'y' : 'n';
    if (!lock)
      llvm::consumeError(lock.takeError());
    (void)!::write(ready[1], &ok, 1);
    for (;;)
      ::pause(); // hold it until killed
  }
  ::close(ready[1]);
  char ok = 0;
  ASSERT_EQ(::read(ready[0], &ok, 1), 1);
  ::close(ready[0]);
  EXPECT_EQ(ok, 'y');
  // Held by the child.
  EXPECT_FALSE(acquire(100).has_value());
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  const auto start = Clock::now();
  auto lock = acquire(2000);
  EXPECT_TRUE(lock.has_value());
  EXPECT_LT(msSince(start), 1000.0);
}

TEST_F(FileLockTest, ChildWaitsForParentsLock) {
  auto mine = acquire(1000);
  ASSERT_TRUE(mine.has_value());
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The inherited descriptor is closed on exec only; a fresh acquire in the
    // child is a different open file description and must time out.
    auto lock = FileLock::acquire(path_, 100);
    ::_exit(lock && !*lock ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child got a lock the parent holds";
}

TEST_F(FileLockTest, UnopenablePathIsAnError) {
  auto lock = FileLock::acquire(dir_ + "/no/such/dir/key.lock", 100);
  ASSERT_FALSE(bool(lock));
  std::string message;
  EXPECT_EQ(consumeError(lock.takeError(), &message), ErrorCode::CacheError);
  EXPECT_NE(message.find(dir_ + "/no/such/dir/key.lock"), std::string::npos) << message;
}

} // namespace
} // namespace bqjit
