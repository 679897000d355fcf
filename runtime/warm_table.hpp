// WarmTable: the answers a Service has given, by (spec as asked, device),
// so that a repeated request is a hash-map lookup: no planning, no key, no
// string, no file. Sharded, each shard behind a reader-writer lock, so that
// threads asking for different kernels rarely meet, and nothing a compile or
// a module load holds is taken on a hit.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <unordered_map>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

/// `Value` is what is handed out (Service: a Kernel), copied on every hit.
template <class Value> class WarmTable {
public:
  /// The value handed out for `spec` on `device` while the answer's
  /// generation was `generation`; none when absent or of another generation.
  std::optional<Value> find(const KernelSpec& spec, int device, uint64_t generation) const {
    const Key key{spec, device};
    const size_t h = hashOf(key);
    const Shard& shard = shards_[h % kShards];
    std::shared_lock<std::shared_mutex> lock(shard.mutex);
    auto it = shard.map.find(key);
    if (it == shard.map.end() || it->second.generation != generation)
      return std::nullopt;
    return it->second.value;
  }

  /// Remembers the answer for `spec` on `device` made at `generation`.
  void insert(const KernelSpec& spec, int device, uint64_t generation, const Value& value) {
    Key key{spec, device};
    Shard& shard = shards_[hashOf(key) % kShards];
    std::unique_lock<std::shared_mutex> lock(shard.mutex);
    auto [it, inserted] = shard.map.try_emplace(std::move(key), Entry{value, generation});
    if (!inserted && it->second.generation <= generation)
      it->second = Entry{value, generation};
  }

  /// Forgets every answer (values already handed out are their holders').
  void clear() {
    for (Shard& shard : shards_) {
      std::unique_lock<std::shared_mutex> lock(shard.mutex);
      shard.map.clear();
    }
  }

  size_t size() const {
    size_t n = 0;
    for (const Shard& shard : shards_) {
      std::shared_lock<std::shared_mutex> lock(shard.mutex);
      n += shard.map.size();
    }
    return n;
  }

private:
  // Enough that the kernels of one process rarely share a shard (64 specs fall
  // into about two shared shards), so threads asking for different kernels
  // rarely touch the same lock; about 128 KiB per service.
  static constexpr size_t kShards = 1024;
  struct Key {
    KernelSpec spec;
    int device;
    bool operator==(const Key& o) const { return device == o.device && spec == o.spec; }
  };
  struct Hash {
    size_t operator()(const Key& k) const { return hashOf(k); }
  };
  static size_t hashOf(const Key& k) { return k.spec.hash() * 31 + static_cast<size_t>(k.device); }
  struct Entry {
    Value value;
    uint64_t generation;
  };
  struct alignas(64) Shard {
    mutable std::shared_mutex mutex;
    std::unordered_map<Key, Entry, Hash> map;
  };
  std::array<Shard, kShards> shards_;
};

} // namespace bqjit
