#include "bqjit/config.hpp"

#include <cstdlib>
#include <iostream>

#include "bqjit/error.hpp"

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

} // namespace

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
    if (v != "0" && v != "1")
      return envError("BQJIT_NO_COMPILE", v, "must be 0 or 1");
    c.noCompile = v == "1";
  }
  if (auto v = get("BQJIT_LOCK_TIMEOUT_MS"); !v.empty()) {
    auto n = parseUnsigned("BQJIT_LOCK_TIMEOUT_MS", v);
    if (!n)
      return n.takeError();
    if (*n > 24ull * 3600 * 1000)
      return envError("BQJIT_LOCK_TIMEOUT_MS", v, "must be at most one day");
    c.lockTimeoutMs = static_cast<int>(*n);
  }
  return c;
}

void Config::log(LogLevel level, const std::string& text) const {
  if (level == LogLevel::Quiet || static_cast<int>(level) > static_cast<int>(logLevel))
    return;
  if (logSink) {
    logSink(level, text);
    return;
  }
  static const char* const kNames[] = {"quiet", "warning", "info", "debug"};
  std::cerr << "bqjit: " << kNames[static_cast<int>(level)] << ": " << text << "\n";
}

} // namespace bqjit
