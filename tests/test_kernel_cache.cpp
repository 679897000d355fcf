// KernelCache: memory, then disk, then NVRTC; one compile per key; strict
// mode; an unwritable cache directory; the size limit.
#include "cache/kernel_cache.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "core/fs_util.hpp"
#include "planner/launch_heuristic.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

KernelSpec smallSpec(int hidden = 256) {
  KernelSpec s;
  s.hidden = hidden;
  s.groupSize = 128;
  s.arch = "sm_90";
  s.shape = chooseLaunchShape(s); // resolved, as the planner hands it over
  return s;
}

KernelIdentity identityOf(const Compiler& compiler, const KernelSpec& resolved) {
  auto id = compiler.identify(resolved);
  if (!id) {
    ADD_FAILURE() << consumeToString(id.takeError());
    return {};
  }
  return *id;
}

class KernelCacheTest : public testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bqjit_kernel_cache_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto c = Compiler::create();
    ASSERT_TRUE(bool(c)) << consumeToString(c.takeError());
    compiler_.emplace(std::move(*c));
  }
  void TearDown() override { llvm::consumeError(fs::removeTree(dir_)); }

  /// A config on `cacheDir` whose log lines land in warnings_ (thread-safe).
  Config config(const std::string& cacheDir) {
    Config c;
    c.cacheDir = cacheDir;
    c.logSink = [this](LogLevel level, const std::string& text) {
      std::lock_guard<std::mutex> lock(logMutex_);
      if (level == LogLevel::Warn)
        warnings_.push_back(text);
    };
    return c;
  }
  std::unique_ptr<KernelCache> makeCache(Config c) {
    return std::make_unique<KernelCache>(std::move(c), *compiler_);
  }
  KernelCache::Result getOk(KernelCache& cache, const KernelSpec& spec) {
    auto r = cache.get(identityOf(*compiler_, spec));
    if (!r) {
      ADD_FAILURE() << spec.label() << ": " << consumeToString(r.takeError());
      return {nullptr, KernelSource::Compiled};
    }
    return *r;
  }

  std::string dir_;
  std::optional<Compiler> compiler_;
  std::mutex logMutex_;
  std::vector<std::string> warnings_;
};

TEST_F(KernelCacheTest, MemoryThenDiskThenCompile) {
  const KernelSpec spec = smallSpec();
  std::string key;
  std::vector<char> cubin;
  {
    auto cache = makeCache(config(dir_));
    ASSERT_NE(cache->disk(), nullptr);
    auto first = getOk(*cache, spec);
    ASSERT_TRUE(first.kernel);
    EXPECT_EQ(first.source, KernelSource::Compiled);
    CacheCounters c = cache->counters();
    EXPECT_EQ(c.misses, 1);
    EXPECT_EQ(c.compiles, 1);
    EXPECT_EQ(c.diskHits, 0);
    EXPECT_EQ(c.memoryHits, 0);
    EXPECT_GT(c.compileMs, 0.0);
    EXPECT_EQ(first.kernel->spec, spec);
    key = first.kernel->key;
    cubin = first.kernel->cubin;
    EXPECT_EQ(key, identityOf(*compiler_, spec).key);
    EXPECT_TRUE(fs::exists(cache->disk()->entryDir(key)));

    auto second = getOk(*cache, spec);
    EXPECT_EQ(second.source, KernelSource::Memory);
    EXPECT_EQ(second.kernel, first.kernel); // the same object
    c = cache->counters();
    EXPECT_EQ(c.memoryHits, 1);
    EXPECT_EQ(c.compiles, 1);
    EXPECT_EQ(c.misses, 1);
  }
  // A new process (a new cache on the same directory) reads it from disk.
  auto cache = makeCache(config(dir_));
  auto third = getOk(*cache, spec);
  ASSERT_TRUE(third.kernel);
  EXPECT_EQ(third.source, KernelSource::Disk);
  EXPECT_EQ(third.kernel->key, key);
  EXPECT_EQ(third.kernel->cubin, cubin);
  const CacheCounters c = cache->counters();
  EXPECT_EQ(c.diskHits, 1);
  EXPECT_EQ(c.compiles, 0);
  EXPECT_EQ(c.misses, 0);
  EXPECT_EQ(getOk(*cache, spec).source, KernelSource::Memory);

  const CacheStats stats = cache->disk()->journal().stats();
  EXPECT_EQ(stats.compiles, 1);
  EXPECT_EQ(stats.hits, 1);
  EXPECT_EQ(stats.misses, 1);
  EXPECT_EQ(stats.corrupt, 0);
  EXPECT_GT(stats.compileMsTotal, 0.0);
  EXPECT_TRUE(warnings_.empty()) << warnings_.front();
}

