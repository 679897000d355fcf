// Config::fromEnvironment with an injected getenv, and Config::log.
#include "bqjit/config.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

/// A fake environment; the returned function keeps it alive.
std::function<const char*(const char*)> env(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

Config load(std::map<std::string, std::string> vars) {
  auto c = Config::fromEnvironment(env(std::move(vars)));
  if (!c) {
    ADD_FAILURE() << consumeToString(c.takeError());
    return Config();
  }
  return std::move(*c);
}

/// Expects an InvalidArgument error naming the variable and the value.
void expectMalformed(const std::string& name, const std::string& value, const std::string& rule) {
  SCOPED_TRACE(name + "=" + value);
  auto c = Config::fromEnvironment(env({{"HOME", "/home/u"}, {name, value}}));
  ASSERT_FALSE(bool(c)) << "accepted";
  std::string message;
  EXPECT_EQ(consumeError(c.takeError(), &message), ErrorCode::InvalidArgument);
  EXPECT_TRUE(contains(message, name + "='" + value + "'"));
  EXPECT_TRUE(contains(message, rule));
}

TEST(Config, Defaults) {
  const Config c = load({{"HOME", "/home/u"}});
  EXPECT_EQ(c.cacheDir, "/home/u/.cache/bqjit");
  EXPECT_EQ(c.maxCacheBytes, 0u);
  EXPECT_EQ(c.logLevel, LogLevel::Warn);
  EXPECT_FALSE(c.noCompile);
  EXPECT_EQ(c.lockTimeoutMs, 120000);
  EXPECT_TRUE(c.programmaticLaunch);
  EXPECT_FALSE(static_cast<bool>(c.logSink));
}

TEST(Config, NoHomeMeansMemoryOnly) {
  EXPECT_EQ(load({}).cacheDir, "");
}

TEST(Config, CacheDirPrecedence) {
  EXPECT_EQ(load({{"BQJIT_CACHE_DIR", "/b"}, {"XDG_CACHE_HOME", "/x"}, {"HOME", "/h"}}).cacheDir,
            "/b");
  EXPECT_EQ(load({{"XDG_CACHE_HOME", "/x"}, {"HOME", "/h"}}).cacheDir, "/x/bqjit");
  EXPECT_EQ(load({{"HOME", "/h"}}).cacheDir, "/h/.cache/bqjit");
  EXPECT_EQ(load({{"BQJIT_CACHE_DIR", "/b"}}).cacheDir, "/b");
  // An empty variable counts as unset.
  EXPECT_EQ(load({{"BQJIT_CACHE_DIR", ""}, {"XDG_CACHE_HOME", "/x"}, {"HOME", "/h"}}).cacheDir,
            "/x/bqjit");
  EXPECT_EQ(load({{"XDG_CACHE_HOME", ""}, {"HOME", "/h"}}).cacheDir, "/h/.cache/bqjit");
}

TEST(Config, MaxBytesParsed) {
  EXPECT_EQ(load({{"BQJIT_CACHE_MAX_BYTES", "0"}}).maxCacheBytes, 0u);
  EXPECT_EQ(load({{"BQJIT_CACHE_MAX_BYTES", "1073741824"}}).maxCacheBytes, 1073741824u);
  EXPECT_EQ(load({{"BQJIT_CACHE_MAX_BYTES", "18446744073709551615"}}).maxCacheBytes,
            18446744073709551615ull);
}

TEST(Config, MaxBytesMalformed) {
  expectMalformed("BQJIT_CACHE_MAX_BYTES", "-1", "must be a non-negative integer");
  expectMalformed("BQJIT_CACHE_MAX_BYTES", "10G", "must be a non-negative integer");
  expectMalformed("BQJIT_CACHE_MAX_BYTES", "1e9", "must be a non-negative integer");
  expectMalformed("BQJIT_CACHE_MAX_BYTES", " 5", "must be a non-negative integer");
  expectMalformed("BQJIT_CACHE_MAX_BYTES", "18446744073709551616", "out of range");
}

TEST(Config, LogLevelParsed) {
  EXPECT_EQ(load({{"BQJIT_LOG_LEVEL", "quiet"}}).logLevel, LogLevel::Quiet);
  EXPECT_EQ(load({{"BQJIT_LOG_LEVEL", "warn"}}).logLevel, LogLevel::Warn);
  EXPECT_EQ(load({{"BQJIT_LOG_LEVEL", "info"}}).logLevel, LogLevel::Info);
  EXPECT_EQ(load({{"BQJIT_LOG_LEVEL", "debug"}}).logLevel, LogLevel::Debug);
}

TEST(Config, LogLevelMalformed) {
  expectMalformed("BQJIT_LOG_LEVEL", "verbose", "must be one of quiet, warn, info, debug");
  expectMalformed("BQJIT_LOG_LEVEL", "WARN", "must be one of quiet, warn, info, debug");
  expectMalformed("BQJIT_LOG_LEVEL", "2", "must be one of");
}

TEST(Config, NoCompileParsed) {
  EXPECT_TRUE(load({{"BQJIT_NO_COMPILE", "1"}}).noCompile);
  EXPECT_FALSE(load({{"BQJIT_NO_COMPILE", "0"}}).noCompile);
}

TEST(Config, NoCompileMalformed) {
  expectMalformed("BQJIT_NO_COMPILE", "yes", "must be 0 or 1");
  expectMalformed("BQJIT_NO_COMPILE", "true", "must be 0 or 1");
  expectMalformed("BQJIT_NO_COMPILE", "2", "must be 0 or 1");
}

TEST(Config, ProgrammaticLaunchDefaultParsed) {
  EXPECT_FALSE(load({{"BQJIT_PDL", "0"}}).programmaticLaunch);
  EXPECT_TRUE(load({{"BQJIT_PDL", "1"}}).programmaticLaunch);
}

TEST(Config, ProgrammaticLaunchDefaultMalformed) {
  expectMalformed("BQJIT_PDL", "on", "must be 0 or 1");
  expectMalformed("BQJIT_PDL", "true", "must be 0 or 1");
}

TEST(Config, AutotuneParsed) {
  EXPECT_FALSE(load({}).autotune);
  EXPECT_FALSE(load({{"BQJIT_AUTOTUNE", "0"}}).autotune);
  EXPECT_TRUE(load({{"BQJIT_AUTOTUNE", "1"}}).autotune);
}

TEST(Config, CudaDriverParsed) {
  EXPECT_EQ(load({}).cudaDriver, "");
  EXPECT_EQ(load({{"BQJIT_CUDA_DRIVER", "/opt/compat/libcuda.so.1"}}).cudaDriver,
            "/opt/compat/libcuda.so.1");
}

TEST(Config, AutotuneMalformed) {
  expectMalformed("BQJIT_AUTOTUNE", "yes", "must be 0 or 1");
  expectMalformed("BQJIT_AUTOTUNE", "2", "must be 0 or 1");
}

TEST(Config, LockTimeoutParsed) {
  EXPECT_EQ(load({{"BQJIT_LOCK_TIMEOUT_MS", "0"}}).lockTimeoutMs, 0);
  EXPECT_EQ(load({{"BQJIT_LOCK_TIMEOUT_MS", "2500"}}).lockTimeoutMs, 2500);
  EXPECT_EQ(load({{"BQJIT_LOCK_TIMEOUT_MS", "86400000"}}).lockTimeoutMs, 86400000);
}

TEST(Config, LockTimeoutMalformed) {
  expectMalformed("BQJIT_LOCK_TIMEOUT_MS", "abc", "must be a non-negative integer");
  expectMalformed("BQJIT_LOCK_TIMEOUT_MS", "-5", "must be a non-negative integer");
  expectMalformed("BQJIT_LOCK_TIMEOUT_MS", "1.5", "must be a non-negative integer");
  expectMalformed("BQJIT_LOCK_TIMEOUT_MS", "86400001", "must be at most one day");
  expectMalformed("BQJIT_LOCK_TIMEOUT_MS", "99999999999999999999", "out of range");
}

TEST(Config, CacheGroupByNameOrNumber) {
  EXPECT_EQ(load({}).cacheGroup, -1);
  EXPECT_EQ(load({{"BQJIT_CACHE_GROUP", "root"}}).cacheGroup, 0);
  EXPECT_EQ(load({{"BQJIT_CACHE_GROUP", "4242"}}).cacheGroup, 4242);
}

TEST(Config, CacheGroupMalformed) {
  expectMalformed("BQJIT_CACHE_GROUP", "no-such-group-here", "names no group of this system");
  expectMalformed("BQJIT_CACHE_GROUP", "99999999999", "is not a group id");
}

TEST(Config, RemoteCacheSettingsParsed) {
  const Config c = load({{"BQJIT_REMOTE_CACHE", "redis://:pw@cache.internal:6380/2"},
                         {"BQJIT_REMOTE_TIMEOUT_MS", "150"},
                         {"BQJIT_REMOTE_TTL_S", "0"},
                         {"BQJIT_CACHE_SECRET_FILE", "/etc/bqjit/secret"},
                         {"BQJIT_INSECURE_UNSIGNED", "1"}});
  EXPECT_EQ(c.remoteCache, "redis://:pw@cache.internal:6380/2");
  EXPECT_EQ(c.remoteTimeoutMs, 150);
  EXPECT_EQ(c.remoteTtlSeconds, 0);
  EXPECT_EQ(c.secretFile, "/etc/bqjit/secret");
  EXPECT_TRUE(c.insecureUnsigned);
  EXPECT_EQ(load({}).remoteTimeoutMs, 300);
}

TEST(Config, RemoteCacheSettingsMalformed) {
  expectMalformed("BQJIT_REMOTE_CACHE", "http://h:1/0", "must start with redis://");
  expectMalformed("BQJIT_REMOTE_CACHE", "redis://h:99999/0", "port '99999'");
  expectMalformed("BQJIT_REMOTE_CACHE", "redis://h:6379/x", "database 'x'");
  expectMalformed("BQJIT_REMOTE_TIMEOUT_MS", "0", "must be from 1 to 60000");
  expectMalformed("BQJIT_INSECURE_UNSIGNED", "yes", "must be 0 or 1");
  // A password is never repeated in the message.
  auto c = Config::fromEnvironment(env({{"BQJIT_REMOTE_CACHE", "redis://:secretpw@h:0/0"}}));
  ASSERT_FALSE(bool(c));
  EXPECT_FALSE(contains(consumeToString(c.takeError()), "secretpw"));
}

TEST(Config, AllVariablesTogether) {
  const Config c = load({{"BQJIT_CACHE_DIR", "/c"},
                         {"BQJIT_CACHE_MAX_BYTES", "4096"},
                         {"BQJIT_LOG_LEVEL", "debug"},
                         {"BQJIT_NO_COMPILE", "1"},
                         {"BQJIT_LOCK_TIMEOUT_MS", "10"}});
  EXPECT_EQ(c.cacheDir, "/c");
  EXPECT_EQ(c.maxCacheBytes, 4096u);
  EXPECT_EQ(c.logLevel, LogLevel::Debug);
  EXPECT_TRUE(c.noCompile);
  EXPECT_EQ(c.lockTimeoutMs, 10);
}

TEST(Config, ProcessEnvironmentIsTheDefault) {
  // Without an injected getenv the real environment is read.
  ::setenv("BQJIT_CACHE_DIR", "/from/the/real/env", 1);
  ::setenv("BQJIT_LOG_LEVEL", "info", 1);
  auto c = Config::fromEnvironment();
  ::unsetenv("BQJIT_CACHE_DIR");
  ::unsetenv("BQJIT_LOG_LEVEL");
  ASSERT_TRUE(bool(c)) << consumeToString(c.takeError());
  EXPECT_EQ(c->cacheDir, "/from/the/real/env");
  EXPECT_EQ(c->logLevel, LogLevel::Info);
}

TEST(Config, LogRespectsLevelAndSink) {
  std::vector<std::pair<LogLevel, std::string>> lines;
  Config c;
  c.logSink = [&](LogLevel level, const std::string& text) { lines.emplace_back(level, text); };
  c.logLevel = LogLevel::Warn;
  c.log(LogLevel::Warn, "w");
  c.log(LogLevel::Info, "i");
  c.log(LogLevel::Debug, "d");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].first, LogLevel::Warn);
  EXPECT_EQ(lines[0].second, "w");

  lines.clear();
  c.logLevel = LogLevel::Debug;
  c.log(LogLevel::Warn, "w");
  c.log(LogLevel::Info, "i");
  c.log(LogLevel::Debug, "d");
  c.log(LogLevel::Quiet, "never"); // Quiet is a threshold, not a message level
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[2].second, "d");

  lines.clear();
  c.logLevel = LogLevel::Quiet;
  c.log(LogLevel::Warn, "w");
  EXPECT_TRUE(lines.empty());
}

