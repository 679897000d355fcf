// The fleet tier against a real redis-server (redis_test_support.hpp): the
// entry format and its verification, the fleet lock, every fault (down,
// slow, stopped, killed, full, a corrupt or foreign entry) costing one
// warning and local behaviour, and fleets of processes with separate disk
// caches compiling each kernel once.
//
// NVRTC runs only in forked children, each with its own Compiler made after
// the fork (as in test_cache_robustness); the parent uses the tier alone.
#include "cache/remote_tier.hpp"

#include <chrono>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "cache/entry_blob.hpp"
#include "cache/kernel_cache.hpp"
#include "cache_test_support.hpp"
#include "core/fs_util.hpp"
#include "fake_kernel.hpp"
#include "redis_test_support.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using Clock = std::chrono::steady_clock;
using test::contains;
using test::fakeKernel;
using test::keyInputsOf;

using test::msSince;
using test::specNumber;

class RemoteCache : public testing::Test {
protected:
  void SetUp() override {
    BQJIT_REQUIRE_REDIS_SERVER();
    char tmpl[] = "/tmp/bqjit_remote_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_TRUE(server_.start(dir_));
    secretPath_ = dir_ + "/secret";
    { std::ofstream(secretPath_) << "a fleet secret of more than sixteen bytes\n"; }
    ::chmod(secretPath_.c_str(), 0600);
  }
  void TearDown() override {
    server_.kill();
    if (!dir_.empty())
      llvm::consumeError(fs::removeTree(dir_));
  }

  Config config(const std::string& cacheDir = "") {
    Config c;
    c.cacheDir = cacheDir;
    c.remoteCache = server_.url();
    c.secretFile = secretPath_;
    c.lockTimeoutMs = 10000;
    c.logSink = [this](LogLevel level, const std::string& text) {
      std::lock_guard<std::mutex> lock(logMutex_);
      if (level == LogLevel::Warn)
        warnings_.push_back(text);
    };
    return c;
  }
  std::unique_ptr<RemoteTier> tier(const Config& c) {
    std::string refusal;
    auto t = RemoteTier::create(c, &refusal);
    EXPECT_TRUE(t) << refusal;
    return t;
  }
  std::vector<std::string> warnings() {
    std::lock_guard<std::mutex> lock(logMutex_);
    return warnings_;
  }

  std::string dir_;
  std::string secretPath_;
  test::RedisServer server_;
  std::mutex logMutex_;
  std::vector<std::string> warnings_;
};

TEST_F(RemoteCache, PublishThenFetchRoundTripsEveryByte) {
  Config c = config();
  auto t = tier(c);
  const CompiledKernel k = fakeKernel(2048);
  EXPECT_EQ(t->fetch(k.key).status, RemoteTier::Status::Miss);
  ASSERT_TRUE(t->publish(k, keyInputsOf(k)));
  auto got = t->fetch(k.key);
  ASSERT_EQ(got.status, RemoteTier::Status::Hit);
  EXPECT_EQ(got.kernel->cubin, k.cubin);
  EXPECT_EQ(got.kernel->ptx, k.ptx);
  EXPECT_EQ(got.kernel->spec.canonical(), k.spec.canonical());
  EXPECT_EQ(got.keyInputs, keyInputsOf(k));
  // One key per entry, with the configured expiry.
  const redis::Reply ttl = server_.run({"TTL", RemoteTier::entryKey(k.key)});
  EXPECT_GT(ttl.integer, 29 * 24 * 3600);
  EXPECT_TRUE(warnings().empty());
}

