#include "bqjit/config.hpp"

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include <grp.h>

#include "bqjit/error.hpp"
#include "core/redis_url.hpp"

namespace bqjit {

namespace {

llvm::Error envError(const char* name, const std::string& value, const std::string& rule) {
  return makeError(ErrorCode::InvalidArgument,
                   std::string("environment variable ") + name + "='" + value + "': " + rule);
}

llvm::Expected<uint64_t> parseUnsigned(const char* name, const std::string& value) {
  if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos)
    return envError(name, value, "must be a non-negative integer");
  try {
    return static_cast<uint64_t>(std::stoull(value));
  } catch (...) {
    return envError(name, value, "is out of range");
  }
}

// A switch: "0" or "1".
llvm::Expected<bool> parseFlag(const char* name, const std::string& value) {
  if (value != "0" && value != "1")
    return envError(name, value, "must be 0 or 1");
  return value == "1";
}

// The process-wide sink. Callers hold the lock shared while a sink runs, so
// that setProcessLogSink (exclusive) returns only once the old sink is idle.
struct ProcessSink {
  std::shared_mutex mutex;
  LogSink sink;
  LogLevel level = LogLevel::Quiet;
  std::atomic<bool> installed{false}; ///< lets log() skip the lock when there is no sink
};

ProcessSink& processSink() {
  static ProcessSink* sink = new ProcessSink; // never destroyed: usable at exit
  return *sink;
}

// Set while this thread runs the process sink: a line logged from inside it
// goes to stderr, and replacing the sink from inside it is refused.
thread_local bool insideProcessSink = false;

bool validLevel(LogLevel level) {
  const int n = static_cast<int>(level);
  return n >= static_cast<int>(LogLevel::Quiet) && n <= static_cast<int>(LogLevel::Debug);
}

const char* const kLevelNames[] = {"quiet", "warning", "info", "debug"};

// One line to stderr, in one insertion, so that lines of concurrent threads
// stay whole.
void toStderr(LogLevel level, const std::string& text) {
  std::cerr << (std::string("bqjit: ") + kLevelNames[static_cast<int>(level)] + ": " + text + "\n");
}

// Runs a sink on one line. A sink that throws (a host's callback) must not
// unwind through bqjit, which logs from background threads and cleanup
// paths, nor lose the line: the line goes to stderr with what was thrown.
void runSink(const LogSink& sink, LogLevel level, const std::string& text) {
  try {
    sink(level, text);
  } catch (const std::exception& e) {
    toStderr(level, text + " (the log sink threw: " + e.what() + ")");
  } catch (...) {
    toStderr(level, text + " (the log sink threw)");
  }
}

// Hands a line to the process sink; false when there is none.
bool toProcessSink(LogLevel level, const std::string& text) {
  ProcessSink& p = processSink();
  if (!p.installed.load(std::memory_order_acquire) || insideProcessSink)
    return false;
  std::shared_lock<std::shared_mutex> lock(p.mutex);
  if (!p.sink)
    return false;
  if (static_cast<int>(level) > static_cast<int>(p.level))
    return true; // filtered by the sink's level
  struct Inside {
    Inside() { insideProcessSink = true; }
    ~Inside() { insideProcessSink = false; }
  } inside;
  runSink(p.sink, level, text);
  return true;
}

} // namespace

llvm::Error setProcessLogSink(LogSink sink, LogLevel level) {
  if (!validLevel(level))
    return makeError(ErrorCode::InvalidArgument,
                     "log level = " + std::to_string(static_cast<int>(level)) +
                         ": must be 0 (quiet), 1 (warn), 2 (info) or 3 (debug)");
  if (insideProcessSink)
    return makeError(ErrorCode::InvalidArgument,
                     "the log sink cannot be replaced from inside a log sink (it would wait for "
                     "itself to return)");
  ProcessSink& p = processSink();
  std::unique_lock<std::shared_mutex> lock(p.mutex);
  p.sink = std::move(sink);
  p.level = level;
  p.installed.store(static_cast<bool>(p.sink), std::memory_order_release);
  return llvm::Error::success();
}

