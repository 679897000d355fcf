// DiskCache: atomic publication, verification of every byte on load, the
// journal, listing and maintenance, LRU garbage collection.
#include "cache/disk_cache.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "cache/entry_format.hpp"
#include "cache/log_lines.hpp"
#include "core/fs_util.hpp"
#include "core/json_input.hpp"
#include "fake_kernel.hpp"
#include "jit/cache_key.hpp"
#include "planner/launch_heuristic.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

std::string readText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void writeText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

using test::fakeKernel;
using test::keyInputsOf;

class DiskCacheTest : public testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bqjit_disk_cache_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    config_.cacheDir = dir_;
    config_.logSink = [this](LogLevel level, const std::string& text) {
      logs_.push_back(text);
      (void)level;
    };
    cache_ = std::make_unique<DiskCache>(dir_, config_);
    ASSERT_FALSE(bool(cache_->prepare()));
  }
  void TearDown() override {
    cache_.reset();
    llvm::consumeError(fs::removeTree(dir_));
  }

  void publish(const CompiledKernel& k) {
    llvm::Error err = cache_->publish(k, keyInputsOf(k));
    ASSERT_FALSE(bool(err)) << consumeToString(std::move(err));
  }
  std::string entryFile(const std::string& key, const char* file) const {
    return cache_->entryDir(key) + "/" + file;
  }
  int64_t journalCount(CacheEvent event, const std::string& key) const {
    int64_t n = 0;
    for (const auto& r : cache_->journal().read())
      n += r.event == event && r.key == key;
    return n;
  }
  /// Loads an entry expected to be corrupt; returns the problem text.
  std::string expectCorrupt(const std::string& key) {
    std::string problem;
    auto k = cache_->load(key, &problem);
    EXPECT_FALSE(k.has_value()) << "a corrupt entry loaded";
    EXPECT_FALSE(problem.empty());
    EXPECT_FALSE(fs::exists(cache_->entryDir(key))) << "corrupt entry not removed";
    EXPECT_EQ(journalCount(CacheEvent::Corrupt, key), 1);
    EXPECT_EQ(logs_.size(), 1u);
    if (!logs_.empty()) {
      EXPECT_TRUE(contains(logs_.back(), key));
      EXPECT_TRUE(contains(logs_.back(), problem));
    }
    // A second load is a plain miss, with no new problem.
    std::string again;
    EXPECT_FALSE(cache_->load(key, &again).has_value());
    EXPECT_EQ(again, "");
    return problem;
  }

  std::string dir_;
  Config config_;
  std::vector<std::string> logs_;
  std::unique_ptr<DiskCache> cache_;
};

TEST_F(DiskCacheTest, LayoutIsVersioned) {
  EXPECT_EQ(cache_->root(), dir_ + "/" + kCacheLayoutDir);
  for (const char* sub : {"entries", "tmp", "locks", "tuned"})
    EXPECT_TRUE(fs::exists(cache_->root() + "/" + sub)) << sub;
}

TEST_F(DiskCacheTest, MissingEntryIsNullopt) {
  std::string problem;
  EXPECT_FALSE(cache_->load(std::string(32, 'a'), &problem).has_value());
  EXPECT_EQ(problem, "");
  EXPECT_TRUE(cache_->journal().read().empty());
}

TEST_F(DiskCacheTest, PublishThenLoadRoundTrip) {
  const CompiledKernel k = fakeKernel(7168, 100000);
  publish(k);
  std::string problem;
  auto back = cache_->load(k.key, &problem);
  ASSERT_TRUE(back.has_value()) << problem;
  EXPECT_EQ(back->cubin, k.cubin);
  EXPECT_EQ(back->ptx, k.ptx);
  EXPECT_EQ(back->key, k.key);
  EXPECT_EQ(back->spec.canonical(), k.spec.canonical());
  EXPECT_EQ(back->loweredName, k.loweredName);
  EXPECT_EQ(back->options, k.options);
  EXPECT_EQ(back->nvrtcVersion, k.nvrtcVersion);
  EXPECT_EQ(back->compileMs, k.compileMs);
  EXPECT_EQ(back->log, k.log);
  EXPECT_TRUE(back->resources == k.resources);
  // The files hold exactly the bytes.
  const std::string cubinOnDisk = readText(entryFile(k.key, kCubinFile));
  EXPECT_EQ(std::vector<char>(cubinOnDisk.begin(), cubinOnDisk.end()), k.cubin);
  EXPECT_EQ(readText(entryFile(k.key, kPtxFile)), k.ptx);
  // The metadata keeps the key inputs for people debugging misses.
  auto meta = nlohmann::json::parse(readText(entryFile(k.key, kMetaFile)));
  EXPECT_EQ(meta["key_inputs"], keyInputsOf(k));
  EXPECT_EQ(meta["format"], kCacheFormatVersion);
}

