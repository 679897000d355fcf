// Who may write the kernels bqjit loads: the cache root and the tree bqjit
// creates below it must be writable by no one but the current user and root
// (or a group named in BQJIT_CACHE_GROUP); bqjit refuses anything else with
// a message naming the path, its owner and mode, and the fix.
//
// How "another user" is tested: CI runs as root, and root can chown files to
// uid/gid 65534 (nobody/nogroup) and drop to that uid in a forked child
// (setresgid/setresuid), which then writes entries as that user. Tests that
// need this skip with the reason when not run as root. The rules themselves
// are also checked for a non-root server without switching users, by
// TrustPolicy's uid (untrustedWriter is a pure function of the status).
#include "cache/trust.hpp"

#include <fstream>
#include <string>
#include <vector>

#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "cache/disk_cache.hpp"
#include "core/fs_util.hpp"
#include "fake_kernel.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;
using test::fakeKernel;
using test::keyInputsOf;

constexpr unsigned kNobody = 65534; // uid nobody and gid nogroup on Debian

unsigned modeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

struct stat statOf(unsigned uid, unsigned gid, unsigned mode, bool dir = true) {
  struct stat st {};
  st.st_uid = uid;
  st.st_gid = gid;
  st.st_mode = (dir ? S_IFDIR : S_IFREG) | mode;
  return st;
}

/// Whether `err` is an error (consumed either way).
bool failed(llvm::Error err) {
  const bool bad = bool(err);
  llvm::consumeError(std::move(err));
  return bad;
}

/// Runs `body` in a child as uid/gid 65534; its exit status (0: passed).
int asNobody(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(kNobody, kNobody, kNobody) != 0 ||
        ::setresuid(kNobody, kNobody, kNobody) != 0)
      ::_exit(90);
    ::_exit(body());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

class CacheTrust : public testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bqjit_trust_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0); // reachable by another user
    config_.cacheDir = dir_ + "/cache";
    config_.logSink = [this](LogLevel, const std::string& text) { logs_.push_back(text); };
  }
  void TearDown() override { llvm::consumeError(fs::removeTree(dir_)); }

  /// A cache with one good entry, published by this process.
  std::unique_ptr<DiskCache> cacheWithEntry(const CompiledKernel& k) {
    auto disk = std::make_unique<DiskCache>(config_.cacheDir, config_);
    EXPECT_FALSE(bool(disk->prepare()));
    llvm::Error err = disk->publish(k, keyInputsOf(k));
    EXPECT_FALSE(bool(err)) << consumeToString(std::move(err));
    return disk;
  }
  static bool root() { return ::geteuid() == 0; }

  std::string dir_;
  Config config_;
  std::vector<std::string> logs_;
};

TEST(TrustRules, NonRootServerTrustsItselfAndRootButNoOneElse) {
  const TrustPolicy server{1000, -1};
  EXPECT_FALSE(untrustedWriter("/c", statOf(1000, 1000, 0755), server));
  EXPECT_FALSE(untrustedWriter("/c", statOf(0, 0, 0755), server)) << "a root-prewarmed image";
  EXPECT_FALSE(untrustedWriter("/c/f", statOf(0, 0, 0644, false), server));
  auto other = untrustedWriter("/c", statOf(2000, 2000, 0755), server);
  ASSERT_TRUE(other);
  EXPECT_TRUE(contains(*other, "'/c' (owner uid 2000"));
  EXPECT_TRUE(contains(*other, "mode 0755"));
  EXPECT_TRUE(contains(*other, "owned by another user"));
  EXPECT_TRUE(contains(*other, "fix: chown"));
  auto world = untrustedWriter("/c", statOf(1000, 1000, 0777), server);
  ASSERT_TRUE(world);
  EXPECT_TRUE(contains(*world, "writable by others"));
  EXPECT_TRUE(contains(*world, "fix: chmod o-w '/c'"));
  auto group = untrustedWriter("/c", statOf(0, 50, 0775), server);
  ASSERT_TRUE(group);
  EXPECT_TRUE(contains(*group, "writable by its group"));
  EXPECT_TRUE(contains(*group, "BQJIT_CACHE_GROUP"));
  EXPECT_TRUE(untrustedWriter("/c", statOf(1000, 1000, 0755), server, /*isLink=*/true));
}