TEST(Config, DefaultLogGoesToStderr) {
  Config c;
  testing::internal::CaptureStderr();
  c.log(LogLevel::Warn, "disk full");
  c.log(LogLevel::Info, "hidden");
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "bqjit: warning: disk full\n");
}

/// Restores stderr logging when a test ends, whatever it did.
struct ProcessSinkReset {
  ~ProcessSinkReset() { llvm::consumeError(setProcessLogSink(nullptr, LogLevel::Warn)); }
};

TEST(Config, ProcessSinkTakesTheLinesOfConfigsWithoutTheirOwnSink) {
  ProcessSinkReset reset;
  std::vector<std::pair<LogLevel, std::string>> lines;
  ASSERT_FALSE(bool(setProcessLogSink(
      [&](LogLevel level, const std::string& text) { lines.emplace_back(level, text); },
      LogLevel::Info)));
  Config plain; // logLevel Warn: the process sink's level replaces it
  EXPECT_TRUE(plain.logs(LogLevel::Info));
  EXPECT_FALSE(plain.logs(LogLevel::Debug));
  testing::internal::CaptureStderr();
  plain.log(LogLevel::Warn, "w");
  plain.log(LogLevel::Info, "i");
  plain.log(LogLevel::Debug, "d");
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], std::make_pair(LogLevel::Warn, std::string("w")));
  EXPECT_EQ(lines[1], std::make_pair(LogLevel::Info, std::string("i")));

  // A Config with its own sink keeps it, and its own level.
  std::vector<std::string> own;
  Config mine;
  mine.logSink = [&](LogLevel, const std::string& text) { own.push_back(text); };
  mine.log(LogLevel::Info, "hidden by its own level");
  mine.log(LogLevel::Warn, "mine");
  EXPECT_EQ(own, std::vector<std::string>{"mine"});
  EXPECT_EQ(lines.size(), 2u);

  // Removed: stderr again, filtered by the Config's level.
  ASSERT_FALSE(bool(setProcessLogSink(nullptr, LogLevel::Debug)));
  EXPECT_FALSE(plain.logs(LogLevel::Info));
  testing::internal::CaptureStderr();
  plain.log(LogLevel::Info, "i");
  plain.log(LogLevel::Warn, "w");
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "bqjit: warning: w\n");
  EXPECT_EQ(lines.size(), 2u);
}

