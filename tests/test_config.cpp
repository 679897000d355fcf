// Config::fromEnvironment with an injected getenv, and Config::log.
#include "bqjit/config.hpp"

#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
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

} // namespace
} // namespace bqjit