TEST(TrustRules, TrustedGroupAllowsGroupWritableForThatGroupOnly) {
  const TrustPolicy shared{1000, 50};
  EXPECT_FALSE(untrustedWriter("/c", statOf(1000, 50, 02775), shared));
  EXPECT_TRUE(untrustedWriter("/c", statOf(1000, 51, 0775), shared)) << "another group";
  EXPECT_TRUE(untrustedWriter("/c", statOf(1000, 50, 0777), shared)) << "others still refused";
}

TEST_F(CacheTrust, OwnFreshCacheIsTrusted) {
  auto disk = cacheWithEntry(fakeKernel(2048));
  llvm::Error err = disk->checkTrust();
  EXPECT_FALSE(bool(err)) << consumeToString(std::move(err));
  EXPECT_TRUE(disk->trustProblems().empty());
  EXPECT_TRUE(disk->load(fakeKernel(2048).key).has_value());
}

TEST_F(CacheTrust, WorldWritableEntriesAreRefusedNamingPathOwnerModeAndFix) {
  auto disk = cacheWithEntry(fakeKernel(2048));
  const std::string entries = disk->root() + "/entries";
  ASSERT_EQ(::chmod(entries.c_str(), 0777), 0);
  llvm::Error err = disk->checkTrust();
  ASSERT_TRUE(bool(err));
  const std::string message = consumeToString(std::move(err));
  EXPECT_TRUE(contains(message, "refusing to load kernels from the cache at '" + config_.cacheDir));
  EXPECT_TRUE(contains(message, "'" + entries + "' (owner uid " + std::to_string(::geteuid())));
  EXPECT_TRUE(contains(message, "mode 0777"));
  EXPECT_TRUE(contains(message, "writable by others"));
  EXPECT_TRUE(contains(message, "fix: chmod o-w '" + entries + "'"));
  ASSERT_EQ(disk->trustProblems().size(), 1u);
}

TEST_F(CacheTrust, GroupWritableCacheRootIsRefusedButItsParentsAreNotChecked) {
  ASSERT_EQ(::chmod(dir_.c_str(), 0777), 0); // like /tmp: the parent is not checked
  auto disk = cacheWithEntry(fakeKernel(2048));
  EXPECT_FALSE(failed(disk->checkTrust()));
  ASSERT_EQ(::chmod(config_.cacheDir.c_str(), 0775), 0);
  llvm::Error err = disk->checkTrust();
  ASSERT_TRUE(bool(err));
  EXPECT_TRUE(contains(consumeToString(std::move(err)), "writable by its group"));
}

TEST_F(CacheTrust, EntryFileWritableByOthersIsRefusedRemovedAndReported) {
  const CompiledKernel k = fakeKernel(2048);
  auto disk = cacheWithEntry(k);
  const std::string cubin = disk->entryDir(k.key) + "/kernel.cubin";
  ASSERT_EQ(::chmod(cubin.c_str(), 0666), 0);
  EXPECT_EQ(disk->verify().bad, 1);
  std::string problem;
  EXPECT_FALSE(disk->load(k.key, &problem).has_value());
  EXPECT_TRUE(contains(problem, "not trusted: '" + cubin + "'"));
  EXPECT_TRUE(contains(problem, "mode 0666"));
  ASSERT_EQ(logs_.size(), 1u);
  EXPECT_TRUE(contains(logs_[0], "cache entry " + k.key + " is refused and will be recompiled"));
  EXPECT_FALSE(fs::exists(disk->entryDir(k.key)));
}

TEST_F(CacheTrust, SymbolicLinkInAnEntryIsRefused) {
  const CompiledKernel k = fakeKernel(2048);
  auto disk = cacheWithEntry(k);
  const std::string ptx = disk->entryDir(k.key) + "/kernel.ptx";
  ASSERT_EQ(::rename(ptx.c_str(), (dir_ + "/elsewhere.ptx").c_str()), 0);
  ASSERT_EQ(::symlink((dir_ + "/elsewhere.ptx").c_str(), ptx.c_str()), 0);
  std::string problem;
  EXPECT_FALSE(disk->load(k.key, &problem).has_value());
  EXPECT_TRUE(contains(problem, "is a symbolic link"));
}

