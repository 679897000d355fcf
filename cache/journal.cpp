#include "cache/journal.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"
#include "core/fs_util.hpp"
#include "core/json_input.hpp"

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
  case CacheEvent::RemoteHit:
    return "remote_hit";
  case CacheEvent::RemoteMiss:
    return "remote_miss";
  case CacheEvent::RemotePublish:
    return "remote_publish";
  case CacheEvent::RemoteError:
    return "remote_error";
  }
  return "?";
}

int64_t unixTimeMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

// The "ev" of a compaction's summary line.
constexpr const char* kSummaryEvent = "summary";

std::string recordLine(CacheEvent event, const std::string& key, double compileMs) {
  nlohmann::json j = {
      {"ev", toString(event)}, {"key", key}, {"t", unixTimeMs()}, {"pid", ::getpid()}};
  if (event == CacheEvent::Compile)
    j["ms"] = compileMs;
  return jsonText(j) + "\n";
}

} // namespace

namespace {

// Opens the journal and takes `lockOp` (LOCK_SH, LOCK_EX, maybe | LOCK_NB) on
// it, opening again while a compaction replaced the file under us (never
// writing to a replaced file: its records would be lost). Returns the
// descriptor; -1 with errno set on failure (EAGAIN when it was replaced
// 100000 times in a row); -2 when LOCK_NB found it locked. On a file system
// without flock the file is used unlocked, as it was before compaction.
int openLocked(const std::string& path, int flags, int lockOp) {
  for (int attempt = 0;; ++attempt) {
    if (attempt == 100000) {
      errno = EAGAIN;
      return -1;
    }
    const int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
    if (fd < 0)
      return -1;
    int rc;
    do
      rc = ::flock(fd, lockOp);
    while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      if (errno != EWOULDBLOCK)
        return fd;
      ::close(fd);
      return -2;
    }
    struct stat opened, current;
    if (::fstat(fd, &opened) == 0 && ::stat(path.c_str(), &current) == 0 &&
        opened.st_ino == current.st_ino && opened.st_dev == current.st_dev)
      return fd;
    ::close(fd); // replaced (or removed) while we waited for the lock
  }
}

struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

} // namespace

llvm::Error Journal::append(CacheEvent event, const std::string& key, double compileMs) const {
  const std::string line = recordLine(event, key, compileMs);
  int fd = openLocked(path_, O_WRONLY | O_CREAT | O_APPEND, LOCK_SH);
  if (fd < 0)
    return makeError(ErrorCode::CacheError,
                     "cannot open journal '" + path_ + "': " + std::strerror(errno));
  if (group_ >= 0) // the file may be another member's: only our own files change
    llvm::consumeError(fs::shareWithGroup(fd, path_, group_));
  // One write per record: O_APPEND keeps concurrent lines whole.
  ssize_t n = ::write(fd, line.data(), line.size());
  int e = errno;
  struct stat st;
  const bool sized = ::fstat(fd, &st) == 0;
  ::close(fd);
  if (n != static_cast<ssize_t>(line.size()))
    return makeError(ErrorCode::CacheError, "cannot append to journal '" + path_ +
                                                "': " + (n < 0 ? std::strerror(e) : "short write"));
  if (autoCompactBytes_ > 0 && sized && static_cast<uint64_t>(st.st_size) > autoCompactBytes_) {
    // Twice what the last compaction kept, so that a large cache does not
    // compact on every append; opportunistic: skipped while another runs.
    uint64_t limit = autoCompactBytes_;
    std::ifstream in(path_);
    std::string first;
    if (std::getline(in, first)) {
      auto j = nlohmann::json::parse(first, nullptr, /*allow_exceptions=*/false);
      // Compared as JSON values: json::value() would throw on an "ev" of
      // another type, and anyone who may write the cache may write this line.
      if (j.is_object() && j.contains("ev") && j["ev"] == kSummaryEvent &&
          j.contains("kept_bytes") && j["kept_bytes"].is_number_unsigned())
        limit = std::max(limit, 2 * j["kept_bytes"].get<uint64_t>());
    }
    if (static_cast<uint64_t>(st.st_size) > limit) {
      auto done = compactLocked(liveKeys_, limit, /*wait=*/false);
      if (!done)
        llvm::consumeError(done.takeError()); // the next append tries again
    }
  }
  return llvm::Error::success();
}

