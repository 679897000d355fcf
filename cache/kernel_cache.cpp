#include "cache/kernel_cache.hpp"

#include <algorithm>
#include <fstream>

#include <unistd.h>

#include "bqjit/error.hpp"
#include "cache/fs_util.hpp"
#include "jit/cache_key.hpp"
#include "jit/launch_heuristic.hpp"

namespace bqjit {

const char* toString(KernelSource source) {
  switch (source) {
  case KernelSource::Memory:
    return "memory";
  case KernelSource::Disk:
    return "disk";
  case KernelSource::Compiled:
    return "compiled";
  }
  return "?";
}

struct KernelCache::Pending {
  std::promise<void> promise;
  std::shared_future<void> ready = promise.get_future().share();
  KernelPtr kernel;
  KernelSource source = KernelSource::Compiled;
  ErrorCode code = ErrorCode::Internal;
  std::string message;
};

KernelCache::KernelCache(Config config, Compiler compiler)
    : config_(std::move(config)), compiler_(std::move(compiler)) {
  if (config_.cacheDir.empty())
    return;
  disk_ = std::make_unique<DiskCache>(config_.cacheDir, config_);
  if (auto err = disk_->prepare()) {
    std::string message;
    consumeError(std::move(err), &message);
    warnOnce(warnedWrite_, message + "; kernels are kept in memory only");
    return;
  }
  diskWritable_ = true;
}

void KernelCache::warnOnce(std::atomic<bool>& flag, const std::string& text) const {
  if (!flag.exchange(true))
    config_.log(LogLevel::Warn, text);
}

std::string KernelCache::tunedPath(const KernelSpec& spec, Regime regime) const {
  KernelSpec base = spec;
  base.shape.reset();
  return disk_->root() + "/tuned/" + computeCacheKey(compiler_.keyInputs(base)) +
         (regime == Regime::Latency ? ".latency.json"
          : regime == Regime::Tiny  ? ".tiny.json"
          : regime == Regime::Bulk  ? ".bulk.json"
                                    : ".json");
}

LaunchShape KernelCache::shapeFor(const KernelSpec& spec, Regime regime) const {
  const LaunchShape heuristic = chooseLaunchShape(spec, 16, regime);
  if (!disk_)
    return heuristic;
  const std::string path = tunedPath(spec, regime);
  auto text = fs::readFile(path);
  if (!text) {
    llvm::consumeError(text.takeError()); // no record: the usual case
    return heuristic;
  }
  auto j = nlohmann::json::parse(text->begin(), text->end(), nullptr, false);
  if (j.is_object() && j.contains("spec")) {
    auto tuned = KernelSpec::fromJson(j["spec"]);
    if (tuned && tuned->shape) {
      // The record may hold a shape that does not fit this spec (a copied
      // or stale file): then it is ignored.
      llvm::Error invalid = validateShape(spec, *tuned->shape);
      if (!invalid)
        return *tuned->shape;
      llvm::consumeError(std::move(invalid));
    }
    if (!tuned)
      llvm::consumeError(tuned.takeError());
  }
  config_.log(LogLevel::Warn, "ignoring unreadable tuning record " + path);
  return heuristic;
}

llvm::Expected<std::array<KernelSpec, kRegimeCount>>
KernelCache::regimeSpecs(const KernelSpec& spec) const {
  if (auto err = spec.validate())
    return std::move(err);
  std::array<KernelSpec, kRegimeCount> out;
  out.fill(spec);
  if (!spec.shape)
    for (int r = 0; r < kRegimeCount; ++r)
      out[r].shape = shapeFor(spec, static_cast<Regime>(r));
  return out;
}

llvm::Expected<KernelCache::LaunchPlan> KernelCache::launchPlan(const KernelSpec& spec) const {
  auto specs = regimeSpecs(spec);
  if (!specs)
    return specs.takeError();
  LaunchPlan plan;
  for (int r = 0; r < kRegimeCount; ++r) {
    const KernelSpec& s = (*specs)[r];
    auto same = std::find_if(plan.variants.begin(), plan.variants.end(),
                             [&](const KernelSpec& o) { return o.shape == s.shape; });
    plan.variantOf[r] = static_cast<int>(same - plan.variants.begin());
    if (same == plan.variants.end())
      plan.variants.push_back(s);
  }
  return plan;
}

llvm::Expected<std::vector<KernelSpec>> KernelCache::launchVariants(const KernelSpec& spec) const {
  auto plan = launchPlan(spec);
  if (!plan)
    return plan.takeError();
  return std::move(plan->variants);
}

llvm::Expected<KernelSpec> KernelCache::resolve(const KernelSpec& spec) const {
  auto variants = launchVariants(spec);
  if (!variants)
    return variants.takeError();
  return variants->front();
}

llvm::Error KernelCache::storeTunedShape(const KernelSpec& spec, const LaunchShape& shape,
                                         Regime regime) const {
  if (!disk_)
    return makeError(ErrorCode::CacheError, "no cache directory to store the tuned shape in");
  KernelSpec tuned = spec;
  tuned.shape = shape;
  if (auto err = tuned.validate())
    return err;
  const std::string path = tunedPath(spec, regime);
  const std::string text = nlohmann::json({{"spec", tuned.toJson()}}).dump(2) + "\n";
  const std::string tmp = path + ".tmp." + fs::uniqueSuffix();
  if (auto err = fs::writeFileSynced(tmp, text.data(), text.size()))
    return err;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return makeError(ErrorCode::CacheError, "cannot write tuning record '" + path + "'");
  }
  return llvm::Error::success();
}