TEST_F(CacheTrust, EntryChownedToAnotherUserIsRefused) {
  if (!root())
    GTEST_SKIP() << "needs root to chown a file to another user (CI runs as root)";
  const CompiledKernel k = fakeKernel(2048);
  auto disk = cacheWithEntry(k);
  const std::string meta = disk->entryDir(k.key) + "/meta.json";
  ASSERT_EQ(::chown(meta.c_str(), kNobody, kNobody), 0);
  std::string problem;
  EXPECT_FALSE(disk->load(k.key, &problem).has_value());
  EXPECT_TRUE(contains(problem, "(owner uid 65534"));
  EXPECT_TRUE(contains(problem, "owned by another user"));
}

TEST_F(CacheTrust, AnotherUserPlantsAnEntryInAWorldWritableCacheAndIsRefused) {
  if (!root())
    GTEST_SKIP() << "needs root to run a child as another user (CI runs as root)";
  auto disk = cacheWithEntry(fakeKernel(2048));
  for (const char* sub : {"/entries", "/tmp"})
    ASSERT_EQ(::chmod((disk->root() + sub).c_str(), 0777), 0);
  // uid 65534 writes a well-formed entry (right checksums, right key).
  const CompiledKernel planted = fakeKernel(4096);
  const int status = asNobody([&] {
    Config c;
    c.logSink = [](LogLevel, const std::string&) {};
    DiskCache theirs(config_.cacheDir, c);
    return failed(theirs.publish(planted, keyInputsOf(planted))) ? 1 : 0;
  });
  ASSERT_EQ(status, 0) << "the other user could not write the entry";
  ASSERT_EQ(::chmod((disk->root() + "/tmp").c_str(), 0755), 0);
  // The tree is refused as a whole...
  llvm::Error err = disk->checkTrust();
  ASSERT_TRUE(bool(err));
  EXPECT_TRUE(contains(consumeToString(std::move(err)), "writable by others"));
  // ...and the entry, even once the directory is fixed, is someone else's.
  ASSERT_EQ(::chmod((disk->root() + "/entries").c_str(), 0755), 0);
  EXPECT_FALSE(failed(disk->checkTrust()));
  std::string problem;
  EXPECT_FALSE(disk->load(planted.key, &problem).has_value());
  EXPECT_TRUE(contains(problem, "owner uid 65534"));
  EXPECT_TRUE(contains(problem, "owned by another user"));
}

TEST_F(CacheTrust, RootPrewarmedReadOnlyTreeIsTrustedByANonRootServer) {
  if (!root())
    GTEST_SKIP() << "needs root to prewarm as root and serve as another user (CI runs as root)";
  const CompiledKernel k = fakeKernel(2048);
  auto disk = cacheWithEntry(k); // root, 0755 directories and 0644 files
  EXPECT_EQ(modeOf(disk->entryDir(k.key)), 0755u);
  const int status = asNobody([&] {
    Config c;
    c.cacheDir = config_.cacheDir;
    c.logSink = [](LogLevel, const std::string&) {};
    DiskCache served(c.cacheDir, c);
    if (failed(served.checkTrust()))
      return 1;
    if (!served.load(k.key).has_value())
      return 2;
    return failed(served.prepare()) ? 0 : 3; // and it cannot write there: that is fine
  });
  EXPECT_EQ(status, 0);
}

TEST_F(CacheTrust, TrustedGroupAcceptsAGroupWritableCacheOfItsMembers) {
  if (!root())
    GTEST_SKIP() << "needs root to give the cache to another user's group (CI runs as root)";
  const CompiledKernel k = fakeKernel(2048);
  auto disk = cacheWithEntry(k);
  // A member of nogroup (nobody, whose primary group it is) wrote the entry,
  // and the tree is group-writable for nogroup.
  for (const std::string& p :
       {disk->entryDir(k.key), disk->entryDir(k.key) + "/meta.json",
        disk->entryDir(k.key) + "/kernel.cubin", disk->entryDir(k.key) + "/kernel.ptx"})
    ASSERT_EQ(::chown(p.c_str(), kNobody, kNobody), 0);
  for (const std::string& p : {config_.cacheDir, disk->root(), disk->root() + "/entries"}) {
    ASSERT_EQ(::chown(p.c_str(), 0, kNobody), 0);
    ASSERT_EQ(::chmod(p.c_str(), 02775), 0);
  }
  {
    llvm::Error err = disk->checkTrust();
    ASSERT_TRUE(bool(err)) << "without BQJIT_CACHE_GROUP a group-writable cache is refused";
    EXPECT_TRUE(contains(consumeToString(std::move(err)), "writable by its group"));
  }
  Config shared = config_;
  shared.cacheGroup = static_cast<int>(kNobody);
  DiskCache trusted(shared.cacheDir, shared);
  llvm::Error err = trusted.checkTrust();
  EXPECT_FALSE(bool(err)) << consumeToString(std::move(err));
  EXPECT_TRUE(trusted.load(k.key).has_value());
  // Another group is still refused.
  ASSERT_EQ(::chown((disk->root() + "/entries").c_str(), 0, 0), 0);
  EXPECT_TRUE(failed(trusted.checkTrust()));
}