TEST_F(DiskCacheTest, EntryAppearsWhole) {
  const CompiledKernel k = fakeKernel(2048);
  EXPECT_FALSE(fs::exists(cache_->entryDir(k.key)));
  publish(k);
  auto files = fs::listDirectory(cache_->entryDir(k.key));
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{kCubinFile, kPtxFile, kMetaFile}));
  EXPECT_TRUE(fs::listDirectory(cache_->root() + "/tmp").empty());
}

TEST_F(DiskCacheTest, ConcurrentReaderNeverSeesAPartialEntry) {
  // A writer publishes entries with large files while a reader loads every
  // entry directory as soon as it appears: none may read as corrupt.
  std::vector<CompiledKernel> kernels;
  for (int i = 0; i < 12; ++i)
    kernels.push_back(fakeKernel(128 * (i + 1), 1 << 20));
  std::atomic<bool> done{false};
  std::atomic<int> loaded{0};
  std::vector<std::string> problems;
  std::thread reader([&] {
    while (!done.load()) {
      for (const auto& key : fs::listDirectory(cache_->root() + "/entries")) {
        std::string problem;
        if (cache_->load(key, &problem))
          ++loaded;
        else
          problems.push_back(key + ": " + problem);
      }
    }
  });
  for (const auto& k : kernels)
    publish(k);
  done = true;
  reader.join();
  EXPECT_TRUE(problems.empty()) << problems.front();
  EXPECT_GT(loaded.load(), 0);
  EXPECT_EQ(fs::listDirectory(cache_->root() + "/entries").size(), kernels.size());
  EXPECT_EQ(cache_->verify().bad, 0);
}

TEST_F(DiskCacheTest, PublishingTheSameKeyTwiceKeepsTheFirst) {
  CompiledKernel first = fakeKernel(4096);
  CompiledKernel second = first;
  second.ptx += "// the second writer's PTX\n";
  publish(first);
  publish(second); // another writer lost the race: not an error
  EXPECT_EQ(fs::listDirectory(cache_->root() + "/entries").size(), 1u);
  EXPECT_TRUE(fs::listDirectory(cache_->root() + "/tmp").empty());
  auto back = cache_->load(first.key);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->ptx, first.ptx);
}

TEST_F(DiskCacheTest, FlippedCubinByteIsCorrupt) {
  const CompiledKernel k = fakeKernel(7168);
  publish(k);
  std::string cubin = readText(entryFile(k.key, kCubinFile));
  cubin[cubin.size() / 2] ^= 0x01;
  writeText(entryFile(k.key, kCubinFile), cubin);
  const std::string problem = expectCorrupt(k.key);
  EXPECT_TRUE(contains(problem, "kernel.cubin"));
  EXPECT_TRUE(contains(problem, "checksum"));
}

TEST_F(DiskCacheTest, TruncatedPtxIsCorrupt) {
  const CompiledKernel k = fakeKernel(7168);
  publish(k);
  ASSERT_EQ(::truncate(entryFile(k.key, kPtxFile).c_str(), 10), 0);
  const std::string problem = expectCorrupt(k.key);
  EXPECT_TRUE(
      contains(problem, "kernel.ptx has 10 bytes, metadata says " + std::to_string(k.ptx.size())));
}

TEST_F(DiskCacheTest, EditedMetadataIsCorrupt) {
  const CompiledKernel k = fakeKernel(7168);
  publish(k);
  const std::string path = entryFile(k.key, kMetaFile);
  auto meta = nlohmann::json::parse(readText(path));
  meta["lowered_name"] = "_Z5otherv"; // a plausible edit, self checksum left as it was
  writeText(path, meta.dump(2));
  const std::string problem = expectCorrupt(k.key);
  EXPECT_TRUE(contains(problem, "meta_xxh3"));
  EXPECT_TRUE(contains(problem, "does not match"));
}

TEST_F(DiskCacheTest, TruncatedMetadataIsCorrupt) {
  const CompiledKernel k = fakeKernel(7168);
  publish(k);
  ASSERT_EQ(::truncate(entryFile(k.key, kMetaFile).c_str(), 40), 0);
  EXPECT_TRUE(contains(expectCorrupt(k.key), "not a JSON object"));
}

/// Re-seals metadata text: its self checksum recomputed, so that only what
/// the test changed is wrong.
std::string resealed(nlohmann::json meta) {
  meta.erase("meta_xxh3");
  const std::string text = meta.dump();
  meta["meta_xxh3"] = checksum64(text.data(), text.size());
  return meta.dump(2);
}

// Metadata nested 100000 levels deep: the self checksum dump()ed it,
// recursing once per level, and the process loading the entry crashed.
TEST_F(DiskCacheTest, DeepMetadataIsCorruptNotACrash) {
  const CompiledKernel k = fakeKernel(7168);
  publish(k);
  writeText(entryFile(k.key, kMetaFile), R"({"meta_xxh3": "0", "log": )" +
                                             std::string(100000, '[') + std::string(100000, ']') +
                                             "}");
  const std::string problem = expectCorrupt(k.key);
  EXPECT_TRUE(contains(problem, "metadata is not a JSON object bqjit reads: arrays and objects "
                                "nested more than 64 levels deep at byte "));
  EXPECT_TRUE(contains(problem, "(in log[0][0]"));
  EXPECT_LT(problem.size(), 1000u);
}