llvm::Expected<KernelCache::Result> KernelCache::get(const KernelSpec& spec) {
  auto resolved = resolve(spec);
  if (!resolved)
    return resolved.takeError();
  const std::string key = compiler_.cacheKey(*resolved);

  std::shared_ptr<Pending> pending;
  bool owner = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto hit = memory_.find(key);
    if (hit != memory_.end()) {
      ++counters_.memoryHits;
      return Result{hit->second, KernelSource::Memory};
    }
    auto& slot = inFlight_[key];
    if (!slot) {
      slot = std::make_shared<Pending>();
      owner = true;
    }
    pending = slot;
  }
  if (!owner) {
    pending->ready.wait();
    if (!pending->kernel)
      return makeError(pending->code, pending->message);
    return Result{pending->kernel, KernelSource::Memory};
  }

  auto produced = produce(*resolved, key);
  std::lock_guard<std::mutex> lock(mutex_);
  if (produced) {
    memory_[key] = produced->kernel;
    pending->kernel = produced->kernel;
    pending->source = produced->source;
  } else {
    // Waiters get the same error; the owner returns the original.
    std::string message;
    ErrorCode code = consumeError(produced.takeError(), &message);
    pending->code = code;
    pending->message = message;
    produced = makeError(code, message);
  }
  inFlight_.erase(key);
  pending->promise.set_value();
  return produced;
}

llvm::Expected<KernelCache::Result> KernelCache::produce(const KernelSpec& resolved,
                                                         const std::string& key) {
  auto fromDisk = [&]() -> KernelPtr {
    if (!disk_)
      return nullptr;
    auto k = disk_->load(key);
    if (!k)
      return nullptr;
    llvm::consumeError(disk_->journal().append(CacheEvent::Hit, key));
    return std::make_shared<const CompiledKernel>(std::move(*k));
  };
  if (auto k = fromDisk()) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++counters_.diskHits;
    return Result{k, KernelSource::Disk};
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++counters_.misses;
  }
  if (disk_)
    llvm::consumeError(disk_->journal().append(CacheEvent::Miss, key));
  if (config_.noCompile)
    return makeError(ErrorCode::NotInCache, "BQJIT_NO_COMPILE is set and the cache at '" +
                                                config_.cacheDir + "' has no kernel for " +
                                                resolved.canonical() + " (key " + key +
                                                "); prewarm it with `bqjit prewarm`");

  std::optional<FileLock> keyLock;
  if (diskWritable_) {
    auto lock = disk_->lockKey(key, config_.lockTimeoutMs);
    if (!lock) {
      std::string message;
      consumeError(lock.takeError(), &message);
      warnOnce(warnedLock_, message + "; compiling without the cross-process lock");
    } else if (!*lock) {
      warnOnce(warnedLock_, "waited " + std::to_string(config_.lockTimeoutMs) +
                                " ms for the compile lock of " + key + "; compiling privately");
    } else {
      keyLock.emplace(std::move(**lock));
      // Another process may have published while we waited for the lock.
      if (auto k = fromDisk()) {
        std::lock_guard<std::mutex> guard(mutex_);
        ++counters_.diskHits;
        return Result{k, KernelSource::Disk};
      }
    }
  }

  auto compiled = compiler_.compile(resolved);
  if (!compiled)
    return compiled.takeError();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++counters_.compiles;
    counters_.compileMs += compiled->compileMs;
  }
  if (diskWritable_) {
    if (auto err = disk_->publish(*compiled, compiler_.keyInputs(resolved).canonical())) {
      std::string message;
      consumeError(std::move(err), &message);
      warnOnce(warnedWrite_, message + "; kernels are kept in memory only");
    } else {
      llvm::consumeError(disk_->journal().append(CacheEvent::Compile, key, compiled->compileMs));
      if (config_.maxCacheBytes > 0) {
        auto evicted = disk_->collectGarbage(config_.maxCacheBytes, key);
        if (!evicted)
          warnOnce(warnedWrite_, consumeToString(evicted.takeError()));
      }
    }
  }
  return Result{std::make_shared<const CompiledKernel>(std::move(*compiled)),
                KernelSource::Compiled};
}

CacheCounters KernelCache::counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return counters_;
}

} // namespace bqjit