namespace {

bool sameName(CacheEvent e, const std::string& name) {
  return name == toString(e);
}

std::optional<JournalRecord> parseRecord(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("ev") || !j["ev"].is_string() || !j.contains("key") ||
      !j["key"].is_string() || !j.contains("t") || !j["t"].is_number_integer())
    return std::nullopt;
  JournalRecord r;
  const std::string ev = j["ev"];
  bool known = false;
  for (CacheEvent e : {CacheEvent::Hit, CacheEvent::Miss, CacheEvent::Compile, CacheEvent::Evict,
                       CacheEvent::Corrupt, CacheEvent::RemoteHit, CacheEvent::RemoteMiss,
                       CacheEvent::RemotePublish, CacheEvent::RemoteError})
    if (sameName(e, ev)) {
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

std::optional<JournalRecord> parseRecord(const std::string& line) {
  return parseRecord(nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false));
}

// The summary line of a compaction: the counts of the records it folded.
// Its keys sort with "ev" first, like a record's.
// The first five are in every summary; the remote tier's came later and may
// be absent (0) in a journal written before it.
const char* const kSummaryCounts[] = {"n_hit",         "n_miss",           "n_compile",
                                      "n_evict",       "n_corrupt",        "n_remote_hit",
                                      "n_remote_miss", "n_remote_publish", "n_remote_error"};
constexpr int kSummaryRequired = 5;
constexpr int kSummaryAll = 9;

// Counts are never negative (parseSummary) and stop at INT64_MAX: a journal
// anyone may have written could otherwise overflow them.
void addCount(int64_t& total, int64_t n) {
  total = n > std::numeric_limits<int64_t>::max() - total ? std::numeric_limits<int64_t>::max()
                                                          : total + n;
}

// Count i of kSummaryCounts in `s` (const or not).
template <class Stats> auto* countOf(Stats& s, int i) {
  decltype(&s.hits) counts[] = {&s.hits,         &s.misses,          &s.compiles,
                                &s.evictions,    &s.corrupt,         &s.remoteHits,
                                &s.remoteMisses, &s.remotePublishes, &s.remoteErrors};
  return counts[i];
}

std::optional<CacheStats> parseSummary(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("ev") || j["ev"] != kSummaryEvent)
    return std::nullopt;
  CacheStats s;
  for (int i = 0; i < kSummaryAll; ++i) {
    if (!j.contains(kSummaryCounts[i]) && i >= kSummaryRequired)
      continue;
    if (!j.contains(kSummaryCounts[i]) || !j[kSummaryCounts[i]].is_number_integer() ||
        (j[kSummaryCounts[i]].is_number_unsigned()
             ? j[kSummaryCounts[i]].get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())
             : j[kSummaryCounts[i]].get<int64_t>() < 0))
      return std::nullopt;
    *countOf(s, i) = j[kSummaryCounts[i]].get<int64_t>();
  }
  if (!j.contains("ms") || !j["ms"].is_number() || !j.contains("ms_max") ||
      !j["ms_max"].is_number())
    return std::nullopt;
  s.compileMsTotal = j["ms"];
  s.compileMsMax = j["ms_max"];
  return s;
}

std::string summaryLine(const CacheStats& s, uint64_t keptBytes) {
  nlohmann::json j = {{"ev", kSummaryEvent},      {"key", ""},
                      {"t", unixTimeMs()},        {"ms", s.compileMsTotal},
                      {"ms_max", s.compileMsMax}, {"kept_bytes", keptBytes}};
  for (int i = 0; i < kSummaryAll; ++i)
    j[kSummaryCounts[i]] = *countOf(s, i);
  return jsonText(j) + "\n";
}

void add(CacheStats& s, const JournalRecord& r) {
  switch (r.event) {
  case CacheEvent::Hit:
    addCount(s.hits, 1);
    break;
  case CacheEvent::Miss:
    addCount(s.misses, 1);
    break;
  case CacheEvent::Compile:
    addCount(s.compiles, 1);
    s.compileMsTotal += r.compileMs;
    s.compileMsMax = std::max(s.compileMsMax, r.compileMs);
    break;
  case CacheEvent::Evict:
    addCount(s.evictions, 1);
    break;
  case CacheEvent::Corrupt:
    addCount(s.corrupt, 1);
    break;
  case CacheEvent::RemoteHit:
    addCount(s.remoteHits, 1);
    break;
  case CacheEvent::RemoteMiss:
    addCount(s.remoteMisses, 1);
    break;
  case CacheEvent::RemotePublish:
    addCount(s.remotePublishes, 1);
    break;
  case CacheEvent::RemoteError:
    addCount(s.remoteErrors, 1);
    break;
  }
}

void add(CacheStats& s, const CacheStats& o) {
  for (int i = 0; i < kSummaryAll; ++i)
    addCount(*countOf(s, i), *countOf(o, i));
  s.compileMsTotal += o.compileMsTotal;
  s.compileMsMax = std::max(s.compileMsMax, o.compileMsMax);
}

// A torn append (a full disk) leaves a fragment without its newline, and the
// next record lands on the same line: that record starts at the last "{"ev":"
// (records are dumped with sorted keys, "ev" first). Empty when there is none.
std::string recordAfterFragment(const std::string& line) {
  const auto at = line.rfind("{\"ev\":");
  return at == std::string::npos || at == 0 ? std::string() : line.substr(at);
}