// A key written twice hid an edit: the parser kept the last one, which the
// self checksum covered, so that the entry still loaded.
TEST_F(DiskCacheTest, MetadataWithARepeatedKeyIsCorrupt) {
  const CompiledKernel k = fakeKernel(7168);
  publish(k);
  const std::string path = entryFile(k.key, kMetaFile);
  std::string text = readText(path);
  ASSERT_EQ(text[0], '{');
  text.insert(1, R"("lowered_name": "_Z5otherv", )");
  writeText(path, text);
  const std::string problem = expectCorrupt(k.key);
  EXPECT_TRUE(contains(problem, "metadata is not a JSON object bqjit reads: the key "
                                "\"lowered_name\" appears twice in the top-level object"));
}

TEST_F(DiskCacheTest, OversizedMetadataIsCorrupt) {
  const CompiledKernel k = fakeKernel(7168);
  publish(k);
  const std::string path = entryFile(k.key, kMetaFile);
  auto meta = nlohmann::json::parse(readText(path));
  meta["log"] = std::string(kMetadataJsonLimits.maxBytes, 'w');
  const std::string text = resealed(meta);
  writeText(path, text);
  const std::string problem = expectCorrupt(k.key);
  EXPECT_TRUE(contains(problem,
                       "metadata is not a JSON object bqjit reads: " + std::to_string(text.size()) +
                           " bytes is over the limit of 4194304 bytes (4 MiB)"));
}

TEST_F(DiskCacheTest, MissingFileIsCorrupt) {
  const CompiledKernel k = fakeKernel(7168);
  publish(k);
  ASSERT_EQ(::unlink(entryFile(k.key, kPtxFile).c_str()), 0);
  const std::string problem = expectCorrupt(k.key);
  EXPECT_TRUE(contains(problem, "kernel.ptx"));
}

TEST_F(DiskCacheTest, EntryUnderAnotherKeyIsCorrupt) {
  // A consistent entry copied to the wrong directory name.
  const CompiledKernel k = fakeKernel(7168);
  publish(k);
  const std::string wrongKey(32, 'b');
  ASSERT_EQ(::rename(cache_->entryDir(k.key).c_str(), cache_->entryDir(wrongKey).c_str()), 0);
  const std::string problem = expectCorrupt(wrongKey);
  EXPECT_TRUE(contains(problem, "differs from the directory name"));
}

TEST_F(DiskCacheTest, OtherFormatVersionIsRejected) {
  const CompiledKernel k = fakeKernel(7168);
  publish(k);
  const std::string path = entryFile(k.key, kMetaFile);
  auto meta = nlohmann::json::parse(readText(path));
  meta["format"] = kCacheFormatVersion + 1;
  // Re-seal it so that only the version is wrong.
  meta.erase("meta_xxh3");
  const std::string text = meta.dump();
  meta["meta_xxh3"] = checksum64(text.data(), text.size());
  writeText(path, meta.dump(2));
  const std::string problem = expectCorrupt(k.key);
  EXPECT_TRUE(contains(problem, "'format'"));
}

TEST_F(DiskCacheTest, ListVerifyRemoveClear) {
  const CompiledKernel a = fakeKernel(1024), b = fakeKernel(2048), c = fakeKernel(3072);
  for (const auto* k : {&a, &b, &c})
    publish(*k);
  ASSERT_FALSE(bool(cache_->journal().append(CacheEvent::Hit, b.key)));

  auto entries = cache_->list();
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries.front().key, b.key); // most recently used first
  EXPECT_GT(entries.front().lastUseMs, 0);
  for (const auto& e : entries) {
    EXPECT_TRUE(e.valid) << e.key << ": " << e.label;
    EXPECT_GT(e.bytes, 4096u);
    EXPECT_TRUE(contains(e.label, "H=")) << e.label;
  }

  VerifyReport clean = cache_->verify();
  EXPECT_EQ(clean.checked, 3);
  EXPECT_EQ(clean.bad, 0);
  EXPECT_TRUE(clean.problems.empty());

  // verify reports a corrupt entry but leaves it in place.
  std::string cubin = readText(entryFile(c.key, kCubinFile));
  cubin[100] ^= 0x40;
  writeText(entryFile(c.key, kCubinFile), cubin);
  VerifyReport dirty = cache_->verify();
  EXPECT_EQ(dirty.checked, 3);
  EXPECT_EQ(dirty.bad, 1);
  ASSERT_EQ(dirty.problems.size(), 1u);
  EXPECT_TRUE(contains(dirty.problems[0], c.key + ": "));
  EXPECT_TRUE(contains(dirty.problems[0], "kernel.cubin"));
  EXPECT_TRUE(fs::exists(cache_->entryDir(c.key)));

  // An entry whose metadata is unreadable is listed as invalid, with why.
  writeText(entryFile(a.key, kMetaFile), "{");
  for (const auto& e : cache_->list())
    if (e.key == a.key) {
      EXPECT_FALSE(e.valid);
      EXPECT_TRUE(contains(e.label, "not a JSON object"));
    }

  ASSERT_FALSE(bool(cache_->remove(b.key)));
  EXPECT_FALSE(fs::exists(cache_->entryDir(b.key)));
  EXPECT_FALSE(cache_->load(b.key).has_value());
  EXPECT_EQ(cache_->list().size(), 2u);
  ASSERT_FALSE(bool(cache_->remove(b.key))); // removing a missing key is fine
  EXPECT_TRUE(fs::listDirectory(cache_->root() + "/tmp").empty());

  writeText(cache_->root() + "/tuned/some.json", "{}");
  ASSERT_FALSE(bool(cache_->clear()));
  EXPECT_TRUE(cache_->list().empty());
  EXPECT_TRUE(fs::listDirectory(cache_->root() + "/entries").empty());
  EXPECT_TRUE(fs::listDirectory(cache_->root() + "/tuned").empty());
  EXPECT_FALSE(fs::exists(cache_->journal().path()));
  // Still usable after clear.
  publish(a);
  EXPECT_TRUE(cache_->load(a.key).has_value());
}

