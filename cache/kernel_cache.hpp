// The cache as the rest of bqjit sees it: memory, then disk, then NVRTC.
// One compile per key: threads of a process wait on one in-flight compile,
// processes on the key's lock file.
#pragma once

#include <array>
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
#include "jit/compiler.hpp"
#include "jit/launch_heuristic.hpp"

namespace bqjit {

/// Where a kernel came from.
enum class KernelSource { Memory, Disk, Compiled };
const char* toString(KernelSource source);

/// This process's counters.
struct CacheCounters {
  int64_t memoryHits = 0;
  int64_t diskHits = 0;
  int64_t misses = 0;
  int64_t compiles = 0;
  double compileMs = 0;
};

class KernelCache {
public:
  using KernelPtr = std::shared_ptr<const CompiledKernel>;
  struct Result {
    KernelPtr kernel;
    KernelSource source;
  };

  KernelCache(Config config, Compiler compiler);

  const Config& config() const { return config_; }
  const Compiler& compiler() const { return compiler_; }
  /// The disk layer, or nullptr when Config::cacheDir is empty.
  const DiskCache* disk() const { return disk_.get(); }

  /// The spec with its launch shape resolved: the user's, else the
  /// many-token (throughput) shape: a tuned record for this spec in the
  /// cache, else the heuristic's.
  llvm::Expected<KernelSpec> resolve(const KernelSpec& spec) const;

  /// The resolved spec of each regime, indexed by Regime: the user's shape
  /// for all when given; else each regime's tuned record or heuristic shape.
  llvm::Expected<std::array<KernelSpec, kRegimeCount>> regimeSpecs(const KernelSpec& spec) const;

  /// The distinct specs a launch may use and which of them serves each regime.
  struct LaunchPlan {
    std::vector<KernelSpec> variants;            ///< in Regime order, each shape once
    std::array<int, kRegimeCount> variantOf{};   ///< index into variants, per Regime
  };
  /// regimeSpecs with the specs that share a shape merged.
  llvm::Expected<LaunchPlan> launchPlan(const KernelSpec& spec) const;

  /// launchPlan's variants: the distinct resolved specs, throughput first.
  /// Prewarm compiles all.
  llvm::Expected<std::vector<KernelSpec>> launchVariants(const KernelSpec& spec) const;

  /// The compiled kernel of a spec (validated and resolved here).
  llvm::Expected<Result> get(const KernelSpec& spec);

  /// Stores the tuned launch shape of an unresolved spec for one regime.
  llvm::Error storeTunedShape(const KernelSpec& spec, const LaunchShape& shape,
                              Regime regime = Regime::Throughput) const;

  CacheCounters counters() const;

private:
  llvm::Expected<Result> produce(const KernelSpec& resolved, const std::string& key);
  void warnOnce(std::atomic<bool>& flag, const std::string& text) const;
  std::string tunedPath(const KernelSpec& spec, Regime regime) const;
  /// The shape of `regime` for a spec without one: tuned record, else heuristic.
  LaunchShape shapeFor(const KernelSpec& spec, Regime regime) const;

  Config config_;
  Compiler compiler_;
  std::unique_ptr<DiskCache> disk_;
  bool diskWritable_ = false;

  mutable std::mutex mutex_;
  llvm::StringMap<KernelPtr> memory_;
  struct Pending; // one in-flight lookup that other threads wait on
  llvm::StringMap<std::shared_ptr<Pending>> inFlight_;
  CacheCounters counters_;
  mutable std::atomic<bool> warnedWrite_{false};
  mutable std::atomic<bool> warnedLock_{false};
};

} // namespace bqjit
