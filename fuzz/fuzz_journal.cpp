// Fuzzes what bqjit reads back from a cache's journal (journal.log), which
// any process or person who may write the cache may have written: the bytes
// become the journal file, then
//   - read(), stats() and lastUse() take it as it is (torn, foreign or
//     tampered lines are skipped and counted, never thrown from);
//   - an append with a small compaction budget reads the first line for the
//     budget and compacts (the path a host's compile takes);
//   - compact() of the keys lastUse() knows keeps stats() as they were and
//     lastUse() of those keys, as journal.hpp promises.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

#include "cache/journal.hpp"
#include "fuzz/common.hpp"

namespace {

// One journal file for the whole run, in a directory of its own.
const std::string& journalPath() {
  static const std::string path = [] {
    char dir[] = "/tmp/bqjit_fuzz_journal.XXXXXX";
    if (!::mkdtemp(dir))
      std::abort();
    return std::string(dir) + "/journal.log";
  }();
  return path;
}

bool sameStats(const bqjit::CacheStats& a, const bqjit::CacheStats& b) {
  return a.hits == b.hits && a.misses == b.misses && a.compiles == b.compiles &&
         a.evictions == b.evictions && a.corrupt == b.corrupt && a.remoteHits == b.remoteHits &&
         a.remoteMisses == b.remoteMisses && a.remotePublishes == b.remotePublishes &&
         a.remoteErrors == b.remoteErrors;
}

void writeJournal(const uint8_t* data, size_t size) {
  std::ofstream out(journalPath(), std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  writeJournal(data, size);
  {
    const bqjit::Journal journal(journalPath());
    int64_t malformed = -1;
    const std::vector<bqjit::JournalRecord> records = journal.read(&malformed);
    BQJIT_FUZZ_CHECK(malformed >= 0, "malformed lines not counted");
    const bqjit::CacheStats before = journal.stats();
    const std::map<std::string, int64_t> last = journal.lastUse();
    std::vector<std::string> keys;
    for (const auto& [key, t] : last)
      keys.push_back(key);
    if (auto err = journal.compact(keys)) {
      bqjit::fuzz::expectMessage(std::move(err));
    } else {
      BQJIT_FUZZ_CHECK(sameStats(journal.stats(), before), "compaction changed the counts");
      const std::map<std::string, int64_t> after = journal.lastUse();
      for (const auto& [key, t] : last) {
        auto it = after.find(key);
        BQJIT_FUZZ_CHECK(it != after.end() && it->second == t,
                         "compaction changed the last use of " + key.substr(0, 64));
      }
    }
  }
  // A host's append into the same bytes, with a budget the input passes.
  writeJournal(data, size);
  const bqjit::Journal small(journalPath(), nullptr, /*autoCompactBytes=*/64);
  if (auto err = small.append(bqjit::CacheEvent::Hit, "0123456789abcdef0123456789abcdef"))
    bqjit::fuzz::expectMessage(std::move(err));
  return 0;
}