// find() serves what memory or disk hold and never compiles (the runtime
// uses it to tell which variants of a new spec are at hand).
TEST_F(KernelCacheTest, FindServesMemoryAndDiskAndNeverCompiles) {
  const KernelSpec spec = smallSpec();
  const KernelIdentity id = identityOf(*compiler_, spec);
  {
    auto cache = makeCache(config(dir_));
    EXPECT_EQ(cache->find(id), nullptr);
    CacheCounters c = cache->counters();
    EXPECT_EQ(c.compiles, 0);
    EXPECT_EQ(c.misses, 0);
    auto got = getOk(*cache, spec);
    EXPECT_EQ(cache->find(id), got.kernel); // memory: the same object
    EXPECT_EQ(cache->counters().memoryHits, 1);
  }
  auto cache = makeCache(config(dir_));
  auto fromDisk = cache->find(id);
  ASSERT_NE(fromDisk, nullptr);
  EXPECT_EQ(fromDisk->key, id.key);
  EXPECT_EQ(cache->counters().diskHits, 1);
  EXPECT_EQ(cache->counters().compiles, 0);
  // Kept in memory: get() now hits memory.
  EXPECT_EQ(getOk(*cache, spec).source, KernelSource::Memory);
}

TEST_F(KernelCacheTest, ConcurrentRequestsCompileOnce) {
  auto cache = makeCache(config(dir_));
  const KernelIdentity id = identityOf(*compiler_, smallSpec(512));
  constexpr int kThreads = 8;
  std::mutex m;
  std::condition_variable cv;
  int waiting = 0;
  bool go = false;
  std::vector<KernelCache::Result> results(kThreads);
  std::vector<std::string> errors;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      {
        std::unique_lock<std::mutex> lock(m);
        ++waiting;
        cv.notify_all();
        cv.wait(lock, [&] { return go; });
      }
      auto r = cache->get(id);
      std::lock_guard<std::mutex> lock(m);
      if (r)
        results[t] = *r;
      else
        errors.push_back(consumeToString(r.takeError()));
    });
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return waiting == kThreads; });
    go = true;
    cv.notify_all();
  }
  for (auto& t : threads)
    t.join();
  ASSERT_TRUE(errors.empty()) << errors.front();
  const CacheCounters c = cache->counters();
  EXPECT_EQ(c.compiles, 1);
  EXPECT_EQ(c.misses, 1);
  int compiled = 0;
  for (const auto& r : results) {
    ASSERT_TRUE(r.kernel);
    EXPECT_EQ(r.kernel, results[0].kernel);
    compiled += r.source == KernelSource::Compiled;
  }
  EXPECT_EQ(compiled, 1);
  EXPECT_EQ(cache->disk()->journal().stats().compiles, 1);
}

TEST_F(KernelCacheTest, NoCompileOnEmptyCacheIsNotInCache) {
  Config c = config(dir_);
  c.noCompile = true;
  auto cache = makeCache(c);
  const KernelIdentity id = identityOf(*compiler_, smallSpec(384));
  auto r = cache->get(id);
  ASSERT_FALSE(bool(r));
  std::string message;
  EXPECT_EQ(consumeError(r.takeError(), &message), ErrorCode::NotInCache);
  EXPECT_TRUE(contains(message, id.spec.canonical()));
  EXPECT_TRUE(contains(message, id.key));
  EXPECT_TRUE(contains(message, dir_));
  EXPECT_TRUE(contains(message, "BQJIT_NO_COMPILE"));
  EXPECT_EQ(cache->counters().compiles, 0);
  EXPECT_EQ(cache->counters().misses, 1);
  // Asking again is the same error, not a stale in-flight result.
  auto again = cache->get(id);
  ASSERT_FALSE(bool(again));
  EXPECT_EQ(consumeError(again.takeError(), nullptr), ErrorCode::NotInCache);
}

TEST_F(KernelCacheTest, NoCompileServesPrewarmedKernels) {
  const KernelSpec spec = smallSpec();
  {
    auto warm = makeCache(config(dir_));
    ASSERT_TRUE(getOk(*warm, spec).kernel);
  }
  Config c = config(dir_);
  c.noCompile = true;
  auto strict = makeCache(c);
  auto r = getOk(*strict, spec);
  EXPECT_EQ(r.source, KernelSource::Disk);
  EXPECT_EQ(strict->counters().compiles, 0);
}

