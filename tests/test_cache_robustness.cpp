// A cache a fleet can trust: many processes on one empty directory compile
// each kernel once; writers killed at any moment leave nothing half-written
// and no lock behind; a full disk, an unwritable directory and a stuck lock
// holder cost a warning, never a kernel.
//
// NVRTC only ever runs in forked children, each with its own Compiler made
// after the fork: its state must not cross a fork. The parent looks at the
// directory with DiskCache, FileLock and the journal only.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "cache/disk_cache.hpp"
#include "cache/file_lock.hpp"
#include "cache/kernel_cache.hpp"
#include "cache_test_support.hpp"
#include "core/fs_util.hpp"

namespace bqjit {
namespace {

using Clock = std::chrono::steady_clock;

using test::msSince;
using test::specNumber;

void say(int fd, const std::string& text) {
  const char* p = text.data();
  size_t left = text.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

/// The value of "name=value" (space or newline separated) in a child's report.
std::string field(const std::string& report, const std::string& name) {
  const std::string tag = name + "=";
  size_t at = 0;
  while ((at = report.find(tag, at)) != std::string::npos) {
    if (at == 0 || report[at - 1] == ' ' || report[at - 1] == '\n')
      break;
    ++at;
  }
  if (at == std::string::npos)
    return "";
  const size_t start = at + tag.size();
  return report.substr(start, report.find_first_of(" \n", start) - start);
}

/// Gtest assertions do not cross fork: a child collects its failed checks
/// here, writes them to the parent and exits non-zero.
struct ChildChecks {
  int fd;
  int failures = 0;
  bool operator()(bool ok, const std::string& what) {
    if (!ok) {
      ++failures;
      say(fd, "FAIL: " + what + "\n");
    }
    return ok;
  }
  int exitCode() const { return failures == 0 ? 0 : 1; }
};

struct Child {
  pid_t pid = -1;
  int fd = -1; ///< read end of what the child writes
};

/// Forks a child that runs `body(fd)` and exits with its result; what it
/// writes to `fd` comes back through finish() or readLine().
Child startChild(const std::function<int(int fd)>& body) {
  int p[2];
  if (::pipe(p) != 0)
    return {};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    const int code = body(p[1]);
    ::_exit(code);
  }
  ::close(p[1]);
  if (pid < 0) {
    ::close(p[0]);
    return {};
  }
  return {pid, p[0]};
}

/// Reads one line from a child (without the newline), waiting up to `timeoutMs`.
std::string readLine(const Child& child, int timeoutMs = 60000) {
  std::string line;
  const auto start = Clock::now();
  char c;
  for (;;) {
    struct pollfd pfd = {child.fd, POLLIN, 0};
    const int left = timeoutMs - static_cast<int>(msSince(start));
    if (left <= 0 || ::poll(&pfd, 1, left) <= 0)
      return line;
    if (::read(child.fd, &c, 1) != 1 || c == '\n')
      return line;
    line += c;
  }
}

struct Finished {
  int status = -1;
  std::string report;
  bool exitedZero() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
};

/// Reads the child's report to its end and reaps it; a child still running
/// after `timeoutMs` is killed (and the report says so).
Finished finish(Child& child, int timeoutMs = 120000) {
  Finished out;
  const auto start = Clock::now();
  char buf[4096];
  for (;;) {
    struct pollfd pfd = {child.fd, POLLIN, 0};
    const int left = timeoutMs - static_cast<int>(msSince(start));
    if (left <= 0 || ::poll(&pfd, 1, left) <= 0) {
      ::kill(child.pid, SIGKILL);
      out.report += "\n[killed after " + std::to_string(timeoutMs) + " ms]";
      break;
    }
    const ssize_t n = ::read(child.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    out.report.append(buf, static_cast<size_t>(n));
  }
  ::close(child.fd);
  child.fd = -1;
  while (::waitpid(child.pid, &out.status, 0) < 0 && errno == EINTR) {
  }
  return out;
}

/// Warnings of a child's KernelCache (its threads log concurrently).
struct LogCapture {
  std::mutex mutex;
  std::vector<std::string> warnings;

  Config config(const std::string& cacheDir, int lockTimeoutMs = 60000) {
    Config c;
    c.cacheDir = cacheDir;
    c.lockTimeoutMs = lockTimeoutMs;
    c.logSink = [this](LogLevel level, const std::string& text) {
      std::lock_guard<std::mutex> lock(mutex);
      if (level == LogLevel::Warn)
        warnings.push_back(text);
    };
    return c;
  }
  std::string all() {
    std::lock_guard<std::mutex> lock(mutex);
    std::string out;
    for (const auto& w : warnings)
      out += "  warning: " + w + "\n";
    return out;
  }
};

/// A Compiler made in this (child) process, or nullopt with the reason said.
std::optional<Compiler> childCompiler(ChildChecks& check) {
  auto c = Compiler::create();
  if (!check(bool(c), "Compiler::create")) {
    say(check.fd, consumeToString(c.takeError()) + "\n");
    return std::nullopt;
  }
  return std::move(*c);
}

/// Whether `kernel` is the compiled form of `spec` under `compiler`.
bool isKernelOf(const KernelCache::KernelPtr& kernel, const KernelSpec& spec,
                const Compiler& compiler) {
  return kernel && kernel->key == test::keyOf(compiler, spec) &&
         kernel->spec.canonical() == spec.canonical() && kernel->cubin.size() > 4 &&
         std::equal(kernel->cubin.begin(), kernel->cubin.begin() + 4, "\177ELF") &&
         !kernel->ptx.empty();
}

/// The check every crash test ends with: a fresh process gets `spec` (from
/// disk or by compiling) well within the lock timeout. Reports elapsed_ms.
Finished getInFreshProcess(const std::string& dir, const KernelSpec& spec, int lockTimeoutMs) {
  Child child = startChild([&](int fd) {
    ChildChecks check{fd};
    auto compiler = childCompiler(check);
    if (!compiler)
      return 2;
    LogCapture log;
    KernelCache cache(log.config(dir, lockTimeoutMs), *compiler);
    const auto start = Clock::now();
    auto r = test::getSpec(cache, spec);
    const double ms = msSince(start);
    if (!check(bool(r), "get " + spec.label())) {
      say(fd, consumeToString(r.takeError()) + "\n");
      return 1;
    }
    check(isKernelOf(r->kernel, spec, *compiler), "the kernel is not the spec's");
    say(fd, "elapsed_ms=" + std::to_string(ms) + " source=" + toString(r->source) + "\n");
    say(fd, log.all());
    return check.exitCode();
  });
  return finish(child);
}

class CacheRobustness : public testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bqjit_cache_robustness_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    quiet_.logLevel = LogLevel::Quiet;
    disk_ = std::make_unique<DiskCache>(dir_, quiet_);
  }
  void TearDown() override {
    disk_.reset();
    llvm::consumeError(fs::removeTree(dir_));
  }