TEST_F(DiskCacheTest, GarbageCollectionEvictsLeastRecentlyUsedFirst) {
  std::vector<CompiledKernel> k;
  for (int i = 0; i < 5; ++i)
    k.push_back(fakeKernel(256 * (i + 1), 10000));
  for (const auto& kernel : k)
    publish(kernel);
  // Use order, oldest first: k3, k0, k4, k1, k2 (distinct milliseconds).
  for (int i : {3, 0, 4, 1, 2}) {
    ASSERT_FALSE(bool(cache_->journal().append(CacheEvent::Hit, k[i].key)));
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
  }
  const uint64_t each = fs::treeBytes(cache_->entryDir(k[0].key));
  ASSERT_GT(each, 10000u);
  uint64_t total = 0;
  for (const auto& kernel : k)
    total += fs::treeBytes(cache_->entryDir(kernel.key));

  // No limit: nothing goes.
  auto none = cache_->collectGarbage(0);
  ASSERT_TRUE(bool(none));
  EXPECT_TRUE(none->empty());
  // Room for a little over three entries: the two least recent go, in order.
  auto evicted = cache_->collectGarbage(total - 2 * each + each / 2);
  ASSERT_TRUE(bool(evicted)) << consumeToString(evicted.takeError());
  EXPECT_EQ(*evicted, (std::vector<std::string>{k[3].key, k[0].key}));
  EXPECT_FALSE(fs::exists(cache_->entryDir(k[3].key)));
  EXPECT_FALSE(fs::exists(cache_->entryDir(k[0].key)));
  for (int i : {1, 2, 4})
    EXPECT_TRUE(fs::exists(cache_->entryDir(k[i].key))) << i;
  EXPECT_EQ(journalCount(CacheEvent::Evict, k[3].key), 1);
  EXPECT_EQ(journalCount(CacheEvent::Evict, k[0].key), 1);
  EXPECT_EQ(cache_->journal().stats().evictions, 2);

  // A hit refreshes k4: now k1 is the least recent, but it is the one to keep.
  ASSERT_FALSE(bool(cache_->journal().append(CacheEvent::Hit, k[4].key)));
  auto kept = cache_->collectGarbage(each + each / 2, k[1].key);
  ASSERT_TRUE(bool(kept)) << consumeToString(kept.takeError());
  EXPECT_EQ(*kept, (std::vector<std::string>{k[2].key, k[4].key}));
  EXPECT_TRUE(fs::exists(cache_->entryDir(k[1].key)));
  EXPECT_EQ(cache_->list().size(), 1u);
}

TEST_F(DiskCacheTest, KeepIsSparedEvenAlone) {
  const CompiledKernel a = fakeKernel(1024);
  publish(a);
  auto evicted = cache_->collectGarbage(1, a.key);
  ASSERT_TRUE(bool(evicted));
  EXPECT_TRUE(evicted->empty());
  EXPECT_TRUE(fs::exists(cache_->entryDir(a.key)));
}

TEST_F(DiskCacheTest, GarbageCollectionRemovesStaleTemporariesAndBadEntries) {
  // A pid that surely is gone: a child that already exited and was reaped.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0)
    ::_exit(0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);

  const std::string tmp = cache_->root() + "/tmp/";
  const std::string key(32, 'c');
  const std::string dead = tmp + key + "." + std::to_string(child) + ".0123456789abcdef";
  const std::string live = tmp + key + "." + std::to_string(::getpid()) + ".0123456789abcdef";
  const std::string removed = tmp + "removed." + key + "." + std::to_string(::getpid()) + ".00";
  for (const auto& d : {dead, live, removed}) {
    ASSERT_FALSE(bool(fs::createDirectories(d)));
    writeText(d + "/kernel.cubin", "partial");
  }
  // An entry with unreadable metadata goes too; a good one stays.
  const CompiledKernel good = fakeKernel(1024), bad = fakeKernel(2048);
  publish(good);
  publish(bad);
  writeText(entryFile(bad.key, kMetaFile), "not json");

  auto evicted = cache_->collectGarbage(0);
  ASSERT_TRUE(bool(evicted)) << consumeToString(evicted.takeError());
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_FALSE(fs::exists(removed));
  EXPECT_TRUE(fs::exists(live)); // a writer of this process may still be at work
  EXPECT_EQ(*evicted, (std::vector<std::string>{bad.key}));
  EXPECT_TRUE(fs::exists(cache_->entryDir(good.key)));
}