TEST_F(KernelCacheTest, UnwritableCacheDirWorksFromMemoryAndWarnsOnce) {
  // A directory below a regular file can never be created, even by root.
  const std::string file = dir_ + "/a_file";
  { std::ofstream(file) << "x"; }
  auto cache = makeCache(config(file + "/cache"));
  auto a = getOk(*cache, smallSpec(256));
  ASSERT_TRUE(a.kernel);
  EXPECT_EQ(a.source, KernelSource::Compiled);
  EXPECT_EQ(getOk(*cache, smallSpec(256)).source, KernelSource::Memory);
  auto b = getOk(*cache, smallSpec(512));
  EXPECT_EQ(b.source, KernelSource::Compiled);
  EXPECT_EQ(cache->counters().compiles, 2);
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_TRUE(contains(warnings_[0], file + "/cache"));
  EXPECT_TRUE(contains(warnings_[0], "memory only"));
}

TEST_F(KernelCacheTest, WorldWritableCacheIsRefusedCompiledIntoMemoryWithOneWarning) {
  const KernelSpec spec = smallSpec();
  std::string key;
  {
    auto warm = makeCache(config(dir_));
    key = getOk(*warm, spec).kernel->key;
  }
  const std::string entries = dir_ + "/v1/entries";
  ASSERT_EQ(::chmod(entries.c_str(), 0777), 0);
  warnings_.clear();
  auto cache = makeCache(config(dir_));
  EXPECT_FALSE(cache->diskRefusal().empty());
  auto a = getOk(*cache, spec);
  EXPECT_EQ(a.source, KernelSource::Compiled) << "loaded from a world-writable cache";
  EXPECT_TRUE(contains(a.notStored, entries));
  EXPECT_EQ(getOk(*cache, smallSpec(512)).source, KernelSource::Compiled);
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_TRUE(contains(warnings_[0], "'" + entries + "' (owner uid "));
  EXPECT_TRUE(contains(warnings_[0], "mode 0777"));
  EXPECT_TRUE(contains(warnings_[0], "fix: chmod o-w '" + entries + "'"));
  EXPECT_TRUE(contains(warnings_[0], "compiled into memory only"));
  // Nothing was written into it: no new entry, no journal line.
  EXPECT_EQ(fs::listDirectory(entries).size(), 1u);
  EXPECT_EQ(cache->disk()->journal().stats().compiles, 1);
}

TEST_F(KernelCacheTest, RefusedCacheUnderNoCompileIsAnErrorNamingWhy) {
  const KernelSpec spec = smallSpec();
  {
    auto warm = makeCache(config(dir_));
    ASSERT_TRUE(getOk(*warm, spec).kernel);
  }
  ASSERT_EQ(::chmod(dir_.c_str(), 0775), 0);
  Config c = config(dir_);
  c.noCompile = true;
  auto strict = makeCache(c);
  auto r = strict->get(identityOf(*compiler_, spec));
  ASSERT_FALSE(bool(r));
  std::string message;
  EXPECT_EQ(consumeError(r.takeError(), &message), ErrorCode::NotInCache);
  EXPECT_TRUE(contains(message, "BQJIT_NO_COMPILE"));
  EXPECT_TRUE(contains(message, "'" + dir_ + "' (owner uid "));
  EXPECT_TRUE(contains(message, "writable by its group"));
  EXPECT_EQ(strict->counters().compiles, 0);
}

