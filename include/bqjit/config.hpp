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

/// Where log lines go; the default writes "bqjit: <level>: <text>" to stderr
/// (<level>: "warning", "info" or "debug"), one line per message.
using LogSink = std::function<void(LogLevel, const std::string&)>;

/// The process-wide log destination (the C API's bqjit_set_log_callback): it
/// receives the lines of every Config that has no `logSink` of its own,
/// filtered by `level` instead of the Config's `logLevel` (BQJIT_LOG_LEVEL);
/// an empty `sink` sends them back to stderr. Thread-safe: the sink may be
/// called from any thread, concurrently; once this returns, the previous sink
/// is not running and will not be called again. Calling it from inside a sink
/// is an error (InvalidArgument), as would be a deadlock; a sink's own
/// bqjit log lines go to stderr.
llvm::Error setProcessLogSink(LogSink sink, LogLevel level);

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
  /// A group trusted to write the cache (BQJIT_CACHE_GROUP, a name or a
  /// number), for a cache deliberately shared by several service accounts:
  /// the cache may then be group-writable for this group (and owned by its
  /// members), and bqjit creates its files and directories group-writable
  /// for it. -1: none, the cache must be writable by its owner alone (the
  /// current user or root).
  int cacheGroup = -1;
  /// The fleet tier (BQJIT_REMOTE_CACHE): redis://[:password@]host:port/db,
  /// asked after the disk and before a compile; empty: none.
  std::string remoteCache;
  /// Timeout of the connect and of each request to the remote tier
  /// (BQJIT_REMOTE_TIMEOUT_MS).
  int remoteTimeoutMs = 300;
  /// Expiry of remote entries in seconds (BQJIT_REMOTE_TTL_S); 0: none.
  int64_t remoteTtlSeconds = 30 * 24 * 3600;
  /// The fleet secret that signs and verifies remote entries and bundles
  /// (BQJIT_CACHE_SECRET_FILE; read when used, its mode checked).
  std::string secretFile;
  /// BQJIT_INSECURE_UNSIGNED=1: without a secret, write remote entries and
  /// bundles unsigned and read them unverified (said at every start).
  bool insecureUnsigned = false;
  /// BQJIT_PDL: whether a launch on sm_90 or newer is a programmatic
  /// dependent launch when the launch itself does not say
  /// (LaunchArgs::programmaticDependentLaunch, BQJIT_LAUNCH_PDL and
  /// BQJIT_LAUNCH_NO_PDL). On by default: the kernel waits for the previous
  /// kernel's writes before touching memory, so only its start moves earlier.
  bool programmaticLaunch = true;
  /// BQJIT_AUTOTUNE: the first launch of each regime whose launch shape the
  /// heuristic chose (no shape in the spec, no tuning record for the device)
  /// asks for that regime to be tuned on a background thread: the candidate
  /// shapes are compiled, checked against the heuristic's results and timed
  /// on a stream of the tuner's own; the fastest (by more than 2%) takes the
  /// regime's slot in every copy of the handle and is stored as a tuning
  /// record of the device's model. Launches never wait for it, and a launch
  /// being captured in a CUDA graph asks for nothing. Off by default: the
  /// tuning competes with the host's own work on the GPU for a few seconds.
  bool autotune = false;
  /// The CUDA driver library to open (BQJIT_CUDA_DRIVER): a path, e.g. a
  /// forward-compatibility package's libcuda.so.1; empty: the system's
  /// libcuda.so.1.
  std::string cudaDriver;
  LogSink logSink;

  /// Reads BQJIT_CACHE_DIR (else $XDG_CACHE_HOME/bqjit, else ~/.cache/bqjit),
  /// BQJIT_CACHE_MAX_BYTES, BQJIT_LOG_LEVEL (quiet|warn|info|debug),
  /// BQJIT_NO_COMPILE (0|1), BQJIT_LOCK_TIMEOUT_MS, BQJIT_CACHE_GROUP (a
  /// group name or number that exists), BQJIT_REMOTE_CACHE (a redis:// URL),
  /// BQJIT_REMOTE_TIMEOUT_MS, BQJIT_REMOTE_TTL_S, BQJIT_CACHE_SECRET_FILE,
  /// BQJIT_INSECURE_UNSIGNED (0|1), BQJIT_PDL (0|1), BQJIT_AUTOTUNE (0|1) and
  /// BQJIT_CUDA_DRIVER.
  /// A malformed value is an error naming the variable, the value and the
  /// rule. `getenv` is injectable for tests.
  static llvm::Expected<Config>
  fromEnvironment(const std::function<const char*(const char*)>& getenv = nullptr);

  /// Emits a log line when `level` is enabled: to `logSink` if set (filtered
  /// by `logLevel`), else to the process log sink if one is set (filtered by
  /// its own level), else to stderr (filtered by `logLevel`).
  void log(LogLevel level, const std::string& text) const;
  /// Whether `log(level, ...)` would emit anything: lets a caller skip
  /// formatting a line nobody will see.
  bool logs(LogLevel level) const;
};

} // namespace bqjit