TEST_F(DiskCacheTest, LockKeyExcludes) {
  const std::string key(32, 'd');
  auto first = cache_->lockKey(key, 100);
  ASSERT_TRUE(bool(first) && first->has_value());
  auto second = cache_->lockKey(key, 50);
  ASSERT_TRUE(bool(second));
  EXPECT_FALSE(second->has_value());
  auto other = cache_->lockKey(std::string(32, 'e'), 50);
  ASSERT_TRUE(bool(other));
  EXPECT_TRUE(other->has_value());
}

TEST_F(DiskCacheTest, JournalStatsAndMalformedLines) {
  const Journal& j = cache_->journal();
  ASSERT_FALSE(bool(j.append(CacheEvent::Miss, "k1")));
  ASSERT_FALSE(bool(j.append(CacheEvent::Compile, "k1", 250.0)));
  ASSERT_FALSE(bool(j.append(CacheEvent::Hit, "k1")));
  ASSERT_FALSE(bool(j.append(CacheEvent::Compile, "k2", 100.0)));
  {
    std::ofstream out(j.path(), std::ios::app);
    out << "{\"ev\":\"hit\",\"key\":\"k1\"\n"                // torn write
        << "{\"ev\":\"teleport\",\"key\":\"k1\",\"t\":1}\n"; // unknown event
  }
  ASSERT_FALSE(bool(j.append(CacheEvent::Corrupt, "k2")));
  int64_t malformed = -1;
  auto records = j.read(&malformed);
  EXPECT_EQ(records.size(), 5u);
  EXPECT_EQ(malformed, 2);
  const CacheStats s = j.stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.misses, 1);
  EXPECT_EQ(s.compiles, 2);
  EXPECT_EQ(s.corrupt, 1);
  EXPECT_DOUBLE_EQ(s.compileMsTotal, 350.0);
  EXPECT_DOUBLE_EQ(s.compileMsMax, 250.0);
  EXPECT_EQ(records[0].pid, ::getpid());
  auto last = j.lastUse();
  EXPECT_EQ(last.size(), 2u);
  EXPECT_GE(last["k1"], last["k2"] - 1000);

  ASSERT_FALSE(bool(j.compact({"k2"})));
  for (const auto& r : j.read())
    EXPECT_EQ(r.key, "k2");
  EXPECT_EQ(j.read().size(), 2u);
}

TEST_F(DiskCacheTest, JournalLinesStayWholeAcrossProcesses) {
  constexpr int kProcesses = 4, kRecords = 300;
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      Journal journal(cache_->journal().path());
      // Long keys make a torn or interleaved write visible.
      const std::string key = std::string(200, static_cast<char>('a' + p));
      for (int i = 0; i < kRecords; ++i)
        if (journal.append(i % 2 ? CacheEvent::Hit : CacheEvent::Compile, key, i))
          ::_exit(1);
      ::_exit(0);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
  }
  int64_t malformed = -1;
  const auto records = cache_->journal().read(&malformed);
  EXPECT_EQ(malformed, 0);
  EXPECT_EQ(records.size(), static_cast<size_t>(kProcesses * kRecords));
  std::map<std::string, int> perKey;
  for (const auto& r : records)
    ++perKey[r.key];
  EXPECT_EQ(perKey.size(), static_cast<size_t>(kProcesses));
  for (const auto& [key, n] : perKey)
    EXPECT_EQ(n, kRecords);
}

TEST_F(DiskCacheTest, LoadAndPublishLogOneLineEachAtInfoAndDebug) {
  const CompiledKernel k = fakeKernel(1024);
  config_.logLevel = LogLevel::Warn;
  publish(k);
  ASSERT_TRUE(cache_->load(k.key).has_value());
  EXPECT_TRUE(logs_.empty()) << logs_.front(); // nothing at the default level

  config_.logLevel = LogLevel::Info;
  ASSERT_TRUE(cache_->load(k.key).has_value());
  ASSERT_EQ(logs_.size(), 1u);
  EXPECT_EQ(logs_[0], "loaded from disk key=" + k.key + " arch=sm_90 spec=" + k.spec.label());

  logs_.clear();
  config_.logLevel = LogLevel::Debug;
  ASSERT_TRUE(cache_->load(k.key).has_value());
  ASSERT_EQ(logs_.size(), 2u);
  EXPECT_EQ(logs_[1], "cache entry read key=" + k.key + " path=" + cache_->entryDir(k.key));
  logs_.clear();
  const CompiledKernel other = fakeKernel(2048);
  publish(other);
  ASSERT_FALSE(bool(cache_->prepare()));
  ASSERT_EQ(logs_.size(), 2u);
  EXPECT_EQ(logs_[0],
            "cache entry stored key=" + other.key + " path=" + cache_->entryDir(other.key));
  EXPECT_EQ(logs_[1], "cache root=" + cache_->root() + " journal=" + cache_->journal().path());
}