TEST(Config, ProcessSinkLevelFilters) {
  ProcessSinkReset reset;
  for (LogLevel level : {LogLevel::Quiet, LogLevel::Warn, LogLevel::Info, LogLevel::Debug}) {
    std::vector<LogLevel> got;
    ASSERT_FALSE(
        bool(setProcessLogSink([&](LogLevel l, const std::string&) { got.push_back(l); }, level)));
    Config c;
    c.logLevel = LogLevel::Debug; // ignored while the process sink is set
    for (LogLevel l : {LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Quiet})
      c.log(l, "x");
    std::vector<LogLevel> expected;
    for (LogLevel l : {LogLevel::Warn, LogLevel::Info, LogLevel::Debug})
      if (static_cast<int>(l) <= static_cast<int>(level))
        expected.push_back(l);
    EXPECT_EQ(got, expected) << "level " << static_cast<int>(level);
  }
}

TEST(Config, ProcessSinkRejectsABadLevelAndReplacementFromInside) {
  ProcessSinkReset reset;
  std::string message;
  EXPECT_EQ(consumeError(setProcessLogSink(nullptr, static_cast<LogLevel>(7)), &message),
            ErrorCode::InvalidArgument);
  EXPECT_TRUE(contains(message, "log level = 7"));
  EXPECT_TRUE(contains(message, "must be 0 (quiet)"));

  std::string inside;
  int calls = 0;
  Config c;
  ASSERT_FALSE(bool(setProcessLogSink(
      [&](LogLevel, const std::string&) {
        ++calls;
        consumeError(setProcessLogSink(nullptr, LogLevel::Warn), &inside);
        c.log(LogLevel::Warn, "logged from inside the sink"); // to stderr, not back here
      },
      LogLevel::Warn)));
  testing::internal::CaptureStderr();
  c.log(LogLevel::Warn, "outer");
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(contains(inside, "from inside a log sink"));
  EXPECT_EQ(err, "bqjit: warning: logged from inside the sink\n");
  // The refused replacement left the sink in place.
  c.log(LogLevel::Warn, "again");
  EXPECT_EQ(calls, 2);
}

