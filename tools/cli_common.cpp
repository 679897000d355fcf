#include "tools/cli_common.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <sstream>

#include <CLI/CLI.hpp>

#include "core/json_input.hpp"

namespace bqjit::cli {

const char* const kExitStatusHelp =
    "Exit status: 0 success; 1 other failure; 2 usage error, invalid spec, argument or "
    "manifest; 3 compile failed; 4 cache error; 5 CUDA driver missing or failed, no device, "
    "or architecture mismatch; 6 kernel not in cache (BQJIT_NO_COMPILE=1).";

int exitStatusFor(ErrorCode code) {
  switch (code) {
  case ErrorCode::InvalidSpec:
  case ErrorCode::InvalidArgument:
    return kExitUsage;
  case ErrorCode::CompileFailed:
    return kExitCompile;
  case ErrorCode::CacheError:
    return kExitCache;
  case ErrorCode::DriverError:
  case ErrorCode::NoDriver:
  case ErrorCode::ArchMismatch:
    return kExitDriver;
  case ErrorCode::NotInCache:
    return kExitNotInCache;
  case ErrorCode::Internal:
    return kExitOther;
  }
  return kExitOther;
}

int reportError(llvm::Error err, std::ostream& os) {
  std::string message;
  const ErrorCode code = consumeError(std::move(err), &message);
  std::istringstream lines(message);
  std::string line;
  bool first = true;
  while (std::getline(lines, line)) {
    os << (first ? "bqjit: error: " : "  ") << line << "\n";
    first = false;
  }
  if (first)
    os << "bqjit: error: " << errorCodeName(code) << "\n";
  return exitStatusFor(code);
}

std::string firstLine(const std::string& text) {
  return text.substr(0, text.find('\n'));
}

std::string humanBytes(uint64_t bytes) {
  if (bytes < 1024)
    return std::to_string(bytes) + " B";
  static const char* const kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes) / 1024.0;
  int unit = 0;
  while (value >= 1024.0 && unit < 3) {
    value /= 1024.0;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", value, kUnits[unit]);
  return buf;
}

std::string localTime(int64_t unixMs) {
  if (unixMs <= 0)
    return "never";
  const std::time_t seconds = static_cast<std::time_t>(unixMs / 1000);
  std::tm tm{};
  localtime_r(&seconds, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

llvm::Error requireCacheDir(const Config& config) {
  if (!config.cacheDir.empty())
    return llvm::Error::success();
  return makeError(ErrorCode::CacheError,
                   "no cache directory: set BQJIT_CACHE_DIR (or HOME) or pass --cache-dir");
}

void setFooter(CLI::App& app, const std::string& extra) {
  app.footer(extra.empty() ? std::string(kExitStatusHelp) : extra + "\n\n" + kExitStatusHelp);
}

CLI::Validator wholeNumber(int64_t min, int64_t max) {
  const std::string rule =
      "must be a whole number " +
      (max == INT64_MAX ? ">= " + std::to_string(min)
                        : "from " + std::to_string(min) + " to " + std::to_string(max));
  return CLI::Validator(
      [min, max, rule](std::string& value) -> std::string {
        errno = 0;
        char* end = nullptr;
        const long long n = std::strtoll(value.c_str(), &end, 10);
        if (value.empty() || *end != '\0' || errno == ERANGE || n < min || n > max)
          return rule + ", got '" + shownText(value) + "'";
        return "";
      },
      min >= 0 ? "NONNEGATIVE" : "INT");
}

CLI::Validator positiveNumber() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        errno = 0;
        char* end = nullptr;
        const double x = std::strtod(value.c_str(), &end);
        if (value.empty() || *end != '\0' || !std::isfinite(x) || !(x > 0))
          return "must be a number > 0, got '" + shownText(value) + "'";
        return "";
      },
      "POSITIVE");
}

} // namespace bqjit::cli