llvm::Expected<Config>
Config::fromEnvironment(const std::function<const char*(const char*)>& getenvFn) {
  auto get = [&](const char* name) -> std::string {
    const char* v = getenvFn ? getenvFn(name) : std::getenv(name);
    return v ? std::string(v) : std::string();
  };
  Config c;
  if (auto dir = get("BQJIT_CACHE_DIR"); !dir.empty())
    c.cacheDir = dir;
  else if (auto xdg = get("XDG_CACHE_HOME"); !xdg.empty())
    c.cacheDir = xdg + "/bqjit";
  else if (auto home = get("HOME"); !home.empty())
    c.cacheDir = home + "/.cache/bqjit";

  if (auto v = get("BQJIT_CACHE_MAX_BYTES"); !v.empty()) {
    auto n = parseUnsigned("BQJIT_CACHE_MAX_BYTES", v);
    if (!n)
      return n.takeError();
    c.maxCacheBytes = *n;
  }
  if (auto v = get("BQJIT_LOG_LEVEL"); !v.empty()) {
    if (v == "quiet")
      c.logLevel = LogLevel::Quiet;
    else if (v == "warn")
      c.logLevel = LogLevel::Warn;
    else if (v == "info")
      c.logLevel = LogLevel::Info;
    else if (v == "debug")
      c.logLevel = LogLevel::Debug;
    else
      return envError("BQJIT_LOG_LEVEL", v, "must be one of quiet, warn, info, debug");
  }
  if (auto v = get("BQJIT_NO_COMPILE"); !v.empty()) {
    auto on = parseFlag("BQJIT_NO_COMPILE", v);
    if (!on)
      return on.takeError();
    c.noCompile = *on;
  }
  if (auto v = get("BQJIT_LOCK_TIMEOUT_MS"); !v.empty()) {
    auto n = parseUnsigned("BQJIT_LOCK_TIMEOUT_MS", v);
    if (!n)
      return n.takeError();
    if (*n > 24ull * 3600 * 1000)
      return envError("BQJIT_LOCK_TIMEOUT_MS", v, "must be at most one day");
    c.lockTimeoutMs = static_cast<int>(*n);
  }
  if (auto v = get("BQJIT_CACHE_GROUP"); !v.empty()) {
    if (v.find_first_not_of("0123456789") == std::string::npos) {
      auto n = parseUnsigned("BQJIT_CACHE_GROUP", v);
      if (!n)
        return n.takeError();
      if (*n >= 0x7fffffff)
        return envError("BQJIT_CACHE_GROUP", v, "is not a group id");
      c.cacheGroup = static_cast<int>(*n);
    } else {
      struct group g;
      struct group* found = nullptr;
      std::vector<char> buffer(16384);
      if (::getgrnam_r(v.c_str(), &g, buffer.data(), buffer.size(), &found) != 0 || !found)
        return envError("BQJIT_CACHE_GROUP", v,
                        "names no group of this system (give a group name or number)");
      c.cacheGroup = static_cast<int>(found->gr_gid);
    }
  }
  if (auto v = get("BQJIT_REMOTE_CACHE"); !v.empty()) {
    auto url = parseRedisUrl(v);
    if (!url) {
      const std::string why = consumeToString(url.takeError());
      // The value may hold a password: shown only up to the '@'.
      const auto at = v.rfind('@');
      return envError("BQJIT_REMOTE_CACHE",
                      at == std::string::npos ? v : "redis://***" + v.substr(at), why);
    }
    c.remoteCache = v;
  }
  if (auto v = get("BQJIT_REMOTE_TIMEOUT_MS"); !v.empty()) {
    auto n = parseUnsigned("BQJIT_REMOTE_TIMEOUT_MS", v);
    if (!n)
      return n.takeError();
    if (*n < 1 || *n > 60000)
      return envError("BQJIT_REMOTE_TIMEOUT_MS", v, "must be from 1 to 60000");
    c.remoteTimeoutMs = static_cast<int>(*n);
  }
  if (auto v = get("BQJIT_REMOTE_TTL_S"); !v.empty()) {
    auto n = parseUnsigned("BQJIT_REMOTE_TTL_S", v);
    if (!n)
      return n.takeError();
    if (*n > 10ull * 365 * 24 * 3600)
      return envError("BQJIT_REMOTE_TTL_S", v, "must be at most ten years");
    c.remoteTtlSeconds = static_cast<int64_t>(*n);
  }
  c.secretFile = get("BQJIT_CACHE_SECRET_FILE");
  if (auto v = get("BQJIT_INSECURE_UNSIGNED"); !v.empty()) {
    auto on = parseFlag("BQJIT_INSECURE_UNSIGNED", v);
    if (!on)
      return on.takeError();
    c.insecureUnsigned = *on;
  }
  if (auto v = get("BQJIT_PDL"); !v.empty()) {
    auto on = parseFlag("BQJIT_PDL", v);
    if (!on)
      return on.takeError();
    c.programmaticLaunch = *on;
  }
  if (auto v = get("BQJIT_AUTOTUNE"); !v.empty()) {
    auto on = parseFlag("BQJIT_AUTOTUNE", v);
    if (!on)
      return on.takeError();
    c.autotune = *on;
  }
  c.cudaDriver = get("BQJIT_CUDA_DRIVER");
  return c;
}

bool Config::logs(LogLevel level) const {
  if (level == LogLevel::Quiet || !validLevel(level))
    return false;
  if (!logSink && !insideProcessSink) {
    ProcessSink& p = processSink();
    if (p.installed.load(std::memory_order_acquire)) {
      std::shared_lock<std::shared_mutex> lock(p.mutex);
      if (p.sink)
        return static_cast<int>(level) <= static_cast<int>(p.level);
    }
  }
  return static_cast<int>(level) <= static_cast<int>(logLevel);
}

void Config::log(LogLevel level, const std::string& text) const {
  if (level == LogLevel::Quiet || !validLevel(level))
    return;
  if (logSink) {
    if (static_cast<int>(level) <= static_cast<int>(logLevel))
      runSink(logSink, level, text);
    return;
  }
  if (toProcessSink(level, text))
    return;
  if (static_cast<int>(level) > static_cast<int>(logLevel))
    return;
  toStderr(level, text);
}

} // namespace bqjit