// A host's sink that throws: the exception stops at bqjit's log call (which
// runs in background threads and cleanup paths, where it would end the
// process), and the line still reaches stderr, with what was thrown; the
// next line goes to the sink again.
TEST(Config, ASinkThatThrowsLosesNoLineAndThrowsNothing) {
  ProcessSinkReset reset;
  int calls = 0;
  auto throwing = [&](LogLevel, const std::string& text) {
    ++calls;
    if (text == "odd")
      throw 7;
    throw std::runtime_error("sink full");
  };
  Config own;
  own.logSink = throwing;
  own.logLevel = LogLevel::Info;
  testing::internal::CaptureStderr();
  EXPECT_NO_THROW(own.log(LogLevel::Info, "compiled"));
  EXPECT_NO_THROW(own.log(LogLevel::Warn, "odd"));
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "bqjit: info: compiled (the log sink threw: sink full)\n"
                 "bqjit: warning: odd (the log sink threw)\n");
  EXPECT_EQ(calls, 2);

  ASSERT_FALSE(bool(setProcessLogSink(throwing, LogLevel::Warn)));
  Config c;
  testing::internal::CaptureStderr();
  EXPECT_NO_THROW(c.log(LogLevel::Warn, "disk full"));
  EXPECT_NO_THROW(c.log(LogLevel::Info, "filtered"));
  err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "bqjit: warning: disk full (the log sink threw: sink full)\n");
  EXPECT_EQ(calls, 3);
}