TEST_F(CacheTrust, TrustedGroupCreatesGroupWritableFilesForThatGroupOnly) {
  if (!root())
    GTEST_SKIP() << "needs root to give files to a group it is not in (CI runs as root)";
  const mode_t old = ::umask(022);
  config_.cacheGroup = static_cast<int>(kNobody);
  const CompiledKernel k = fakeKernel(2048);
  auto disk = cacheWithEntry(k);
  ASSERT_FALSE(bool(disk->journal().append(CacheEvent::Hit, k.key)));
  auto lock = disk->lockKey(k.key, 1000);
  ASSERT_TRUE(lock && *lock);
  ::umask(old);
  for (const std::string& p :
       {disk->root(), disk->root() + "/entries", disk->root() + "/locks", disk->entryDir(k.key)}) {
    struct stat st;
    ASSERT_EQ(::stat(p.c_str(), &st), 0);
    EXPECT_EQ(st.st_gid, kNobody) << p;
    EXPECT_EQ(st.st_mode & 07777, 02775u) << p;
  }
  for (const std::string& p :
       {disk->entryDir(k.key) + "/kernel.cubin", disk->journal().path(), (**lock).path()}) {
    struct stat st;
    ASSERT_EQ(::stat(p.c_str(), &st), 0);
    EXPECT_EQ(st.st_gid, kNobody) << p;
    EXPECT_EQ(st.st_mode & 07777, 0664u) << p;
  }
  llvm::Error err = disk->checkTrust();
  EXPECT_FALSE(bool(err)) << consumeToString(std::move(err));
}

TEST_F(CacheTrust, NewFilesAndDirectoriesFollowTheUmaskNeverWider) {
  const CompiledKernel k = fakeKernel(2048);
  const mode_t old = ::umask(077);
  {
    auto disk = cacheWithEntry(k);
    ASSERT_FALSE(bool(disk->journal().append(CacheEvent::Hit, k.key)));
    auto lock = disk->lockKey(k.key, 1000);
    ASSERT_TRUE(lock && *lock);
    EXPECT_EQ(modeOf(disk->root()), 0700u);
    EXPECT_EQ(modeOf(disk->entryDir(k.key)), 0700u);
    EXPECT_EQ(modeOf(disk->entryDir(k.key) + "/kernel.cubin"), 0600u);
    EXPECT_EQ(modeOf(disk->journal().path()), 0600u);
    EXPECT_EQ(modeOf((**lock).path()), 0600u);
  }
  llvm::consumeError(fs::removeTree(config_.cacheDir));
  ::umask(0); // never wider than 0755 / 0644, whatever the umask allows
  {
    auto disk = cacheWithEntry(k);
    ASSERT_FALSE(bool(disk->journal().append(CacheEvent::Hit, k.key)));
    auto lock = disk->lockKey(k.key, 1000);
    ASSERT_TRUE(lock && *lock);
    EXPECT_EQ(modeOf(config_.cacheDir), 0755u);
    EXPECT_EQ(modeOf(disk->root() + "/tmp"), 0755u);
    EXPECT_EQ(modeOf(disk->entryDir(k.key)), 0755u);
    EXPECT_EQ(modeOf(disk->entryDir(k.key) + "/meta.json"), 0644u);
    EXPECT_EQ(modeOf(disk->journal().path()), 0644u);
    EXPECT_EQ(modeOf((**lock).path()), 0644u);
    llvm::Error err = disk->checkTrust();
    EXPECT_FALSE(bool(err)) << consumeToString(std::move(err));
  }
  ::umask(old);
}

} // namespace
} // namespace bqjit