  std::vector<std::string> names(const char* sub) const {
    auto out = fs::listDirectory(disk_->root() + sub);
    std::sort(out.begin(), out.end());
    return out;
  }

  /// 8 processes x 4 threads ask for the same 20 specs on an empty directory,
  /// optionally while the parent collects garbage (lock files included) non-stop.
  void runFleet(bool collectGarbageMeanwhile);

  std::string dir_;
  Config quiet_;
  std::unique_ptr<DiskCache> disk_;
};

void CacheRobustness::runFleet(bool collectGarbageMeanwhile) {
  constexpr int kProcesses = 8, kThreads = 4, kSpecs = 20;
  int ready[2], go[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(go), 0);
  const auto start = Clock::now();
  std::vector<Child> children;
  for (int p = 0; p < kProcesses; ++p) {
    children.push_back(startChild([&, p](int fd) {
      ::close(go[1]); // else the parent's close would not release anyone
      ::close(ready[0]);
      ChildChecks check{fd};
      auto compiler = childCompiler(check);
      if (!compiler)
        return 2;
      LogCapture log;
      KernelCache cache(log.config(dir_), *compiler);
      say(ready[1], "r");
      char c;
      (void)!::read(go[0], &c, 1); // end of file: everyone starts now
      std::vector<std::vector<KernelCache::KernelPtr>> got(
          kThreads, std::vector<KernelCache::KernelPtr>(kSpecs));
      std::mutex errorsMutex;
      std::vector<std::string> errors;
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&, t] {
          std::vector<int> order(kSpecs);
          for (int i = 0; i < kSpecs; ++i)
            order[i] = i;
          std::mt19937 rng(static_cast<unsigned>(p * kThreads + t));
          std::shuffle(order.begin(), order.end(), rng);
          for (int i : order) {
            auto r = test::getSpec(cache, specNumber(i + 1));
            if (r) {
              got[t][i] = r->kernel;
              continue;
            }
            std::lock_guard<std::mutex> lock(errorsMutex);
            errors.push_back(consumeToString(r.takeError()));
          }
        });
      for (auto& th : threads)
        th.join();
      for (const auto& e : errors)
        check(false, "get: " + e);
      for (int i = 0; i < kSpecs; ++i) {
        check(isKernelOf(got[0][i], specNumber(i + 1), *compiler),
              "wrong kernel for " + specNumber(i + 1).label());
        for (int t = 1; t < kThreads; ++t)
          check(got[t][i] == got[0][i], "threads got different objects for one spec");
      }
      const CacheCounters n = cache.counters();
      // Each key is produced once per process: loaded from disk or compiled.
      check(n.compiles + n.diskHits == kSpecs, "compiles " + std::to_string(n.compiles) +
                                                   " + disk hits " + std::to_string(n.diskHits) +
                                                   " != " + std::to_string(kSpecs));
      check(log.warnings.empty(), "unexpected warnings:\n" + log.all());
      say(fd, "compiles=" + std::to_string(n.compiles) +
                  " disk_hits=" + std::to_string(n.diskHits) + "\n");
      return check.exitCode();
    }));
    ASSERT_GT(children.back().pid, 0);
  }
  ::close(ready[1]);
  ::close(go[0]);
  for (int p = 0; p < kProcesses; ++p) {
    char c;
    if (::read(ready[0], &c, 1) != 1)
      break; // a child died early; its report says why
  }
  ::close(ready[0]);
  std::atomic<bool> done{false};
  std::atomic<int> collections{0};
  std::thread collector;
  if (collectGarbageMeanwhile)
    collector = std::thread([&] {
      while (!done) {
        auto evicted = disk_->collectGarbage(0);
        if (evicted && evicted->empty())
          ++collections;
        else if (!evicted)
          llvm::consumeError(evicted.takeError());
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  ::close(go[1]);

  int64_t processCompiles = 0;
  for (auto& child : children) {
    Finished f = finish(child);
    EXPECT_TRUE(f.exitedZero()) << "status " << f.status << "\n" << f.report;
    processCompiles += std::atoll(field(f.report, "compiles").c_str());
  }
  done = true;
  if (collector.joinable())
    collector.join();
  const double wallMs = msSince(start);

  int64_t malformed = -1;
  const auto records = disk_->journal().read(&malformed);
  const CacheStats stats = disk_->journal().stats();
  EXPECT_EQ(stats.compiles, kSpecs);
  EXPECT_EQ(processCompiles, kSpecs);
  EXPECT_EQ(stats.evictions, 0);
  EXPECT_EQ(stats.corrupt, 0);
  EXPECT_EQ(malformed, 0);
  // Every process but the compiling one loaded each key from disk once.
  EXPECT_EQ(stats.hits, int64_t{kProcesses - 1} * kSpecs);
  EXPECT_GE(stats.misses, kSpecs);
  EXPECT_EQ(disk_->list().size(), static_cast<size_t>(kSpecs));
  const VerifyReport report = disk_->verify();
  EXPECT_EQ(report.checked, kSpecs);
  EXPECT_EQ(report.bad, 0) << (report.problems.empty() ? "" : report.problems.front());
  EXPECT_TRUE(names("/tmp").empty());
  if (collectGarbageMeanwhile)
    EXPECT_GT(collections.load(), 0);
  std::cout << "[ fleet    ] " << kProcesses << " processes x " << kThreads << " threads, "
            << kSpecs << " specs: " << stats.compiles << " compiles, " << stats.hits
            << " disk hits, " << records.size() << " journal records, " << wallMs << " ms"
            << (collectGarbageMeanwhile
                    ? ", " + std::to_string(collections.load()) + " collections meanwhile"
                    : std::string())
            << "\n";
}

TEST_F(CacheRobustness, FleetOnEmptyDirectoryCompilesEachKernelOnce) {
  runFleet(false);
}

// The same, while garbage collection deletes every lock file nobody holds:
// a process that opened a lock file just before it was deleted must not
// think it holds the key's lock (that would be a second compile).
TEST_F(CacheRobustness, FleetCompilesOnceWhileLockFilesAreCollected) {
  runFleet(true);
}

TEST_F(CacheRobustness, WriterKilledAtRandomTimesLeavesNoHalfEntry) {
  constexpr int kTries = 20;
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> delayMs(0, 150);
  RecordProperty("seed", std::to_string(seed));
  int killed = 0, publishedBeforeKill = 0, staleTemporaries = 0;
  double slowestMs = 0;
  for (int i = 0; i < kTries; ++i) {
    SCOPED_TRACE("try " + std::to_string(i) + ", seed " + std::to_string(seed));
    const KernelSpec spec = specNumber(i + 1); // a new key each time: a compile to interrupt
    Child writer = startChild([&](int fd) {
      ChildChecks check{fd};
      auto compiler = childCompiler(check);
      if (!compiler)
        return 2;
      KernelCache cache(LogCapture().config(dir_), *compiler);
      say(fd, "ready\n");
      auto r = test::getSpec(cache, spec);
      if (!r)
        llvm::consumeError(r.takeError());
      return r ? 0 : 1;
    });
    ASSERT_GT(writer.pid, 0);
    ASSERT_EQ(readLine(writer), "ready");
    std::this_thread::sleep_for(std::chrono::milliseconds(delayMs(rng)));
    ::kill(writer.pid, SIGKILL);
    Finished w = finish(writer);
    if (WIFSIGNALED(w.status))
      ++killed;
    else
      EXPECT_TRUE(w.exitedZero()) << w.report;

    // Whatever the moment, every entry a reader can see is whole.
    const VerifyReport seen = disk_->verify();
    EXPECT_EQ(seen.bad, 0) << (seen.problems.empty() ? "" : seen.problems.front());
    EXPECT_TRUE(seen.checked == i || seen.checked == i + 1) << seen.checked;
    publishedBeforeKill += seen.checked == i + 1;

    // The killed writer's lock died with it: no wait for the 60 s timeout.
    Finished reader = getInFreshProcess(dir_, spec, 60000);
    ASSERT_TRUE(reader.exitedZero()) << "status " << reader.status << "\n" << reader.report;
    const double ms = std::atof(field(reader.report, "elapsed_ms").c_str());
    EXPECT_LT(ms, 5000.0) << reader.report;
    slowestMs = std::max(slowestMs, ms);
    const VerifyReport after = disk_->verify();
    EXPECT_EQ(after.checked, i + 1);
    EXPECT_EQ(after.bad, 0);

    staleTemporaries += !names("/tmp").empty();
    auto evicted = disk_->collectGarbage(0);
    ASSERT_TRUE(bool(evicted)) << consumeToString(evicted.takeError());
    EXPECT_TRUE(evicted->empty());
    EXPECT_EQ(names("/tmp"), std::vector<std::string>{});
    EXPECT_EQ(names("/locks"), std::vector<std::string>{});
  }
  EXPECT_EQ(disk_->journal().stats().corrupt, 0);
  std::cout << "[ crash    ] seed " << seed << ": " << killed << "/" << kTries
            << " writers killed, " << publishedBeforeKill << " had published, " << staleTemporaries
            << " left a temporary; slowest recovery " << slowestMs << " ms\n";
}

TEST_F(CacheRobustness, WriterKilledWhileHoldingTheKeyLock) {
  const KernelSpec spec = specNumber(3);
  Child writer = startChild([&](int fd) {
    ChildChecks check{fd};
    auto compiler = childCompiler(check);
    if (!compiler)
      return 2;
    const std::string key = test::keyOf(*compiler, spec);
    DiskCache disk(dir_, quiet_);
    if (!check(!disk.prepare(), "prepare"))
      return 1;
    auto lock = disk.lockKey(key, 5000);
    if (!check(lock && lock->has_value(), "lockKey")) {
      if (!lock)
        llvm::consumeError(lock.takeError());
      return 1;
    }
    // Caught mid-publish: half a cubin and a torn metadata file.
    auto tmp = fs::TempDir::create(disk.root() + "/tmp", key + ".");
    if (!check(bool(tmp), "TempDir")) {
      llvm::consumeError(tmp.takeError());
      return 1;
    }
    const std::string half = "\177ELF" + std::string(500, 'x');
    check(!fs::writeFileSynced(tmp->path() + "/kernel.cubin", half.data(), half.size()),
          "write cubin");
    check(!fs::writeFileSynced(tmp->path() + "/meta.json", "{\"key\":", 7), "write meta");
    say(fd, key + "\n");
    for (;;)
      ::pause();
  });
  ASSERT_GT(writer.pid, 0);
  const std::string key = readLine(writer);
  ASSERT_EQ(key.size(), 32u) << key << finish(writer).report;
  const std::string lockPath = disk_->root() + "/locks/" + key + ".lock";

  // While it lives: its lock is held, its temporary and lock file are kept.
  {
    auto probe = FileLock::acquire(lockPath, 0);
    ASSERT_TRUE(bool(probe));
    EXPECT_FALSE(probe->has_value()) << "the writer's lock is not held";
  }
  auto evicted = disk_->collectGarbage(0);
  ASSERT_TRUE(bool(evicted));
  EXPECT_EQ(names("/tmp").size(), 1u);
  EXPECT_TRUE(fs::exists(lockPath));
  EXPECT_FALSE(fs::exists(disk_->entryDir(key)));

  ASSERT_EQ(::kill(writer.pid, SIGKILL), 0);
  Finished w = finish(writer);
  ASSERT_TRUE(WIFSIGNALED(w.status));
  EXPECT_FALSE(fs::exists(disk_->entryDir(key)));
  EXPECT_EQ(disk_->verify().checked, 0);

  // A new process compiles at once: the lock died with its holder.
  Finished reader = getInFreshProcess(dir_, spec, 60000);
  ASSERT_TRUE(reader.exitedZero()) << "status " << reader.status << "\n" << reader.report;
  EXPECT_EQ(field(reader.report, "source"), "compiled");
  const double ms = std::atof(field(reader.report, "elapsed_ms").c_str());
  EXPECT_LT(ms, 5000.0) << reader.report;
  EXPECT_TRUE(disk_->load(key).has_value());
  EXPECT_EQ(disk_->journal().stats().compiles, 1);

  // The dead writer's temporary and the unheld lock file are collected.
  ASSERT_EQ(names("/tmp").size(), 1u);
  evicted = disk_->collectGarbage(0);
  ASSERT_TRUE(bool(evicted));
  EXPECT_TRUE(evicted->empty());
  EXPECT_EQ(names("/tmp"), std::vector<std::string>{});
  EXPECT_EQ(names("/locks"), std::vector<std::string>{});
  EXPECT_EQ(disk_->verify().checked, 1);
  std::cout << "[ crash    ] recovery after a killed lock holder: " << ms << " ms\n";
}

TEST_F(CacheRobustness, GarbageCollectionRemovesOnlyUnheldLockFilesAndDeadTemporaries) {
  ASSERT_FALSE(bool(disk_->prepare()));
  const std::string a(32, 'a'), b(32, 'b'), c(32, 'c'), d(32, 'd');
  auto held = disk_->lockKey(a, 1000);
  ASSERT_TRUE(held && held->has_value());
  for (const auto& key : {b, c}) {
    auto released = disk_->lockKey(key, 1000);
    ASSERT_TRUE(released && released->has_value());
  }
  // d is held by another process.
  Child holder = startChild([&](int fd) -> int {
    auto lock = disk_->lockKey(d, 1000);
    const bool ok = lock && lock->has_value();
    if (!lock)
      llvm::consumeError(lock.takeError());
    say(fd, ok ? "held\n" : "failed\n");
    for (;;)
      ::pause();
  });
  ASSERT_EQ(readLine(holder), "held");

  // Temporaries of atomic rewrites (tuning records, journal compaction).
  const pid_t gone = ::fork();
  ASSERT_GE(gone, 0);
  if (gone == 0)
    ::_exit(0);
  ASSERT_EQ(::waitpid(gone, nullptr, 0), gone);
  const std::string deadSuffix = ".tmp." + std::to_string(gone) + ".00ff";
  const std::string liveSuffix = ".tmp." + std::to_string(::getpid()) + ".00ff";
  for (const auto& path :
       {disk_->root() + "/tuned/" + c + ".json" + deadSuffix,
        disk_->root() + "/tuned/" + c + ".json" + liveSuffix,
        disk_->root() + "/journal.log" + deadSuffix, disk_->root() + "/tuned/" + c + ".json"})
    std::ofstream(path) << "{}";

  auto evicted = disk_->collectGarbage(0);
  ASSERT_TRUE(bool(evicted));
  EXPECT_EQ(names("/locks"), (std::vector<std::string>{a + ".lock", d + ".lock"}));
  EXPECT_EQ(names("/tuned"), (std::vector<std::string>{c + ".json", c + ".json" + liveSuffix}));
  EXPECT_FALSE(fs::exists(disk_->root() + "/journal.log" + deadSuffix));
  // The kept lock files still exclude.
  auto probeA = disk_->lockKey(a, 0);
  ASSERT_TRUE(bool(probeA));
  EXPECT_FALSE(probeA->has_value());
  auto probeD = disk_->lockKey(d, 0);
  ASSERT_TRUE(bool(probeD));
  EXPECT_FALSE(probeD->has_value());

  held->reset();
  ASSERT_EQ(::kill(holder.pid, SIGKILL), 0);
  finish(holder);
  ASSERT_TRUE(bool(disk_->collectGarbage(0)));
  EXPECT_EQ(names("/locks"), std::vector<std::string>{});
  // A collected lock file is made again by the next locker.
  auto again = disk_->lockKey(a, 1000);
  ASSERT_TRUE(again && again->has_value());
  EXPECT_TRUE(fs::exists(disk_->root() + "/locks/" + a + ".lock"));
}

TEST_F(CacheRobustness, LockFileRemovalNeverLetsTwoHoldersIn) {
  // Lockers race with a collector that deletes the file whenever it is free.
  // A locker that opened the old file must notice and lock the new one.
  const std::string path = dir_ + "/key.lock";
  constexpr int kThreads = 4, kRounds = 300;
  std::atomic<int> inside{0}, overlaps{0}, entered{0}, removals{0};
  std::atomic<bool> done{false};
  std::thread collector([&] {
    while (!done)
      removals += FileLock::removeIfUnlocked(path);
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < kRounds; ++i) {
        auto lock = FileLock::acquire(path, 10000);
        if (!lock) {
          llvm::consumeError(lock.takeError());
          continue;
        }
        if (!*lock)
          continue;
        if (inside.fetch_add(1) != 0)
          ++overlaps;
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        inside.fetch_sub(1);
        ++entered;
      }
    });
  for (auto& t : threads)
    t.join();
  done = true;
  collector.join();
  EXPECT_EQ(entered.load(), kThreads * kRounds);
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_GT(removals.load(), 0) << "the race was not exercised";
  std::cout << "[ locks    ] " << entered.load() << " critical sections, " << removals.load()
            << " lock files removed meanwhile, " << overlaps.load() << " overlaps\n";
}

TEST_F(CacheRobustness, FullDiskKeepsKernelsInMemoryAndWarnsOnce) {
  Child child = startChild([&](int fd) {
    ChildChecks check{fd};
    auto compiler = childCompiler(check);
    if (!compiler)
      return 2;
    LogCapture log;
    KernelCache cache(log.config(dir_), *compiler);
    // Files may not grow past 4 KiB: writing a cubin fails with EFBIG.
    struct rlimit limit;
    ::getrlimit(RLIMIT_FSIZE, &limit);
    limit.rlim_cur = 4096;
    check(::setrlimit(RLIMIT_FSIZE, &limit) == 0, "setrlimit");
    ::signal(SIGXFSZ, SIG_IGN);
    const KernelSpec a = specNumber(1), b = specNumber(2);
    auto ra = test::getSpec(cache, a);
    if (check(bool(ra), "get a")) {
      check(ra->source == KernelSource::Compiled, "a compiled");
      check(isKernelOf(ra->kernel, a, *compiler), "a is a's kernel");
      say(fd, "cubin_bytes=" + std::to_string(ra->kernel->cubin.size()) + "\n");
    } else {
      say(fd, consumeToString(ra.takeError()) + "\n");
    }
    auto rb = test::getSpec(cache, b);
    if (check(bool(rb), "get b"))
      check(rb->source == KernelSource::Compiled && isKernelOf(rb->kernel, b, *compiler),
            "b compiled");
    else
      say(fd, consumeToString(rb.takeError()) + "\n");
    auto again = test::getSpec(cache, a);
    check(again && again->source == KernelSource::Memory, "a again from memory");
    if (!again)
      llvm::consumeError(again.takeError());
    check(cache.counters().compiles == 2, "two compiles");
    std::lock_guard<std::mutex> lock(log.mutex);
    check(log.warnings.size() == 1, "one warning, got " + std::to_string(log.warnings.size()));
    if (!log.warnings.empty()) {
      const std::string& w = log.warnings[0];
      check(w.find(std::strerror(EFBIG)) != std::string::npos, "the warning says why: " + w);
      check(w.find("memory only") != std::string::npos, "the warning says what now: " + w);
    }
    for (const auto& w : log.warnings)
      say(fd, "  warning: " + w + "\n");
    return check.exitCode();
  });
  ASSERT_GT(child.pid, 0);
  Finished f = finish(child);
  ASSERT_TRUE(f.exitedZero()) << "status " << f.status << "\n" << f.report;
  EXPECT_GT(std::atoll(field(f.report, "cubin_bytes").c_str()), 4096) << f.report;
  EXPECT_EQ(names("/entries"), std::vector<std::string>{});
  EXPECT_EQ(names("/tmp"), std::vector<std::string>{});
  EXPECT_EQ(disk_->verify().checked, 0);
  EXPECT_EQ(disk_->journal().stats().compiles, 0); // nothing was published
}

TEST_F(CacheRobustness, FullDiskTearsNoJournalRecordAndLeavesNoPartialFile) {
  ASSERT_FALSE(bool(disk_->prepare()));
  const Journal& journal = disk_->journal();
  for (int i = 0; i < 3; ++i)
    ASSERT_FALSE(bool(journal.append(CacheEvent::Hit, std::string(32, 'a'))));
  const uint64_t before = fs::treeBytes(journal.path());
  const std::string big = disk_->root() + "/tuned/big.json";
  Child child = startChild([&](int fd) {
    ChildChecks check{fd};
    struct rlimit limit;
    ::getrlimit(RLIMIT_FSIZE, &limit);
    limit.rlim_cur = before + 20; // room for 20 bytes of the next record
    check(::setrlimit(RLIMIT_FSIZE, &limit) == 0, "setrlimit");
    ::signal(SIGXFSZ, SIG_IGN);
    llvm::Error torn = journal.append(CacheEvent::Miss, std::string(32, 'b'));
    check(bool(torn), "the append fails");
    if (torn)
      say(fd, consumeToString(std::move(torn)) + "\n");
    check(fs::treeBytes(journal.path()) == before + 20, "a fragment was written");
    const std::string text(10000, 'x');
    llvm::Error err = fs::writeFileSynced(big, text.data(), text.size());
    check(bool(err), "the big write fails");
    llvm::consumeError(std::move(err));
    return check.exitCode();
  });
  ASSERT_GT(child.pid, 0);
  Finished f = finish(child);
  ASSERT_TRUE(f.exitedZero()) << "status " << f.status << "\n" << f.report;
  EXPECT_FALSE(fs::exists(big)) << "a partial file was left";

  // Space is back: the next record follows the fragment on its line, and is
  // still read (only the fragment is lost).
  ASSERT_FALSE(bool(journal.append(CacheEvent::Compile, std::string(32, 'c'), 42.0)));
  int64_t malformed = -1;
  const auto records = journal.read(&malformed);
  EXPECT_EQ(malformed, 1);
  ASSERT_EQ(records.size(), 4u);
  EXPECT_EQ(records.back().event, CacheEvent::Compile);
  EXPECT_EQ(records.back().key, std::string(32, 'c'));
  EXPECT_EQ(journal.stats().compiles, 1);
  // Compaction keeps the recovered record and drops the fragment.
  ASSERT_FALSE(bool(journal.compact({std::string(32, 'c')})));
  const auto compacted = journal.read(&malformed);
  EXPECT_EQ(malformed, 0);
  ASSERT_EQ(compacted.size(), 1u);
  EXPECT_DOUBLE_EQ(compacted[0].compileMs, 42.0);
}

TEST_F(CacheRobustness, JournalCompactionLosesNoConcurrentRecord) {
  // Four processes append, and each compacts whenever the journal passes
  // 4 KiB (every 40 records or so), while the others keep appending: a record
  // appended during a compaction must land in the new file, not the old one.
  constexpr int kProcesses = 4, kRecords = 400;
  ASSERT_FALSE(bool(disk_->prepare()));
  const std::string path = disk_->journal().path();
  std::vector<Child> children;
  for (int p = 0; p < kProcesses; ++p) {
    children.push_back(startChild([&, p](int fd) {
      ChildChecks check{fd};
      Journal journal(path, nullptr, 4 * 1024);
      const std::string key(32, static_cast<char>('a' + p));
      for (int i = 0; i < kRecords; ++i) {
        llvm::Error err = journal.append(i % 4 ? CacheEvent::Hit : CacheEvent::Compile, key, 1.0);
        if (!check(!err, "append " + std::to_string(i))) {
          say(fd, consumeToString(std::move(err)) + "\n");
          break;
        }
      }
      return check.exitCode();
    }));
    ASSERT_GT(children.back().pid, 0);
  }
  for (Child& c : children) {
    Finished f = finish(c);
    EXPECT_TRUE(f.exitedZero()) << "status " << f.status << "\n" << f.report;
  }
  int64_t malformed = -1;
  disk_->journal().read(&malformed);
  EXPECT_EQ(malformed, 0);
  const CacheStats s = disk_->journal().stats();
  EXPECT_EQ(s.hits + s.compiles, kProcesses * kRecords);
  EXPECT_EQ(s.compiles, kProcesses * kRecords / 4);
  EXPECT_DOUBLE_EQ(s.compileMsTotal, kProcesses * kRecords / 4 * 1.0);
  EXPECT_EQ(disk_->journal().lastUse().size(), static_cast<size_t>(kProcesses));
  EXPECT_LT(disk_->journal().bytes(), 8u * 1024);
  // No temporary of a compaction is left behind.
  for (const auto& name : fs::listDirectory(disk_->root()))
    EXPECT_EQ(name.find(".tmp."), std::string::npos) << name;
}

TEST_F(CacheRobustness, ReaderOutOfDescriptorsLeavesTheEntryAlone) {
  const KernelSpec spec = specNumber(4);
  Finished prewarm = getInFreshProcess(dir_, spec, 60000);
  ASSERT_TRUE(prewarm.exitedZero()) << prewarm.report;
  const auto keys = names("/entries");
  ASSERT_EQ(keys.size(), 1u);
  const std::string key = keys[0];
  Child child = startChild([&](int fd) {
    ChildChecks check{fd};
    std::vector<std::string> warnings;
    Config config;
    config.logSink = [&](LogLevel, const std::string& text) { warnings.push_back(text); };
    DiskCache disk(dir_, config);
    // No descriptor left: every open fails with EMFILE.
    const int lowest = ::dup(0);
    ::close(lowest);
    struct rlimit limit;
    ::getrlimit(RLIMIT_NOFILE, &limit);
    const rlim_t saved = limit.rlim_cur;
    limit.rlim_cur = static_cast<rlim_t>(lowest);
    check(::setrlimit(RLIMIT_NOFILE, &limit) == 0, "setrlimit");
    std::string problem;
    check(!disk.load(key, &problem).has_value(), "nothing loads without descriptors");
    limit.rlim_cur = saved;
    check(::setrlimit(RLIMIT_NOFILE, &limit) == 0, "setrlimit back");
    check(problem.empty(), "not reported as corrupt: " + problem);
    check(warnings.size() == 1 && warnings[0].find("cannot read cache entry " + key) == 0,
          "one warning that says so");
    check(disk.load(key).has_value(), "it loads once descriptors are back");
    for (const auto& w : warnings)
      say(fd, "  warning: " + w + "\n");
    return check.exitCode();
  });
  ASSERT_GT(child.pid, 0);
  Finished f = finish(child);
  ASSERT_TRUE(f.exitedZero()) << "status " << f.status << "\n" << f.report;
  EXPECT_TRUE(fs::exists(disk_->entryDir(key)));
  EXPECT_EQ(disk_->verify().bad, 0);
  EXPECT_EQ(disk_->journal().stats().corrupt, 0);
}

TEST_F(CacheRobustness, EntriesPathThatIsAFileWorksFromMemoryAndWarnsOnce) {
  // Root ignores permissions; a regular file where entries/ should be is
  // unwritable for everyone.
  ASSERT_FALSE(bool(fs::createDirectories(disk_->root())));
  const std::string entries = disk_->root() + "/entries";
  { std::ofstream(entries) << "not a directory"; }
  Child child = startChild([&](int fd) {
    ChildChecks check{fd};
    auto compiler = childCompiler(check);
    if (!compiler)
      return 2;
    LogCapture log;
    KernelCache cache(log.config(dir_), *compiler);
    auto a = test::getSpec(cache, specNumber(1));
    check(a && a->source == KernelSource::Compiled, "a compiled");
    auto again = test::getSpec(cache, specNumber(1));
    check(again && again->source == KernelSource::Memory, "a again from memory");
    auto b = test::getSpec(cache, specNumber(2));
    check(b && b->source == KernelSource::Compiled, "b compiled");
    for (auto* r : {&a, &again, &b})
      if (!*r)
        say(fd, consumeToString(r->takeError()) + "\n");
    std::lock_guard<std::mutex> lock(log.mutex);
    check(log.warnings.size() == 1, "one warning, got " + std::to_string(log.warnings.size()));
    if (!log.warnings.empty())
      check(log.warnings[0].find("memory only") != std::string::npos &&
                log.warnings[0].find(entries) != std::string::npos,
            "the warning names the path: " + log.warnings[0]);
    return check.exitCode();
  });
  ASSERT_GT(child.pid, 0);
  Finished f = finish(child);
  ASSERT_TRUE(f.exitedZero()) << "status " << f.status << "\n" << f.report;
  std::ifstream in(entries);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "not a directory");
}

