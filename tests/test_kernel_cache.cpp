// KernelCache: memory, then disk, then NVRTC; one compile per key; strict
// mode; an unwritable cache directory; tuned launch shapes.
#include "cache/kernel_cache.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "cache/fs_util.hpp"
#include "jit/launch_heuristic.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

KernelSpec smallSpec(int hidden = 256) {
  KernelSpec s;
  s.hidden = hidden;
  s.groupSize = 128;
  s.arch = "sm_90";
  return s;
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
    auto r = cache.get(spec);
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
    ASSERT_TRUE(first.kernel->spec.shape.has_value()); // resolved
    EXPECT_EQ(*first.kernel->spec.shape, chooseLaunchShape(spec));
    key = first.kernel->key;
    cubin = first.kernel->cubin;
    EXPECT_EQ(key, compiler_->cacheKey(resolveShape(spec)));
    EXPECT_TRUE(fs::exists(cache->disk()->entryDir(key)));

    auto second = getOk(*cache, spec);
    EXPECT_EQ(second.source, KernelSource::Memory);
    EXPECT_EQ(second.kernel, first.kernel); // the same object
    c = cache->counters();
    EXPECT_EQ(c.memoryHits, 1);
    EXPECT_EQ(c.compiles, 1);
    EXPECT_EQ(c.misses, 1);

    // The resolved spec is the same kernel.
    auto resolved = getOk(*cache, resolveShape(spec));
    EXPECT_EQ(resolved.source, KernelSource::Memory);
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

TEST_F(KernelCacheTest, ConcurrentRequestsCompileOnce) {
  auto cache = makeCache(config(dir_));
  const KernelSpec spec = smallSpec(512);
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
      auto r = cache->get(spec);
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
  const KernelSpec spec = smallSpec(384);
  auto r = cache->get(spec);
  ASSERT_FALSE(bool(r));
  std::string message;
  EXPECT_EQ(consumeError(r.takeError(), &message), ErrorCode::NotInCache);
  EXPECT_TRUE(contains(message, resolveShape(spec).canonical()));
  EXPECT_TRUE(contains(message, compiler_->cacheKey(resolveShape(spec))));
  EXPECT_TRUE(contains(message, dir_));
  EXPECT_TRUE(contains(message, "BQJIT_NO_COMPILE"));
  EXPECT_EQ(cache->counters().compiles, 0);
  EXPECT_EQ(cache->counters().misses, 1);
  // Asking again is the same error, not a stale in-flight result.
  auto again = cache->get(spec);
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

TEST_F(KernelCacheTest, NoCacheDirIsMemoryOnly) {
  auto cache = makeCache(config(""));
  EXPECT_EQ(cache->disk(), nullptr);
  EXPECT_EQ(getOk(*cache, smallSpec()).source, KernelSource::Compiled);
  EXPECT_EQ(getOk(*cache, smallSpec()).source, KernelSource::Memory);
  EXPECT_TRUE(warnings_.empty());
  auto store = cache->storeTunedShape(smallSpec(), LaunchShape{4, 8, 64});
  ASSERT_TRUE(bool(store));
  EXPECT_EQ(consumeError(std::move(store), nullptr), ErrorCode::CacheError);
}

TEST_F(KernelCacheTest, InvalidSpecIsRejected) {
  auto cache = makeCache(config(dir_));
  KernelSpec bad = smallSpec();
  bad.hidden = 300;
  auto r = cache->get(bad);
  ASSERT_FALSE(bool(r));
  std::string message;
  EXPECT_EQ(consumeError(r.takeError(), &message), ErrorCode::InvalidSpec);
  EXPECT_TRUE(contains(message, "'group_size' = 128"));
  EXPECT_EQ(cache->counters().misses, 0);
}

TEST_F(KernelCacheTest, TunedShapeIsUsed) {
  auto cache = makeCache(config(dir_));
  const KernelSpec spec = smallSpec(1024);
  const LaunchShape heuristic = chooseLaunchShape(spec);
  const LaunchShape tuned{4, 8, 64};
  ASSERT_NE(tuned, heuristic);
  auto before = cache->resolve(spec);
  ASSERT_TRUE(bool(before));
  EXPECT_EQ(*before->shape, heuristic);

  ASSERT_FALSE(bool(cache->storeTunedShape(spec, tuned)));
  auto after = cache->resolve(spec);
  ASSERT_TRUE(bool(after)) << consumeToString(after.takeError());
  EXPECT_EQ(*after->shape, tuned);
  auto r = getOk(*cache, spec);
  ASSERT_TRUE(r.kernel);
  EXPECT_EQ(*r.kernel->spec.shape, tuned);

  // Another cache on the same directory sees the record.
  auto other = makeCache(config(dir_));
  auto resolved = other->resolve(spec);
  ASSERT_TRUE(bool(resolved));
  EXPECT_EQ(*resolved->shape, tuned);
  // Other specs are not affected.
  auto unrelated = other->resolve(smallSpec(2048));
  ASSERT_TRUE(bool(unrelated));
  EXPECT_EQ(*unrelated->shape, chooseLaunchShape(smallSpec(2048)));
  KernelSpec otherArch = spec;
  otherArch.arch = "sm_80";
  auto archResolved = other->resolve(otherArch);
  ASSERT_TRUE(bool(archResolved));
  EXPECT_EQ(*archResolved->shape, heuristic);
}

TEST_F(KernelCacheTest, ExplicitShapeIgnoresTunedRecord) {
  auto cache = makeCache(config(dir_));
  const KernelSpec spec = smallSpec(1024);
  ASSERT_FALSE(bool(cache->storeTunedShape(spec, LaunchShape{4, 8, 64})));
  KernelSpec explicitSpec = spec;
  explicitSpec.shape = LaunchShape{16, 8, 8};
  auto resolved = cache->resolve(explicitSpec);
  ASSERT_TRUE(bool(resolved));
  EXPECT_EQ(*resolved->shape, (LaunchShape{16, 8, 8}));
}

TEST_F(KernelCacheTest, InvalidTunedShapeIsRefused) {
  auto cache = makeCache(config(dir_));
  auto err = cache->storeTunedShape(smallSpec(), LaunchShape{3, 8, 64});
  ASSERT_TRUE(bool(err));
  std::string message;
  EXPECT_EQ(consumeError(std::move(err), &message), ErrorCode::InvalidSpec);
  EXPECT_TRUE(contains(message, "threads_per_group"));
}

TEST_F(KernelCacheTest, UnreadableTunedRecordFallsBackWithWarning) {
  auto cache = makeCache(config(dir_));
  const KernelSpec spec = smallSpec(1024);
  ASSERT_FALSE(bool(cache->storeTunedShape(spec, LaunchShape{4, 8, 64})));
  const auto records = fs::listDirectory(cache->disk()->root() + "/tuned");
  ASSERT_EQ(records.size(), 1u);
  { std::ofstream(cache->disk()->root() + "/tuned/" + records[0]) << "{ torn"; }
  auto resolved = cache->resolve(spec);
  ASSERT_TRUE(bool(resolved));
  EXPECT_EQ(*resolved->shape, chooseLaunchShape(spec));
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_TRUE(contains(warnings_[0], "tuning record"));
}

TEST_F(KernelCacheTest, TunedRecordWithShapeInvalidForSpecIsIgnored) {
  // A record whose spec is valid on its own (bf16, 16-byte loads of 8
  // elements) but whose shape does not fit the spec asked for (fp32).
  auto cache = makeCache(config(dir_));
  KernelSpec spec = smallSpec(1024);
  spec.inDtype = InDtype::FP32;
  ASSERT_FALSE(bool(cache->storeTunedShape(spec, LaunchShape{8, 4, 32})));
  const auto records = fs::listDirectory(cache->disk()->root() + "/tuned");
  ASSERT_EQ(records.size(), 1u);
  KernelSpec foreign = smallSpec(1024);
  foreign.shape = LaunchShape{4, 8, 64};
  {
    std::ofstream(cache->disk()->root() + "/tuned/" + records[0])
        << nlohmann::json({{"spec", foreign.toJson()}}).dump();
  }
  auto resolved = cache->resolve(spec);
  ASSERT_TRUE(bool(resolved)) << consumeToString(resolved.takeError());
  EXPECT_EQ(*resolved->shape, chooseLaunchShape(spec));
  EXPECT_EQ(resolved->inDtype, InDtype::FP32);
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_TRUE(contains(warnings_[0], "tuning record"));
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
      auto r = cache.get(smallSpec(768));
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

// A spec that leaves its shape to bqjit launches with one shape per regime
// (many, few, very few and very many tokens); an explicit shape is the only one.
TEST(KernelCacheVariants, HeuristicSpecsHaveThroughputAndLatencyShapes) {
  auto compiler = Compiler::create();
  ASSERT_TRUE(bool(compiler)) << consumeToString(compiler.takeError());
  char tmpl[] = "/tmp/bqjit_variants_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  Config config;
  config.cacheDir = tmpl;
  KernelCache cache(config, *compiler);
  KernelSpec spec;
  spec.hidden = 7168;
  spec.groupSize = 128;
  auto variants = cache.launchVariants(spec);
  ASSERT_TRUE(bool(variants)) << consumeToString(variants.takeError());
  ASSERT_EQ(variants->size(), 4u);
  EXPECT_EQ(*(*variants)[0].shape, chooseLaunchShape(spec, 16, Regime::Throughput));
  EXPECT_EQ(*(*variants)[1].shape, chooseLaunchShape(spec, 16, Regime::Latency));
  EXPECT_EQ(*(*variants)[2].shape, chooseLaunchShape(spec, 16, Regime::Tiny));
  EXPECT_EQ(*(*variants)[3].shape, chooseLaunchShape(spec, 16, Regime::Bulk));
  EXPECT_EQ((*variants)[1].shape->threadsPerGroup, 16); // one 16-byte vector per thread
  EXPECT_EQ((*variants)[2].shape->threadsPerGroup, 32); // one 8-byte vector per thread
  EXPECT_EQ((*variants)[3].shape->groupsPerBlock, 64);  // 8192 elements per block
  // regimeSpecs gives each regime's, in Regime order.
  auto regimes = cache.regimeSpecs(spec);
  ASSERT_TRUE(bool(regimes));
  for (int r = 0; r < kRegimeCount; ++r)
    EXPECT_EQ(*(*regimes)[r].shape, *(*variants)[r].shape) << regimeName(static_cast<Regime>(r));
  // G = 64: the throughput and latency shapes agree; three distinct variants.
  KernelSpec g64 = spec;
  g64.groupSize = 64;
  auto threeOnly = cache.launchVariants(g64);
  ASSERT_TRUE(bool(threeOnly));
  EXPECT_EQ(threeOnly->size(), 3u);
  // G = 96 does not divide 8192: the bulk shape is the throughput shape.
  KernelSpec g96 = spec;
  g96.groupSize = 96;
  g96.hidden = 96 * 74;
  auto g96Variants = cache.launchVariants(g96);
  ASSERT_TRUE(bool(g96Variants));
  EXPECT_EQ(g96Variants->size(), 3u);

  KernelSpec explicitShape = spec;
  explicitShape.shape = LaunchShape{4, 8, 64};
  auto one = cache.launchVariants(explicitShape);
  ASSERT_TRUE(bool(one));
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ(*(*one)[0].shape, *explicitShape.shape);

  // Tuning records are per regime: a many-token record replaces the
  // throughput shape only; a few-token record the latency shape; a
  // very-few-token record the tiny shape; a very-many-token record the bulk shape.
  ASSERT_FALSE(bool(cache.storeTunedShape(spec, LaunchShape{4, 8, 64})));
  auto tuned = cache.launchVariants(spec);
  ASSERT_TRUE(bool(tuned));
  ASSERT_EQ(tuned->size(), 4u);
  EXPECT_EQ(*(*tuned)[0].shape, (LaunchShape{4, 8, 64}));
  EXPECT_EQ(*(*tuned)[1].shape, chooseLaunchShape(spec, 16, Regime::Latency));
  EXPECT_EQ(*(*tuned)[2].shape, chooseLaunchShape(spec, 16, Regime::Tiny));
  EXPECT_EQ(*(*tuned)[3].shape, chooseLaunchShape(spec, 16, Regime::Bulk));
  ASSERT_FALSE(bool(cache.storeTunedShape(spec, LaunchShape{8, 8, 32}, Regime::Latency)));
  auto both = cache.launchVariants(spec);
  ASSERT_TRUE(bool(both));
  ASSERT_EQ(both->size(), 4u);
  EXPECT_EQ(*(*both)[0].shape, (LaunchShape{4, 8, 64}));
  EXPECT_EQ(*(*both)[1].shape, (LaunchShape{8, 8, 32}));
  ASSERT_FALSE(bool(cache.storeTunedShape(spec, LaunchShape{16, 8, 64}, Regime::Bulk)));
  auto bulk = cache.launchVariants(spec);
  ASSERT_TRUE(bool(bulk));
  ASSERT_EQ(bulk->size(), 4u);
  EXPECT_EQ(*(*bulk)[3].shape, (LaunchShape{16, 8, 64}));
  // Tuned to the same shape for every regime: one kernel serves every launch.
  ASSERT_FALSE(bool(cache.storeTunedShape(spec, LaunchShape{4, 8, 64}, Regime::Latency)));
  ASSERT_FALSE(bool(cache.storeTunedShape(spec, LaunchShape{4, 8, 64}, Regime::Tiny)));
  ASSERT_FALSE(bool(cache.storeTunedShape(spec, LaunchShape{4, 8, 64}, Regime::Bulk)));
  auto same = cache.launchVariants(spec);
  ASSERT_TRUE(bool(same));
  EXPECT_EQ(same->size(), 1u);
  llvm::consumeError(fs::removeTree(tmpl));
}

// The plan Service::getKernel loads from: each regime's shape, found once.
TEST(KernelCacheVariants, LaunchPlanMapsEveryRegimeToItsShape) {
  auto compiler = Compiler::create();
  ASSERT_TRUE(bool(compiler)) << consumeToString(compiler.takeError());
  Config config; // no cache directory: heuristic shapes only
  KernelCache cache(config, *compiler);
  for (int g : {64, 96, 128, 192}) {
    KernelSpec spec;
    spec.hidden = g * 56;
    spec.groupSize = g;
    auto plan = cache.launchPlan(spec);
    auto regimes = cache.regimeSpecs(spec);
    ASSERT_TRUE(plan && regimes);
    for (int r = 0; r < kRegimeCount; ++r) {
      ASSERT_LT(plan->variantOf[r], static_cast<int>(plan->variants.size()));
      EXPECT_EQ(plan->variants[plan->variantOf[r]].shape, (*regimes)[r].shape) << "G=" << g;
    }
    for (size_t i = 0; i < plan->variants.size(); ++i)
      for (size_t k = 0; k < i; ++k)
        EXPECT_NE(plan->variants[i].shape, plan->variants[k].shape) << "G=" << g;
  }
}

} // namespace
} // namespace bqjit
