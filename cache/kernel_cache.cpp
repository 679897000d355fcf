#include "cache/kernel_cache.hpp"

#include "bqjit/error.hpp"
#include "cache/log_lines.hpp"

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
  // Created first (what bqjit creates is trusted), then checked: a cache
  // that can be read but not written is still checked before it is read.
  llvm::Error prepared = disk_->prepare();
  if (auto err = disk_->checkTrust()) {
    llvm::consumeError(std::move(prepared));
    diskRefusal_ = consumeToString(std::move(err));
    warnOnce(warnedWrite_, diskRefusal_ + "; kernels are compiled into memory only");
    return;
  }
  if (prepared) {
    std::string message;
    consumeError(std::move(prepared), &message);
    warnOnce(warnedWrite_, message + "; kernels are kept in memory only");
    return;
  }
  diskWritable_ = true;
}

void KernelCache::warnOnce(std::atomic<bool>& flag, const std::string& text) const {
  if (!flag.exchange(true))
    config_.log(LogLevel::Warn, text);
}

llvm::Expected<KernelCache::Result> KernelCache::getResolved(const KernelSpec& resolved) {
  auto id = compiler_.identify(resolved);
  if (!id)
    return id.takeError();
  return get(*id);
}

llvm::Expected<KernelCache::Result> KernelCache::get(const KernelIdentity& kernel) {
  const std::string& key = kernel.key;

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

  auto produced = produce(kernel);
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

llvm::Expected<KernelCache::Result> KernelCache::produce(const KernelIdentity& kernel) {
  const std::string& key = kernel.key;
  auto fromDisk = [&]() -> KernelPtr {
    if (!disk_ || !diskRefusal_.empty())
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
  if (disk_ && diskRefusal_.empty())
    llvm::consumeError(disk_->journal().append(CacheEvent::Miss, key));
  if (config_.noCompile && !diskRefusal_.empty())
    return makeError(ErrorCode::NotInCache, "BQJIT_NO_COMPILE is set and no kernel is loaded from "
                                            "the cache for " +
                                                kernel.spec.canonical() + " (key " + key +
                                                "): " + diskRefusal_);
  if (config_.noCompile)
    return makeError(ErrorCode::NotInCache, "BQJIT_NO_COMPILE is set and the cache at '" +
                                                config_.cacheDir + "' has no kernel for " +
                                                kernel.spec.canonical() + " (key " + key +
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

  auto compiled = compiler_.compile(kernel);
  if (!compiled)
    return compiled.takeError();
  logCompiled(config_, *compiled);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++counters_.compiles;
    counters_.compileMs += compiled->compileMs;
  }
  std::string notStored;
  if (!disk_) {
    notStored = "no cache directory";
  } else if (!diskRefusal_.empty()) {
    notStored = diskRefusal_;
  } else if (!diskWritable_) {
    notStored = "the cache at '" + config_.cacheDir + "' cannot be written";
  } else {
    if (auto err = disk_->publish(*compiled, kernel.keyText)) {
      consumeError(std::move(err), &notStored);
      warnOnce(warnedWrite_, notStored + "; kernels are kept in memory only");
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
                KernelSource::Compiled, std::move(notStored)};
}

CacheCounters KernelCache::counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return counters_;
}

} // namespace bqjit