TEST_F(KernelCacheTest, EntryWritableByOthersIsRecompiledAndReplaced) {
  const KernelSpec spec = smallSpec();
  std::string key;
  {
    auto warm = makeCache(config(dir_));
    key = getOk(*warm, spec).kernel->key;
  }
  const std::string entry = dir_ + "/v1/entries/" + key;
  ASSERT_EQ(::chmod(entry.c_str(), 0777), 0);
  auto cache = makeCache(config(dir_));
  auto r = getOk(*cache, spec);
  EXPECT_EQ(r.source, KernelSource::Compiled);
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_TRUE(contains(warnings_[0], key + " is refused"));
  EXPECT_TRUE(contains(warnings_[0], "writable by others"));
  struct stat st;
  ASSERT_EQ(::stat(entry.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u) << "replaced by a trusted entry";
  EXPECT_EQ(cache->disk()->verify().bad, 0);
}

TEST_F(KernelCacheTest, NoCacheDirIsMemoryOnly) {
  auto cache = makeCache(config(""));
  EXPECT_EQ(cache->disk(), nullptr);
  EXPECT_EQ(getOk(*cache, smallSpec()).source, KernelSource::Compiled);
  EXPECT_EQ(getOk(*cache, smallSpec()).source, KernelSource::Memory);
  EXPECT_TRUE(warnings_.empty());
}

TEST_F(KernelCacheTest, CorruptDiskEntryIsRecompiled) {
  const KernelSpec spec = smallSpec();
  std::string key;
  {
    auto cache = makeCache(config(dir_));
    key = getOk(*cache, spec).kernel->key;
  }
  auto cache = makeCache(config(dir_));
  const std::string cubinPath = cache->disk()->entryDir(key) + "/kernel.cubin";
  {
    std::fstream f(cubinPath, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(64);
    const char byte = static_cast<char>(f.get());
    f.seekp(64);
    f.put(static_cast<char>(byte ^ 0x01));
    ASSERT_TRUE(f.good());
  }
  auto r = getOk(*cache, spec);
  EXPECT_EQ(r.source, KernelSource::Compiled);
  EXPECT_EQ(cache->counters().compiles, 1);
  EXPECT_EQ(cache->disk()->journal().stats().corrupt, 1);
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_TRUE(contains(warnings_[0], key));
  // Republished whole.
  EXPECT_EQ(cache->disk()->verify().bad, 0);
}

TEST_F(KernelCacheTest, SizeLimitEvictsOthersButKeepsTheNewKernel) {
  Config c = config(dir_);
  c.maxCacheBytes = 1; // every entry is over it
  auto cache = makeCache(c);
  const std::string a = getOk(*cache, smallSpec(256)).kernel->key;
  EXPECT_TRUE(fs::exists(cache->disk()->entryDir(a)));
  const std::string b = getOk(*cache, smallSpec(512)).kernel->key;
  EXPECT_FALSE(fs::exists(cache->disk()->entryDir(a)));
  EXPECT_TRUE(fs::exists(cache->disk()->entryDir(b)));
  EXPECT_EQ(cache->disk()->journal().stats().evictions, 1);
  // Memory still has the evicted kernel.
  EXPECT_EQ(getOk(*cache, smallSpec(256)).source, KernelSource::Memory);
}

TEST(KernelCacheProcesses, TwoProcessesCompileOnce) {
  // Two processes ask for the same new kernel at once: one compiles under
  // the key's lock, the other waits for it and loads the published entry.
  char tmpl[] = "/tmp/bqjit_kernel_cache_procs_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  std::vector<pid_t> children;
  for (int i = 0; i < 2; ++i) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(go[1]);
      char c;
      if (::read(go[0], &c, 1) != 1)
        ::_exit(10);
      auto compiler = Compiler::create();
      if (!compiler) {
        llvm::consumeError(compiler.takeError());
        ::_exit(11);
      }
      Config config;
      config.cacheDir = dir;
      config.logLevel = LogLevel::Quiet;
      KernelCache cache(config, *compiler);
      auto id = compiler->identify(smallSpec(768));
      if (!id) {
        llvm::consumeError(id.takeError());
        ::_exit(14);
      }
      auto r = cache.get(*id);
      if (!r) {
        llvm::consumeError(r.takeError());
        ::_exit(12);
      }
      ::_exit(r->source == KernelSource::Compiled ? 0 : r->source == KernelSource::Disk ? 1 : 13);
    }
    children.push_back(pid);
  }
  ::close(go[0]);
  ASSERT_EQ(::write(go[1], "xx", 2), 2); // release both at once
  ::close(go[1]);
  std::vector<int> codes;
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    codes.push_back(WEXITSTATUS(status));
  }
  std::sort(codes.begin(), codes.end());
  EXPECT_EQ(codes, (std::vector<int>{0, 1})) << "exit codes: 0 compiled, 1 disk, >= 10 error";
  Config config;
  DiskCache disk(dir, config);
  const CacheStats stats = disk.journal().stats();
  EXPECT_EQ(stats.compiles, 1);
  EXPECT_EQ(stats.hits, 1);
  EXPECT_EQ(disk.list().size(), 1u);
  llvm::consumeError(fs::removeTree(dir));
}

} // namespace
} // namespace bqjit