TEST_F(CacheRobustness, UnwritablePrewarmedCacheStillServesFromDisk) {
  const KernelSpec warm = specNumber(1), cold = specNumber(2);
  Finished prewarm = getInFreshProcess(dir_, warm, 60000);
  ASSERT_TRUE(prewarm.exitedZero()) << prewarm.report;
  ASSERT_EQ(disk_->verify().checked, 1);
  // A shipped, read-only image: writers' directories cannot be made.
  ASSERT_FALSE(bool(fs::removeTree(disk_->root() + "/tmp")));
  { std::ofstream(disk_->root() + "/tmp") << "read-only"; }
  Child child = startChild([&](int fd) {
    ChildChecks check{fd};
    auto compiler = childCompiler(check);
    if (!compiler)
      return 2;
    LogCapture log;
    KernelCache cache(log.config(dir_), *compiler);
    auto w = test::getSpec(cache, warm);
    check(w && w->source == KernelSource::Disk && isKernelOf(w->kernel, warm, *compiler),
          "the prewarmed kernel from disk");
    auto c = test::getSpec(cache, cold);
    check(c && c->source == KernelSource::Compiled, "a new kernel compiled");
    auto again = test::getSpec(cache, cold);
    check(again && again->source == KernelSource::Memory, "and then from memory");
    for (auto* r : {&w, &c, &again})
      if (!*r)
        say(fd, consumeToString(r->takeError()) + "\n");
    std::lock_guard<std::mutex> lock(log.mutex);
    check(log.warnings.size() == 1, "one warning, got " + std::to_string(log.warnings.size()));
    return check.exitCode();
  });
  ASSERT_GT(child.pid, 0);
  Finished f = finish(child);
  ASSERT_TRUE(f.exitedZero()) << "status " << f.status << "\n" << f.report;
  EXPECT_EQ(disk_->verify().checked, 1);
}

