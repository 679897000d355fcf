// The cache's info and debug log lines, in one place so that their format
// stays stable. Each is one line, "<event> key=<key> ... spec=<label>" (the
// label, which has spaces, comes last); Config::log adds "bqjit: info: " or
// "bqjit: debug: " on stderr. Nothing is formatted when the level is off.
//
//   info   compiled key=<key> arch=<arch> ms=<ms, 1 decimal> spec=<label>
//   debug  nvrtc options key=<key>: <option> <option> ...
//   info   loaded from disk key=<key> arch=<arch> spec=<label>
//   debug  cache entry read key=<key> path=<entry directory>
//   debug  cache entry stored key=<key> path=<entry directory>
//   info   evicted key=<key> bytes=<n> reason=over-limit spec=<label>
//   info   evicted key=<key> bytes=<n> reason=bad problem=<why it fails verification>
//   debug  cache root=<root> journal=<journal path>
//   debug  journal compacted path=<path> bytes=<before>-><after>
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "bqjit/compiled_kernel.hpp"
#include "bqjit/config.hpp"

namespace bqjit {

/// `text` with each line break made a space: a log message is one line.
inline std::string oneLine(std::string text) {
  for (char& c : text)
    if (c == '\n' || c == '\r')
      c = ' ';
  return text;
}

/// After a successful NVRTC compile (KernelCache, whatever the disk did with it).
inline void logCompiled(const Config& config, const CompiledKernel& kernel) {
  if (config.logs(LogLevel::Info)) {
    char ms[32];
    std::snprintf(ms, sizeof ms, "%.1f", kernel.compileMs);
    config.log(LogLevel::Info, "compiled key=" + kernel.key + " arch=" + kernel.spec.arch +
                                   " ms=" + ms + " spec=" + kernel.spec.label());
  }
  if (config.logs(LogLevel::Debug)) {
    std::string options;
    for (const std::string& o : kernel.options)
      options += " " + o;
    config.log(LogLevel::Debug, "nvrtc options key=" + kernel.key + ":" + options);
  }
}

/// After an entry was read from `dir` and verified (DiskCache::load).
inline void logLoadedFromDisk(const Config& config, const CompiledKernel& kernel,
                              const std::string& dir) {
  if (config.logs(LogLevel::Info))
    config.log(LogLevel::Info, "loaded from disk key=" + kernel.key + " arch=" + kernel.spec.arch +
                                   " spec=" + kernel.spec.label());
  if (config.logs(LogLevel::Debug))
    config.log(LogLevel::Debug, "cache entry read key=" + kernel.key + " path=" + dir);
}

/// After an entry was published (renamed into place).
inline void logEntryStored(const Config& config, const std::string& key, const std::string& dir) {
  if (config.logs(LogLevel::Debug))
    config.log(LogLevel::Debug, "cache entry stored key=" + key + " path=" + dir);
}

/// When a cache's directories are ready (DiskCache::prepare).
inline void logCacheRoot(const Config& config, const std::string& root,
                         const std::string& journal) {
  if (config.logs(LogLevel::Debug))
    config.log(LogLevel::Debug, "cache root=" + root + " journal=" + journal);
}

/// After the journal was rewritten smaller.
inline void logJournalCompacted(const Config& config, const std::string& path, uint64_t before,
                                uint64_t after) {
  if (config.logs(LogLevel::Debug))
    config.log(LogLevel::Debug, "journal compacted path=" + path + " bytes=" +
                                    std::to_string(before) + "->" + std::to_string(after));
}

/// After garbage collection removed an entry: a bad one (`problem` says why)
/// or, with an empty `problem`, a least recently used one past the size limit.
inline void logEvicted(const Config& config, const std::string& key, uint64_t bytes,
                       const std::string& label, const std::string& problem) {
  if (config.logs(LogLevel::Info))
    config.log(LogLevel::Info, "evicted key=" + key + " bytes=" + std::to_string(bytes) +
                                   (problem.empty() ? " reason=over-limit spec=" + label
                                                    : " reason=bad problem=" + oneLine(problem)));
}

} // namespace bqjit