TEST_F(RemoteCache, CorruptValueIsRejectedWithOneWarning) {
  Config c = config();
  auto t = tier(c);
  const CompiledKernel k = fakeKernel(2048);
  ASSERT_TRUE(t->publish(k, keyInputsOf(k)));
  std::string value = server_.run({"GET", RemoteTier::entryKey(k.key)}).text;
  value[value.size() / 2] ^= 0x20;
  server_.run({"SET", RemoteTier::entryKey(k.key), value});
  EXPECT_EQ(t->fetch(k.key).status, RemoteTier::Status::Bad);
  EXPECT_EQ(t->fetch(k.key).status, RemoteTier::Status::Bad);
  ASSERT_EQ(warnings().size(), 1u);
  EXPECT_TRUE(contains(warnings()[0], "entry " + k.key + " is rejected"));
  EXPECT_TRUE(contains(warnings()[0], "HMAC tag does not verify"));
  server_.run({"SET", RemoteTier::entryKey(k.key), "garbage"});
  EXPECT_EQ(t->fetch(k.key).status, RemoteTier::Status::Bad);
  // Replaced by a publish: good again.
  ASSERT_TRUE(t->publish(k, keyInputsOf(k)));
  EXPECT_EQ(t->fetch(k.key).status, RemoteTier::Status::Hit);
}

TEST_F(RemoteCache, ForeignKeysEntryIsRejected) {
  Config c = config();
  auto t = tier(c);
  const CompiledKernel a = fakeKernel(2048), b = fakeKernel(4096);
  ASSERT_TRUE(t->publish(a, keyInputsOf(a)));
  server_.run({"COPY", RemoteTier::entryKey(a.key), RemoteTier::entryKey(b.key)});
  EXPECT_EQ(t->fetch(b.key).status, RemoteTier::Status::Bad);
  ASSERT_EQ(warnings().size(), 1u);
  EXPECT_TRUE(contains(warnings()[0], "holds key " + a.key + ", not " + b.key));
}

TEST_F(RemoteCache, ServerThatIsDownCostsOneWarningAndNoWait) {
  Config c = config();
  c.remoteCache = "redis://127.0.0.1:" + std::to_string(test::freeLoopbackPort()) + "/0";
  auto t = tier(c);
  const auto start = Clock::now();
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(t->fetch(fakeKernel(2048).key).status, RemoteTier::Status::Down);
  EXPECT_LT(msSince(start), 1000);
  ASSERT_EQ(warnings().size(), 1u);
  EXPECT_TRUE(contains(warnings()[0], "cannot connect"));
  EXPECT_TRUE(contains(warnings()[0], "using the local cache alone"));
}

