#include "cache/journal.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"
#include "core/fs_util.hpp"

namespace bqjit {

const char* toString(CacheEvent event) {
  switch (event) {
  case CacheEvent::Hit:
    return "hit";
  case CacheEvent::Miss:
    return "miss";
  case CacheEvent::Compile:
    return "compile";
  case CacheEvent::Evict:
    return "evict";
  case CacheEvent::Corrupt:
    return "corrupt";
  }
  return "?";
}

int64_t unixTimeMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

std::string recordLine(CacheEvent event, const std::string& key, double compileMs) {
  nlohmann::json j = {
      {"ev", toString(event)}, {"key", key}, {"t", unixTimeMs()}, {"pid", ::getpid()}};
  if (event == CacheEvent::Compile)
    j["ms"] = compileMs;
  return j.dump() + "\n";
}

} // namespace

llvm::Error Journal::append(CacheEvent event, const std::string& key, double compileMs) const {
  const std::string line = recordLine(event, key, compileMs);
  int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0)
    return makeError(ErrorCode::CacheError,
                     "cannot open journal '" + path_ + "': " + std::strerror(errno));
  // One write per record: O_APPEND keeps concurrent lines whole.
  ssize_t n = ::write(fd, line.data(), line.size());
  int e = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(line.size()))
    return makeError(ErrorCode::CacheError, "cannot append to journal '" + path_ +
                                                "': " + (n < 0 ? std::strerror(e) : "short write"));
  return llvm::Error::success();
}

namespace {

std::optional<JournalRecord> parseRecord(const std::string& line) {
  auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("ev") || !j["ev"].is_string() || !j.contains("key") ||
      !j["key"].is_string() || !j.contains("t") || !j["t"].is_number_integer())
    return std::nullopt;
  JournalRecord r;
  const std::string ev = j["ev"];
  bool known = false;
  for (CacheEvent e : {CacheEvent::Hit, CacheEvent::Miss, CacheEvent::Compile, CacheEvent::Evict,
                       CacheEvent::Corrupt})
    if (ev == toString(e)) {
      r.event = e;
      known = true;
    }
  if (!known)
    return std::nullopt;
  r.key = j["key"];
  r.timeMs = j["t"];
  if (j.contains("ms") && j["ms"].is_number())
    r.compileMs = j["ms"];
  if (j.contains("pid") && j["pid"].is_number_integer())
    r.pid = j["pid"];
  return r;
}

// A torn append (a full disk) leaves a fragment without its newline, and the
// next record lands on the same line: that record starts at the last "{"ev":"
// (records are dumped with sorted keys, "ev" first). Empty when there is none.
std::string recordAfterFragment(const std::string& line) {
  const auto at = line.rfind("{\"ev\":");
  return at == std::string::npos || at == 0 ? std::string() : line.substr(at);
}

} // namespace

std::vector<JournalRecord> Journal::read(int64_t* malformed) const {
  std::vector<JournalRecord> out;
  int64_t bad = 0;
  std::ifstream in(path_);
  std::string line;
  while (std::getline(in, line)) {
    auto r = parseRecord(line);
    if (!r) {
      ++bad;
      r = parseRecord(recordAfterFragment(line));
    }
    if (r)
      out.push_back(std::move(*r));
  }
  if (malformed)
    *malformed = bad;
  return out;
}

CacheStats Journal::stats() const {
  CacheStats s;
  for (const auto& r : read()) {
    switch (r.event) {
    case CacheEvent::Hit:
      ++s.hits;
      break;
    case CacheEvent::Miss:
      ++s.misses;
      break;
    case CacheEvent::Compile:
      ++s.compiles;
      s.compileMsTotal += r.compileMs;
      s.compileMsMax = std::max(s.compileMsMax, r.compileMs);
      break;
    case CacheEvent::Evict:
      ++s.evictions;
      break;
    case CacheEvent::Corrupt:
      ++s.corrupt;
      break;
    }
  }
  return s;
}

std::map<std::string, int64_t> Journal::lastUse() const {
  std::map<std::string, int64_t> out;
  for (const auto& r : read())
    if (r.event == CacheEvent::Hit || r.event == CacheEvent::Compile)
      out[r.key] = std::max(out[r.key], r.timeMs);
  return out;
}

llvm::Error Journal::compact(const std::vector<std::string>& liveKeys) const {
  std::set<std::string> live(liveKeys.begin(), liveKeys.end());
  std::string text;
  std::ifstream in(path_);
  std::string line;
  while (std::getline(in, line)) {
    if (!parseRecord(line))
      line = recordAfterFragment(line);
    auto r = parseRecord(line);
    if (r && live.count(r->key))
      text += line + "\n";
  }
  return fs::replaceFile(path_, text.data(), text.size());
}

} // namespace bqjit
