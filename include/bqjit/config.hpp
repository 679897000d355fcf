// Configuration: one struct, read from the environment once and passed in.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <llvm/Support/Error.h>

namespace bqjit {

/// The directory below Config::cacheDir that holds this layout of the cache
/// (entries, locks, temporaries, tuning records, the journal).
inline constexpr const char* kCacheLayoutDir = "v1";

enum class LogLevel : int { Quiet = 0, Warn = 1, Info = 2, Debug = 3 };

/// Where log lines go; the default writes "bqjit: <level>: <text>" to stderr.
using LogSink = std::function<void(LogLevel, const std::string&)>;

struct Config {
  /// Root of the disk cache; empty disables the disk layer (memory only).
  std::string cacheDir;
  /// Size limit of the disk cache in bytes; 0 means unlimited. Least recently
  /// used entries are evicted past it.
  uint64_t maxCacheBytes = 0;
  LogLevel logLevel = LogLevel::Warn;
  /// Strict mode for prewarmed servers: a cache miss is an error, never a compile.
  bool noCompile = false;
  /// How long to wait for another process compiling the same key before
  /// compiling privately.
  int lockTimeoutMs = 120000;
  LogSink logSink;

  /// Reads BQJIT_CACHE_DIR (else $XDG_CACHE_HOME/bqjit, else ~/.cache/bqjit),
  /// BQJIT_CACHE_MAX_BYTES, BQJIT_LOG_LEVEL (quiet|warn|info|debug),
  /// BQJIT_NO_COMPILE (0|1) and BQJIT_LOCK_TIMEOUT_MS. A malformed value is an
  /// error naming the variable, the value and the rule. `getenv` is injectable
  /// for tests.
  static llvm::Expected<Config>
  fromEnvironment(const std::function<const char*(const char*)>& getenv = nullptr);

  /// Emits a log line when `level` is enabled.
  void log(LogLevel level, const std::string& text) const;
};

} // namespace bqjit