TEST_F(DiskCacheTest, CompiledLineNamesSpecKeyArchAndMilliseconds) {
  CompiledKernel k = fakeKernel(1024);
  k.compileMs = 412.34;
  k.options = {"--gpu-architecture=sm_90", "--fmad=false"};
  std::vector<std::pair<LogLevel, std::string>> lines;
  Config c;
  c.logSink = [&](LogLevel level, const std::string& text) { lines.emplace_back(level, text); };
  c.logLevel = LogLevel::Warn;
  logCompiled(c, k);
  EXPECT_TRUE(lines.empty());
  c.logLevel = LogLevel::Debug;
  logCompiled(c, k);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].first, LogLevel::Info);
  EXPECT_EQ(lines[0].second,
            "compiled key=" + k.key + " arch=sm_90 ms=412.3 spec=" + k.spec.label());
  EXPECT_EQ(lines[1].first, LogLevel::Debug);
  EXPECT_EQ(lines[1].second,
            "nvrtc options key=" + k.key + ": --gpu-architecture=sm_90 --fmad=false");
}

TEST_F(DiskCacheTest, FullCollectionDropsEveryEntryThatVerifyCallsBad) {
  const CompiledKernel good = fakeKernel(1024), cubin = fakeKernel(2048), ptx = fakeKernel(3072);
  for (const auto* k : {&good, &cubin, &ptx})
    publish(*k);
  std::string bytes = readText(entryFile(cubin.key, kCubinFile));
  bytes[100] ^= 0x40;
  writeText(entryFile(cubin.key, kCubinFile), bytes);
  writeText(entryFile(ptx.key, kPtxFile), "// truncated");
  ASSERT_EQ(cache_->verify().bad, 2);

  // Eviction passes after a compile read the metadata only ...
  auto quick = cache_->collectGarbage(0);
  ASSERT_TRUE(bool(quick)) << consumeToString(quick.takeError());
  EXPECT_TRUE(quick->empty());
  // ... `cache gc` checks every byte, as verify does, and logs why.
  config_.logLevel = LogLevel::Info;
  auto full = cache_->collectGarbage(0, "", EntryCheck::Full);
  ASSERT_TRUE(bool(full)) << consumeToString(full.takeError());
  std::vector<std::string> got = *full, expected = {cubin.key, ptx.key};
  std::sort(got.begin(), got.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(got, expected);
  EXPECT_EQ(cache_->verify().bad, 0);
  EXPECT_EQ(cache_->verify().checked, 1);
  EXPECT_TRUE(cache_->load(good.key).has_value());
  ASSERT_GE(logs_.size(), 2u);
  for (const std::string& key : expected) {
    const auto line = std::find_if(logs_.begin(), logs_.end(), [&](const std::string& l) {
      return l.rfind("evicted key=" + key + " bytes=", 0) == 0;
    });
    ASSERT_NE(line, logs_.end()) << key;
    EXPECT_TRUE(contains(*line, " reason=bad problem=")) << *line;
  }
}

TEST_F(DiskCacheTest, EvictionLogsKeyBytesReasonAndSpec) {
  const CompiledKernel a = fakeKernel(1024), b = fakeKernel(2048);
  publish(a);
  publish(b);
  ASSERT_FALSE(bool(cache_->journal().append(CacheEvent::Hit, b.key)));
  const uint64_t bytesOfA = fs::treeBytes(cache_->entryDir(a.key));
  config_.logLevel = LogLevel::Info;
  auto evicted = cache_->collectGarbage(1, b.key);
  ASSERT_TRUE(bool(evicted));
  ASSERT_EQ(*evicted, std::vector<std::string>{a.key});
  ASSERT_EQ(logs_.size(), 1u);
  EXPECT_EQ(logs_[0], "evicted key=" + a.key + " bytes=" + std::to_string(bytesOfA) +
                          " reason=over-limit spec=" + a.spec.label());
}

TEST_F(DiskCacheTest, CacheDirectoryThatIsAFileIsAnError) {
  EXPECT_FALSE(bool(cache_->checkLayout()));
  // Not there yet: an empty cache, no error.
  Config quiet;
  DiskCache missing(dir_ + "/not-yet", quiet);
  EXPECT_FALSE(bool(missing.checkLayout()));

  const std::string file = dir_ + "/a-file";
  writeText(file, "x");
  DiskCache onFile(file, quiet);
  std::string message;
  EXPECT_EQ(consumeError(onFile.checkLayout(), &message), ErrorCode::CacheError);
  EXPECT_TRUE(contains(message, "cache directory '" + file + "'"));
  EXPECT_TRUE(contains(message, "BQJIT_CACHE_DIR"));
  EXPECT_TRUE(contains(message, "is a regular file: it must be a directory"));

  // Below it, too: the versioned root or entries/ as a file.
  ASSERT_FALSE(bool(fs::removeTree(cache_->root() + "/entries")));
  writeText(cache_->root() + "/entries", "x");
  EXPECT_EQ(consumeError(cache_->checkLayout(), &message), ErrorCode::CacheError);
  EXPECT_TRUE(contains(message, "cache path '" + cache_->root() + "/entries' is a regular file"));
  const std::string nested = file + "/sub";
  DiskCache underFile(nested, quiet);
  EXPECT_EQ(consumeError(underFile.checkLayout(), &message), ErrorCode::CacheError);
  EXPECT_TRUE(contains(message, nested));
}

TEST_F(DiskCacheTest, JournalCompactionKeepsStatsAndRecency) {
  const Journal& j = cache_->journal();
  const std::vector<std::string> live = {std::string(32, 'a'), std::string(32, 'b')};
  const std::string dead(32, 'd');
  for (int i = 0; i < 200; ++i) {
    ASSERT_FALSE(bool(j.append(CacheEvent::Hit, live[i % 2])));
    ASSERT_FALSE(bool(j.append(CacheEvent::Hit, dead)));
  }
  ASSERT_FALSE(bool(j.append(CacheEvent::Miss, live[0])));
  ASSERT_FALSE(bool(j.append(CacheEvent::Compile, live[0], 500.0)));
  ASSERT_FALSE(bool(j.append(CacheEvent::Compile, live[1], 20.0)));
  ASSERT_FALSE(bool(j.append(CacheEvent::Compile, dead, 900.0)));
  ASSERT_FALSE(bool(j.append(CacheEvent::Evict, dead)));
  ASSERT_FALSE(bool(j.append(CacheEvent::Corrupt, live[1])));
  const CacheStats before = j.stats();
  const auto lastBefore = j.lastUse();
  const uint64_t bytesBefore = j.bytes();

  ASSERT_FALSE(bool(j.compact(live)));
  int64_t malformed = -1;
  const auto records = j.read(&malformed);
  EXPECT_EQ(malformed, 0);
  // At most one record of each kind per live key; none of the dead key.
  EXPECT_LE(records.size(), 2u * 5);
  std::set<std::pair<std::string, int>> kinds;
  for (const auto& r : records) {
    EXPECT_NE(r.key, dead);
    EXPECT_TRUE(kinds.emplace(r.key, static_cast<int>(r.event)).second) << r.key;
  }
  EXPECT_LT(j.bytes(), bytesBefore / 20);
  const CacheStats after = j.stats();
  EXPECT_EQ(after.hits, before.hits);
  EXPECT_EQ(after.misses, before.misses);
  EXPECT_EQ(after.compiles, before.compiles);
  EXPECT_EQ(after.evictions, before.evictions);
  EXPECT_EQ(after.corrupt, before.corrupt);
  EXPECT_DOUBLE_EQ(after.compileMsTotal, 1420.0);
  EXPECT_DOUBLE_EQ(after.compileMsMax, 900.0);
  auto lastAfter = j.lastUse();
  EXPECT_EQ(lastAfter.size(), 2u);
  for (const auto& key : live)
    EXPECT_EQ(lastAfter[key], lastBefore.at(key)) << key;

  // Again, and with more records: the summaries add up.
  ASSERT_FALSE(bool(j.append(CacheEvent::Hit, live[0])));
  ASSERT_FALSE(bool(j.compact({live[1]})));
  EXPECT_EQ(j.stats().hits, before.hits + 1);
  EXPECT_EQ(j.stats().compiles, before.compiles);
  EXPECT_EQ(j.lastUse().count(live[0]), 0u);
}

TEST_F(DiskCacheTest, CollectionCompactsAJournalOverItsBudget) {
  std::vector<CompiledKernel> k;
  for (int i = 0; i < 3; ++i) {
    k.push_back(fakeKernel(256 * (i + 1)));
    publish(k.back());
  }
  const Journal& j = cache_->journal();
  const uint64_t budget = journalBudget(3, 0);
  EXPECT_EQ(budget, 64u * 1024 + 3 * 1024);
  int n = 0;
  while (j.bytes() <= budget)
    ASSERT_FALSE(bool(j.append(CacheEvent::Hit, k[n++ % 3].key)));
  const CacheStats before = j.stats();
  const auto lastBefore = j.lastUse();

  config_.logLevel = LogLevel::Debug;
  auto evicted = cache_->collectGarbage(0);
  ASSERT_TRUE(bool(evicted)) << consumeToString(evicted.takeError());
  EXPECT_TRUE(evicted->empty());
  EXPECT_LT(j.bytes(), 2048u);
  EXPECT_EQ(j.stats().hits, before.hits);
  EXPECT_EQ(j.lastUse(), lastBefore);
  ASSERT_FALSE(logs_.empty());
  EXPECT_TRUE(contains(logs_.back(), "journal compacted path=" + j.path() + " bytes="));

  // Under its budget, it is left alone.
  const uint64_t small = j.bytes();
  ASSERT_FALSE(bool(j.append(CacheEvent::Hit, k[0].key)));
  ASSERT_TRUE(bool(cache_->collectGarbage(0)));
  EXPECT_GT(j.bytes(), small);
  // A size limit makes the budget smaller: a sixteenth of it, at least 4 KiB.
  EXPECT_EQ(journalBudget(0, 1 << 20), 64u * 1024);
  EXPECT_EQ(journalBudget(0, 160 * 1024), 10u * 1024);
  EXPECT_EQ(journalBudget(2, 1000), 4u * 1024 + 2 * 1024);
}

TEST_F(DiskCacheTest, TheJournalCountsAgainstTheSizeLimit) {
  const CompiledKernel a = fakeKernel(1024), b = fakeKernel(2048);
  publish(a);
  publish(b);
  ASSERT_FALSE(bool(cache_->journal().append(CacheEvent::Hit, a.key)));
  std::this_thread::sleep_for(std::chrono::milliseconds(3)); // distinct times: a before b
  ASSERT_FALSE(bool(cache_->journal().append(CacheEvent::Hit, b.key)));
  const uint64_t entries =
      fs::treeBytes(cache_->entryDir(a.key)) + fs::treeBytes(cache_->entryDir(b.key));
  const uint64_t journal = cache_->journal().bytes();
  ASSERT_GT(journal, 0u);
  // Room for both entries, not for the journal too: the least recent goes.
  auto evicted = cache_->collectGarbage(entries + journal - 1);
  ASSERT_TRUE(bool(evicted)) << consumeToString(evicted.takeError());
  EXPECT_EQ(*evicted, std::vector<std::string>{a.key});
}

TEST_F(DiskCacheTest, AppendsKeepTheJournalBounded) {
  constexpr uint64_t kLimit = 8 * 1024;
  Journal j(cache_->journal().path(), nullptr, kLimit);
  const std::string keys[] = {std::string(32, 'a'), std::string(32, 'b'), std::string(32, 'c')};
  uint64_t largest = 0;
  for (int i = 0; i < 600; ++i) {
    ASSERT_FALSE(bool(j.append(i % 7 ? CacheEvent::Hit : CacheEvent::Compile, keys[i % 3], 1.0)));
    largest = std::max(largest, j.bytes());
  }
  EXPECT_LE(largest, kLimit + 200);
  const CacheStats s = j.stats();
  EXPECT_EQ(s.hits + s.compiles, 600);
  EXPECT_EQ(j.lastUse().size(), 3u);
}

// Counts a journal's summaries give (anyone who may write the cache may
// write them) stop at INT64_MAX instead of overflowing, and a negative count
// makes its line malformed (found by fuzz_journal under UBSan).
TEST_F(DiskCacheTest, JournalCountsNeitherOverflowNorGoNegative) {
  const std::string path = cache_->journal().path() + ".counts";
  const std::string big = std::to_string(std::numeric_limits<int64_t>::max());
  const std::string summary =
      R"({"ev":"summary","key":"","kept_bytes":90,"ms":10,"ms_max":5,)"
      R"("n_compile":1,"n_corrupt":0,"n_evict":0,"n_miss":1,"t":1,"n_hit":)";
  std::ofstream(path, std::ios::trunc) << summary << big << "}\n"
                                       << summary << big << "}\n"
                                       << summary << "-5}\n"
                                       << R"({"ev":"hit","key":"k1","pid":1,"t":2})"
                                       << "\n";
  Journal j(path);
  int64_t malformed = -1;
  EXPECT_EQ(j.read(&malformed).size(), 1u);
  EXPECT_EQ(malformed, 1); // the negative count's line
  const CacheStats s = j.stats();
  EXPECT_EQ(s.hits, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(s.misses, 2);
  ASSERT_FALSE(bool(j.compact({"k1"})));
  EXPECT_EQ(j.stats().hits, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(j.stats().misses, 2);
}

// The journal is a file anyone who may write the cache can edit: a first line
// whose fields have other types (read for the compaction budget on every
// append past the limit) is passed over, never thrown from in the host.
TEST_F(DiskCacheTest, AppendsPassOverAFirstLineOfOtherTypes) {
  constexpr uint64_t kLimit = 4 * 1024;
  for (const char* first : {R"({"ev":5,"kept_bytes":100})", R"({"ev":"summary","kept_bytes":"x"})",
                            R"({"ev":["summary"],"kept_bytes":-1})", R"([1,2])"}) {
    const std::string path = cache_->journal().path() + ".typed";
    std::ofstream(path, std::ios::trunc) << first << "\n" << std::string(kLimit, ' ') << "\n";
    Journal j(path, nullptr, kLimit);
    for (int i = 0; i < 40; ++i)
      ASSERT_NO_THROW(ASSERT_FALSE(bool(j.append(CacheEvent::Hit, std::string(32, 'a'))))) << first;
    EXPECT_LE(j.bytes(), kLimit + 200) << first;
    EXPECT_EQ(j.stats().hits, 40) << first;
  }
}

} // namespace
} // namespace bqjit
