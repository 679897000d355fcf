// What every bqjit subcommand shares: the context it runs in, the exit
// statuses errors map to, and small text helpers.
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>

#include <llvm/Support/Error.h>

#include "bqjit/config.hpp"
#include "bqjit/error.hpp"

namespace CLI {
class App;
class Validator;
} // namespace CLI

namespace bqjit::cli {

/// Exit statuses of the bqjit command (also printed in every --help footer).
enum ExitStatus : int {
  kExitOk = 0,
  kExitOther = 1,      ///< internal errors and anything unclassified
  kExitUsage = 2,      ///< bad command line, invalid spec, invalid argument, bad manifest
  kExitCompile = 3,    ///< NVRTC rejected the kernel
  kExitCache = 4,      ///< the disk cache is unreadable, unwritable or corrupt
  kExitDriver = 5,     ///< no CUDA driver or device, a driver call failed, arch mismatch
  kExitNotInCache = 6, ///< BQJIT_NO_COMPILE is set and the kernel is not cached
};

/// The --help footer that documents the exit statuses.
extern const char* const kExitStatusHelp;

/// The exit status of an error code.
int exitStatusFor(ErrorCode code);

/// Where a subcommand runs: the configuration main() built once, and the
/// streams for results (out) and for progress and diagnostics (err).
struct CommandContext {
  const Config& config;
  std::ostream& out;
  std::ostream& err;
};

/// What main() runs once the command line is parsed.
using Action = std::function<llvm::Error(const CommandContext&)>;

/// Prints "bqjit: error: <first line>" (further lines of the message, such
/// as an NVRTC log, follow indented) and returns the exit status.
int reportError(llvm::Error err, std::ostream& os);

/// The first line of a possibly multi-line text.
std::string firstLine(const std::string& text);

/// "1.5 KiB", "12.0 MiB"; plain bytes below 1 KiB.
std::string humanBytes(uint64_t bytes);

/// Local time "2025-03-01 14:02:33" of unix milliseconds; "never" for 0.
std::string localTime(int64_t unixMs);

/// An error for the cache subcommands when Config::cacheDir is empty.
llvm::Error requireCacheDir(const Config& config);

/// Adds the exit-status footer (and `extra` text above it) to a subcommand.
void setFooter(CLI::App& app, const std::string& extra = "");

/// Option checks whose messages name the value and the rule in plain words
/// (CLI11's own print the range of a double, 300 digits): a whole number
/// in min..max (">= min" when max is the largest int64), and a finite number > 0.
CLI::Validator wholeNumber(int64_t min, int64_t max = INT64_MAX);
CLI::Validator positiveNumber();

} // namespace bqjit::cli
