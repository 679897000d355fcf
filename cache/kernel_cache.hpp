// The cache as the rest of bqjit sees it: it stores and finds kernels by
// identity, memory, then disk, then the fleet's remote tier (when
// configured), then NVRTC, and decides nothing about them. One compile per
// key: threads of a process wait on one in-flight compile, processes of a
// host on the key's lock file, hosts of a fleet on the remote lock key.
#pragma once

#include <atomic>
#include <future>
#include <memory>
#include <mutex>
#include <optional>

#include <llvm/ADT/StringMap.h>
#include <llvm/Support/Error.h>

#include "bqjit/compiled_kernel.hpp"
#include "bqjit/config.hpp"
#include "cache/disk_cache.hpp"
#include "cache/remote_tier.hpp"
#include "jit/compiler.hpp"

namespace bqjit {

/// Where a kernel came from.
enum class KernelSource { Memory, Disk, Remote, Compiled };
const char* toString(KernelSource source);

/// This process's counters.
struct CacheCounters {
  int64_t memoryHits = 0;
  int64_t diskHits = 0;
  int64_t misses = 0;
  int64_t compiles = 0;
  double compileMs = 0;
  int64_t remoteHits = 0;      ///< fetched from the fleet tier
  int64_t remoteMisses = 0;    ///< not there
  int64_t remotePublishes = 0; ///< stored there after a compile
  int64_t remoteErrors = 0;    ///< faults: down, slow, full, a rejected entry
};

class KernelCache {
public:
  using KernelPtr = std::shared_ptr<const CompiledKernel>;
  struct Result {
    KernelPtr kernel;
    KernelSource source;
    /// Why a kernel compiled by this call did not reach the disk (the cache
    /// is unwritable or full, say); empty when it did, or was not compiled.
    std::string notStored;
  };

  KernelCache(Config config, Compiler compiler);

  const Config& config() const { return config_; }
  const Compiler& compiler() const { return compiler_; }
  /// The disk layer, or nullptr when Config::cacheDir is empty.
  const DiskCache* disk() const { return disk_.get(); }
  /// The fleet tier, or nullptr (none configured, or refused: see the log).
  RemoteTier* remote() const { return remote_.get(); }
  /// Why the disk cache is not used at all (DiskCache::checkTrust: someone
  /// untrusted can write it), or empty. Kernels are then compiled into memory.
  const std::string& diskRefusal() const { return diskRefusal_; }

  /// The compiled kernel of an identity (Compiler::identify): memory, disk,
  /// then a compile under the key's lock, published to disk.
  llvm::Expected<Result> get(const KernelIdentity& kernel);
  /// The kernel of an identity where it is at hand without compiling
  /// (memory, disk, the fleet tier), then kept in memory; else nullptr.
  KernelPtr find(const KernelIdentity& kernel);
  /// get() of a resolved spec's identity (Compiler::identify).
  llvm::Expected<Result> getResolved(const KernelSpec& resolved);

  CacheCounters counters() const;

private:
  llvm::Expected<Result> produce(const KernelIdentity& kernel);
  /// A verified disk entry (journaled as a hit), or nullptr.
  KernelPtr fromDisk(const std::string& key);
  /// A verified remote entry (kept on disk too), or nullptr; counts and
  /// journals the outcome when `count`.
  KernelPtr fromRemote(const std::string& key, bool count);
  void countRemote(CacheEvent event, const std::string& key);
  void warnOnce(std::atomic<bool>& flag, const std::string& text) const;

  Config config_;
  Compiler compiler_;
  std::unique_ptr<DiskCache> disk_;
  std::unique_ptr<RemoteTier> remote_;
  bool diskWritable_ = false;
  std::string diskRefusal_;

  mutable std::mutex mutex_;
  llvm::StringMap<KernelPtr> memory_;
  struct Pending; // one in-flight lookup that other threads wait on
  llvm::StringMap<std::shared_ptr<Pending>> inFlight_;
  CacheCounters counters_;
  mutable std::atomic<bool> warnedWrite_{false};
  mutable std::atomic<bool> warnedLock_{false};
  mutable std::atomic<bool> warnedFleetLock_{false};
};

} // namespace bqjit