TEST_F(CacheRobustness, StuckLockHolderDoesNotBlockPastTheTimeout) {
  constexpr int kTimeoutMs = 200;
  Child child = startChild([&](int fd) {
    ChildChecks check{fd};
    auto compiler = childCompiler(check);
    if (!compiler)
      return 2;
    const KernelSpec a = specNumber(5), b = specNumber(6);
    const std::string keyA = test::keyOf(*compiler, a), keyB = test::keyOf(*compiler, b);
    DiskCache disk(dir_, quiet_);
    check(!disk.prepare(), "prepare");
    // Another process sits on both keys' locks for 2 s (its own descriptions).
    int held[2];
    check(::pipe(held) == 0, "pipe");
    const pid_t holder = ::fork();
    if (holder == 0) {
      auto la = disk.lockKey(keyA, 1000);
      auto lb = disk.lockKey(keyB, 1000);
      const bool ok = la && la->has_value() && lb && lb->has_value();
      say(held[1], ok ? "y" : "n");
      std::this_thread::sleep_for(std::chrono::seconds(2));
      ::_exit(ok ? 0 : 1);
    }
    char c = 0;
    check(::read(held[0], &c, 1) == 1 && c == 'y', "the holder has the locks");
    LogCapture log;
    KernelCache cache(log.config(dir_, kTimeoutMs), *compiler);
    for (const KernelSpec* spec : {&a, &b}) {
      const auto start = Clock::now();
      auto r = test::getSpec(cache, *spec);
      const double ms = msSince(start);
      say(fd, "elapsed_ms=" + std::to_string(ms) + "\n");
      if (!check(bool(r), "get " + spec->label())) {
        say(fd, consumeToString(r.takeError()) + "\n");
        continue;
      }
      check(r->source == KernelSource::Compiled && isKernelOf(r->kernel, *spec, *compiler),
            "a correct kernel, compiled privately");
      check(ms >= kTimeoutMs - 20, "waited for the lock first: " + std::to_string(ms) + " ms");
      check(ms < 1500, "not blocked by the holder: " + std::to_string(ms) + " ms");
    }
    check(::kill(holder, 0) == 0, "the holder still holds the locks");
    int status = 0;
    check(::waitpid(holder, &status, 0) == holder && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the holder exits cleanly");
    // The private compiles were published for everyone else.
    check(disk.load(keyA).has_value() && disk.load(keyB).has_value(), "both published");
    std::lock_guard<std::mutex> lock(log.mutex);
    check(log.warnings.size() == 1, "one warning, got " + std::to_string(log.warnings.size()));
    if (!log.warnings.empty())
      check(log.warnings[0].find("200 ms") != std::string::npos &&
                log.warnings[0].find("compiling privately") != std::string::npos,
            "the warning: " + log.warnings[0]);
    return check.exitCode();
  });
  ASSERT_GT(child.pid, 0);
  Finished f = finish(child);
  ASSERT_TRUE(f.exitedZero()) << "status " << f.status << "\n" << f.report;
  EXPECT_EQ(disk_->verify().checked, 2);
  EXPECT_EQ(disk_->journal().stats().compiles, 2);
  std::cout << "[ lock     ] get() with a stuck holder: " << f.report;
}

} // namespace
} // namespace bqjit