TEST(Config, ReplacingTheProcessSinkWaitsForItToReturn) {
  ProcessSinkReset reset;
  std::atomic<bool> entered{false}, left{false};
  ASSERT_FALSE(bool(setProcessLogSink(
      [&](LogLevel, const std::string&) {
        entered = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        left = true;
      },
      LogLevel::Warn)));
  std::thread logger([] { Config().log(LogLevel::Warn, "slow"); });
  while (!entered)
    std::this_thread::yield();
  ASSERT_FALSE(bool(setProcessLogSink(nullptr, LogLevel::Warn)));
  EXPECT_TRUE(left) << "the sink was replaced while it was running";
  logger.join();
}

TEST(Config, ConcurrentLinesReachTheProcessSinkWhole) {
  ProcessSinkReset reset;
  std::mutex mutex;
  std::vector<std::string> lines;
  ASSERT_FALSE(bool(setProcessLogSink(
      [&](LogLevel, const std::string& text) {
        std::lock_guard<std::mutex> lock(mutex);
        lines.push_back(text);
      },
      LogLevel::Info)));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t] {
      Config c;
      for (int i = 0; i < 200; ++i)
        c.log(LogLevel::Info, "thread " + std::to_string(t) + " line " + std::to_string(i));
    });
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(lines.size(), 800u);
}

} // namespace
} // namespace bqjit