// Every line of a journal: its records (and, with `lines`, the text of each),
// its summaries added up, and how many lines were malformed.
struct Scan {
  std::vector<JournalRecord> records;
  std::vector<std::string> lines;
  CacheStats summary;
  int64_t malformed = 0;
};

Scan scan(std::istream& in, bool keepLines) {
  Scan out;
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (auto s = parseSummary(j)) {
      add(out.summary, *s);
      continue;
    }
    auto r = parseRecord(j);
    if (!r) {
      ++out.malformed;
      line = recordAfterFragment(line);
      r = parseRecord(line);
    }
    if (!r)
      continue;
    out.records.push_back(std::move(*r));
    if (keepLines)
      out.lines.push_back(std::move(line));
  }
  return out;
}

Scan scanFile(const std::string& path) {
  std::ifstream in(path);
  return scan(in, false);
}

} // namespace

std::vector<JournalRecord> Journal::read(int64_t* malformed) const {
  Scan s = scanFile(path_);
  if (malformed)
    *malformed = s.malformed;
  return std::move(s.records);
}

CacheStats Journal::stats() const {
  Scan s = scanFile(path_);
  CacheStats out = s.summary;
  for (const auto& r : s.records)
    add(out, r);
  return out;
}

std::map<std::string, int64_t> Journal::lastUse() const {
  std::map<std::string, int64_t> out;
  for (const auto& r : read())
    if (r.event == CacheEvent::Hit || r.event == CacheEvent::Compile ||
        r.event == CacheEvent::RemoteHit)
      out[r.key] = std::max(out[r.key], r.timeMs);
  return out;
}

uint64_t Journal::bytes() const {
  struct stat st;
  return ::stat(path_.c_str(), &st) == 0 && S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size)
                                                                : 0;
}

llvm::Error Journal::compact(const std::vector<std::string>& liveKeys) const {
  auto done = compactLocked([&liveKeys] { return liveKeys; }, 0, /*wait=*/true);
  return done ? llvm::Error::success() : done.takeError();
}

llvm::Expected<bool> Journal::compactIfLarger(uint64_t maxBytes) const {
  return compactLocked(liveKeys_, maxBytes, /*wait=*/true);
}

llvm::Expected<bool> Journal::compactLocked(const LiveKeys& liveKeys, uint64_t ifLargerThan,
                                            bool wait) const {
  const int fd = openLocked(path_, O_RDONLY, LOCK_EX | (wait ? 0 : LOCK_NB));
  if (fd == -2)
    return false; // another process is compacting it
  if (fd < 0)
    return errno == ENOENT ? llvm::Expected<bool>(false)
                           : makeError(ErrorCode::CacheError, "cannot open journal '" + path_ +
                                                                  "': " + std::strerror(errno));
  FdCloser closer{fd};
  std::string text;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return makeError(ErrorCode::CacheError,
                       "cannot read journal '" + path_ + "': " + std::strerror(errno));
    if (n == 0)
      break;
    text.append(buf, static_cast<size_t>(n));
  }
  if (text.size() <= ifLargerThan)
    return false;

  std::istringstream in(text);
  Scan all = scan(in, /*keepLines=*/true);
  // Live keys are listed under the lock: an entry published from now on
  // appends its records after the new file is in place.
  std::set<std::string> live;
  if (liveKeys) {
    for (auto& key : liveKeys())
      live.insert(std::move(key));
  } else {
    std::map<std::string, CacheEvent> lastEvent;
    for (const auto& r : all.records)
      lastEvent[r.key] = r.event;
    for (const auto& [key, event] : lastEvent)
      if (event != CacheEvent::Evict && event != CacheEvent::Corrupt)
        live.insert(key);
  }
  // The latest record of each kind of each live key (by time, then order).
  std::map<std::pair<std::string, int>, size_t> latest;
  for (size_t i = 0; i < all.records.size(); ++i) {
    const JournalRecord& r = all.records[i];
    if (!live.count(r.key))
      continue;
    auto [it, inserted] = latest.emplace(std::make_pair(r.key, static_cast<int>(r.event)), i);
    if (!inserted && all.records[it->second].timeMs <= r.timeMs)
      it->second = i;
  }
  std::vector<bool> keep(all.records.size(), false);
  for (const auto& [what, i] : latest)
    keep[i] = true;
  CacheStats folded = all.summary;
  std::string kept;
  for (size_t i = 0; i < all.records.size(); ++i) {
    if (keep[i])
      kept += all.lines[i] + "\n";
    else
      add(folded, all.records[i]);
  }
  const std::string out = summaryLine(folded, kept.size()) + kept;
  if (auto err = fs::replaceFile(path_, out.data(), out.size(), group_))
    return std::move(err);
  return true;
}

} // namespace bqjit