TEST_F(RemoteCache, SlowServerTimesOutPerRequest) {
  Config c = config();
  c.remoteTimeoutMs = 200;
  auto t = tier(c);
  const CompiledKernel k = fakeKernel(2048);
  ASSERT_TRUE(t->publish(k, keyInputsOf(k)));
  std::thread sleeper([&] {
    auto client = server_.client(10000);
    if (client)
      llvm::consumeError((*client)->command({"DEBUG", "SLEEP", "1.5"}).takeError());
    else
      llvm::consumeError(client.takeError());
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto start = Clock::now();
  EXPECT_EQ(t->fetch(k.key).status, RemoteTier::Status::Down);
  EXPECT_LT(msSince(start), 700) << "a request waited past its timeout";
  sleeper.join();
  ASSERT_EQ(warnings().size(), 1u);
  EXPECT_TRUE(contains(warnings()[0], "no answer within 200 ms"));
  // Back after the retry delay.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_EQ(t->fetch(k.key).status, RemoteTier::Status::Hit);
}

TEST_F(RemoteCache, FullServerRefusesPublishWithOneWarning) {
  Config c = config();
  auto t = tier(c);
  server_.run({"CONFIG", "SET", "maxmemory-policy", "noeviction"});
  server_.run({"CONFIG", "SET", "maxmemory", "2mb"});
  const std::string filler(8 * 1024, 'x'); // small: a large request counts its own buffer
  for (int i = 0; i < 2000; ++i)
    if (server_.run({"SET", "filler" + std::to_string(i), filler}).kind ==
        redis::Reply::Kind::Error)
      break;
  const CompiledKernel a = fakeKernel(2048), b = fakeKernel(4096);
  EXPECT_FALSE(t->publish(a, keyInputsOf(a)));
  EXPECT_FALSE(t->publish(b, keyInputsOf(b)));
  ASSERT_EQ(warnings().size(), 1u);
  EXPECT_TRUE(contains(warnings()[0], "did not store " + a.key));
  EXPECT_TRUE(contains(warnings()[0], "OOM"));
}

TEST_F(RemoteCache, LockIsExclusiveAndReleasedOnlyByItsToken) {
  Config c = config();
  auto t = tier(c);
  const std::string key = fakeKernel(2048).key;
  EXPECT_EQ(t->tryLock(key, "first", 5000), RemoteTier::LockStatus::Acquired);
  EXPECT_EQ(t->tryLock(key, "second", 5000), RemoteTier::LockStatus::Held);
  t->unlock(key, "second");
  EXPECT_EQ(t->tryLock(key, "third", 5000), RemoteTier::LockStatus::Held);
  t->unlock(key, "first");
  EXPECT_EQ(t->tryLock(key, "fourth", 5000), RemoteTier::LockStatus::Acquired);
  // A holder that died is replaced after the expiry.
  EXPECT_EQ(t->tryLock(fakeKernel(4096).key, "dies", 100), RemoteTier::LockStatus::Acquired);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(t->tryLock(fakeKernel(4096).key, "next", 100), RemoteTier::LockStatus::Acquired);
}

TEST_F(RemoteCache, WithoutASecretTheTierRefusesToStartAndSaysSo) {
  Config c = config();
  c.secretFile.clear();
  std::string refusal;
  EXPECT_FALSE(RemoteTier::create(c, &refusal));
  EXPECT_TRUE(contains(refusal, "needs the fleet secret"));
  EXPECT_TRUE(contains(refusal, "BQJIT_CACHE_SECRET_FILE"));
  EXPECT_TRUE(contains(refusal, "the remote cache is off"));
  c.insecureUnsigned = true;
  EXPECT_TRUE(RemoteTier::create(c, &refusal));
  ASSERT_EQ(warnings().size(), 1u);
  EXPECT_TRUE(contains(warnings()[0], "BQJIT_INSECURE_UNSIGNED=1"));
}

TEST_F(RemoteCache, SecretFileReadableByOthersIsRefused) {
  ::chmod(secretPath_.c_str(), 0644);
  Config c = config();
  std::string refusal;
  EXPECT_FALSE(RemoteTier::create(c, &refusal));
  EXPECT_TRUE(contains(refusal, "'" + secretPath_ + "'"));
  EXPECT_TRUE(contains(refusal, "mode 0644"));
  EXPECT_TRUE(contains(refusal, "readable or writable by others"));
  EXPECT_TRUE(contains(refusal, "fix: chmod 600"));
}

TEST_F(RemoteCache, UnsignedOrOtherSecretsEntriesAreRefused) {
  Config c = config();
  auto t = tier(c);
  const CompiledKernel k = fakeKernel(2048);
  Authenticator unsigned_;
  unsigned_.insecure = true;
  server_.run({"SET", RemoteTier::entryKey(k.key), encodeEntryBlob(k, keyInputsOf(k), unsigned_)});
  EXPECT_EQ(t->fetch(k.key).status, RemoteTier::Status::Bad);
  Authenticator other;
  other.secret = FleetSecret::fromBytes("another secret of the same length!!");
  const CompiledKernel k2 = fakeKernel(4096);
  server_.run({"SET", RemoteTier::entryKey(k2.key), encodeEntryBlob(k2, keyInputsOf(k2), other)});
  EXPECT_EQ(t->fetch(k2.key).status, RemoteTier::Status::Bad);
  const auto w = warnings();
  ASSERT_EQ(w.size(), 2u);
  EXPECT_TRUE(contains(w[0], "is not signed (no HMAC tag)"));
  EXPECT_TRUE(contains(w[1], "HMAC tag does not verify"));
}

// --- Processes: each child makes its own Compiler and KernelCache after the fork.

struct ChildResult {
  int status = -1;
  std::string report;
};

/// Runs `body(fd)` in `n` children at once; their reports and exit statuses.
std::vector<ChildResult> runChildren(int n, const std::function<int(int, int)>& body,
                                     const std::function<void()>& whileRunning = nullptr) {
  std::vector<std::pair<pid_t, int>> kids;
  for (int i = 0; i < n; ++i) {
    int p[2];
    if (::pipe(p) != 0)
      return {};
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(p[0]);
      ::_exit(body(i, p[1]));
    }
    ::close(p[1]);
    kids.push_back({pid, p[0]});
  }
  if (whileRunning)
    whileRunning();
  std::vector<ChildResult> out;
  for (auto& [pid, fd] : kids) {
    ChildResult r;
    char buf[4096];
    ssize_t got;
    while ((got = ::read(fd, buf, sizeof buf)) > 0)
      r.report.append(buf, static_cast<size_t>(got));
    ::close(fd);
    int status = 0;
    ::waitpid(pid, &status, 0);
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
    out.push_back(std::move(r));
  }
  return out;
}

void say(int fd, const std::string& text) {
  if (::write(fd, text.data(), text.size()) < 0)
    return;
}

/// A child: asks for specs 1..`specs` through a KernelCache of its own disk
/// directory and the shared remote; reports "compiles=N remote=N warnings=N".
int fleetMember(Config c, int specs, int fd) {
  std::vector<std::string> warned;
  std::mutex m;
  c.logSink = [&](LogLevel level, const std::string& text) {
    std::lock_guard<std::mutex> lock(m);
    if (level == LogLevel::Warn)
      warned.push_back(text);
  };
  auto compiler = Compiler::create();
  if (!compiler) {
    say(fd, "FAIL: " + consumeToString(compiler.takeError()) + "\n");
    return 1;
  }
  KernelCache cache(c, std::move(*compiler));
  for (int k = 1; k <= specs; ++k) {
    auto got = test::getSpec(cache, specNumber(k));
    if (!got) {
      say(fd, "FAIL: " + consumeToString(got.takeError()) + "\n");
      return 1;
    }
    if (got->kernel->spec.hidden != 128 * k || got->kernel->cubin.empty()) {
      say(fd, "FAIL: wrong kernel for spec " + std::to_string(k) + "\n");
      return 1;
    }
  }
  const CacheCounters n = cache.counters();
  std::string text = "compiles=" + std::to_string(n.compiles) +
                     " remote=" + std::to_string(n.remoteHits) +
                     " warnings=" + std::to_string(warned.size()) + "\n";
  for (const auto& w : warned)
    text += "WARN: " + w + "\n";
  say(fd, text);
  return 0;
}

int field(const std::string& report, const std::string& name) {
  const auto at = report.find(name + "=");
  return at == std::string::npos ? -1 : std::atoi(report.c_str() + at + name.size() + 1);
}

TEST_F(RemoteCache, FleetCompilesEachKernelOnceThenNeverAgain) {
  constexpr int kProcesses = 8, kSpecs = 3;
  // Wave 1: an empty remote, eight hosts (separate disk caches).
  const auto start = Clock::now();
  auto wave1 = runChildren(kProcesses, [&](int i, int fd) {
    return fleetMember(config(dir_ + "/wave1_host" + std::to_string(i)), kSpecs, fd);
  });
  const double wave1Ms = msSince(start);
  int compiles = 0, remote = 0;
  for (const auto& r : wave1) {
    EXPECT_EQ(r.status, 0) << r.report;
    compiles += field(r.report, "compiles");
    remote += field(r.report, "remote");
    EXPECT_EQ(field(r.report, "warnings"), 0) << r.report;
  }
  EXPECT_EQ(compiles, kSpecs) << "one compile per key across the fleet";
  EXPECT_EQ(remote, kProcesses * kSpecs - kSpecs);
  // Wave 2: eight fresh hosts: everything from the remote.
  const auto start2 = Clock::now();
  auto wave2 = runChildren(kProcesses, [&](int i, int fd) {
    return fleetMember(config(dir_ + "/wave2_host" + std::to_string(i)), kSpecs, fd);
  });
  const double wave2Ms = msSince(start2);
  compiles = 0;
  for (const auto& r : wave2) {
    EXPECT_EQ(r.status, 0) << r.report;
    compiles += field(r.report, "compiles");
    EXPECT_EQ(field(r.report, "remote"), kSpecs) << r.report;
  }
  EXPECT_EQ(compiles, 0);
  std::printf("fleet: %d processes x %d kernels: wave 1 (empty remote) %.0f ms, wave 2 (from "
              "the remote) %.0f ms\n",
              kProcesses, kSpecs, wave1Ms, wave2Ms);
}

TEST_F(RemoteCache, RedisKilledMidRunEveryProcessFinishesLocally) {
  constexpr int kProcesses = 4, kSpecs = 3;
  const auto start = Clock::now();
  auto results = runChildren(
      kProcesses,
      [&](int i, int fd) {
        return fleetMember(config(dir_ + "/host" + std::to_string(i)), kSpecs, fd);
      },
      [&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        server_.kill();
      });
  for (const auto& r : results)
    EXPECT_EQ(r.status, 0) << r.report;
  EXPECT_LT(msSince(start), 60000);
}

TEST_F(RemoteCache, StoppedRedisEveryProcessFinishesWithinTheTimeouts) {
  constexpr int kProcesses = 4, kSpecs = 2;
  server_.signal(SIGSTOP);
  const auto start = Clock::now();
  auto results = runChildren(kProcesses, [&](int i, int fd) {
    return fleetMember(config(dir_ + "/host" + std::to_string(i)), kSpecs, fd);
  });
  server_.signal(SIGCONT);
  for (const auto& r : results) {
    EXPECT_EQ(r.status, 0) << r.report;
    EXPECT_EQ(field(r.report, "compiles"), kSpecs) << r.report;
    EXPECT_EQ(field(r.report, "warnings"), 1) << r.report;
    EXPECT_TRUE(contains(r.report, "no answer within 300 ms")) << r.report;
  }
  EXPECT_LT(msSince(start), 30000);
}

TEST_F(RemoteCache, CorruptRemoteValueIsRecompiledAndReplaced) {
  auto first =
      runChildren(1, [&](int, int fd) { return fleetMember(config(dir_ + "/first"), 1, fd); });
  ASSERT_EQ(first[0].status, 0) << first[0].report;
  const redis::Reply keys = server_.run({"KEYS", "bqjit:v1:entry:*"});
  ASSERT_EQ(keys.elements.size(), 1u);
  const std::string entryKey = keys.elements[0].text;
  std::string value = server_.run({"GET", entryKey}).text;
  value[100] ^= 0x01;
  server_.run({"SET", entryKey, value});
  auto second =
      runChildren(1, [&](int, int fd) { return fleetMember(config(dir_ + "/second"), 1, fd); });
  ASSERT_EQ(second[0].status, 0) << second[0].report;
  EXPECT_EQ(field(second[0].report, "compiles"), 1) << second[0].report;
  EXPECT_TRUE(contains(second[0].report, "is rejected and will be recompiled and replaced"));
  // Replaced: a third host loads it.
  auto third =
      runChildren(1, [&](int, int fd) { return fleetMember(config(dir_ + "/third"), 1, fd); });
  EXPECT_EQ(field(third[0].report, "compiles"), 0) << third[0].report;
  EXPECT_EQ(field(third[0].report, "remote"), 1) << third[0].report;
}

} // namespace
} // namespace bqjit
