#include "cache/kernel_cache.hpp"

#include <chrono>
#include <thread>

#include "bqjit/error.hpp"
#include "cache/log_lines.hpp"

namespace bqjit {

const char* toString(KernelSource source) {
  switch (source) {
  case KernelSource::Memory:
    return "memory";
  case KernelSource::Disk:
    return "disk";
  case KernelSource::Remote:
    return "remote";
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
  std::string refusal;
  remote_ = RemoteTier::create(config_, &refusal);
  if (!refusal.empty())
    config_.log(LogLevel::Warn, refusal);
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

void KernelCache::countRemote(CacheEvent event, const std::string& key) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (event == CacheEvent::RemoteHit)
      ++counters_.remoteHits;
    else if (event == CacheEvent::RemoteMiss)
      ++counters_.remoteMisses;
    else if (event == CacheEvent::RemotePublish)
      ++counters_.remotePublishes;
    else
      ++counters_.remoteErrors;
  }
  if (disk_ && diskRefusal_.empty() && diskWritable_)
    llvm::consumeError(disk_->journal().append(event, key));
}

KernelCache::KernelPtr KernelCache::fromRemote(const std::string& key, bool count) {
  RemoteTier::Fetched got = remote_->fetch(key);
  if (got.status != RemoteTier::Status::Hit) {
    if (count || got.status != RemoteTier::Status::Miss)
      countRemote(got.status == RemoteTier::Status::Miss ? CacheEvent::RemoteMiss
                                                         : CacheEvent::RemoteError,
                  key);
    return nullptr;
  }
  countRemote(CacheEvent::RemoteHit, key);
  if (diskWritable_)
    if (auto err = disk_->publish(*got.kernel, got.keyInputs))
      warnOnce(warnedWrite_, consumeToString(std::move(err)) + "; kernels are kept in memory only");
  return std::make_shared<const CompiledKernel>(std::move(*got.kernel));
}

namespace {

// Releases the fleet lock of a key on every way out of a compile.
struct FleetLockGuard {
  RemoteTier* remote = nullptr;
  std::string key, token;
  ~FleetLockGuard() {
    if (remote)
      remote->unlock(key, token);
  }
};

} // namespace

KernelCache::KernelPtr KernelCache::fromDisk(const std::string& key) {
  if (!disk_ || !diskRefusal_.empty())
    return nullptr;
  auto k = disk_->load(key);
  if (!k)
    return nullptr;
  llvm::consumeError(disk_->journal().append(CacheEvent::Hit, key));
  return std::make_shared<const CompiledKernel>(std::move(*k));
}

KernelCache::KernelPtr KernelCache::find(const KernelIdentity& kernel) {
  const std::string& key = kernel.key;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto hit = memory_.find(key); hit != memory_.end()) {
      ++counters_.memoryHits;
      return hit->second;
    }
  }
  KernelPtr k = fromDisk(key);
  if (k) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++counters_.diskHits;
  } else if (remote_) {
    // A miss is counted by the get() that follows, not here.
    k = fromRemote(key, /*count=*/false);
  }
  if (k) {
    std::lock_guard<std::mutex> lock(mutex_);
    memory_.try_emplace(key, k);
  }
  return k;
}

llvm::Expected<KernelCache::Result> KernelCache::produce(const KernelIdentity& kernel) {
  const std::string& key = kernel.key;
  if (auto k = fromDisk(key)) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++counters_.diskHits;
    return Result{k, KernelSource::Disk};
  }
  if (remote_)
    if (auto k = fromRemote(key, /*count=*/true))
      return Result{k, KernelSource::Remote};
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
      if (auto k = fromDisk(key)) {
        std::lock_guard<std::mutex> guard(mutex_);
        ++counters_.diskHits;
        return Result{k, KernelSource::Disk};
      }
    }
  }

  // The fleet's single flight: the host that takes the lock key compiles,
  // the others wait for its entry, at most the lock timeout (the lock's
  // expiry: a holder that died is replaced then).
  FleetLockGuard fleetLock;
  if (remote_) {
    const std::string token = RemoteTier::newToken();
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + std::chrono::milliseconds(config_.lockTimeoutMs);
    auto pause = std::chrono::milliseconds(10);
    for (;;) {
      const RemoteTier::LockStatus st = remote_->tryLock(key, token, config_.lockTimeoutMs);
      if (st == RemoteTier::LockStatus::Down)
        break;
      if (st == RemoteTier::LockStatus::Acquired) {
        fleetLock.remote = remote_.get();
        fleetLock.key = key;
        fleetLock.token = token;
        // Published between our miss and our lock?
        if (auto k = fromRemote(key, /*count=*/false))
          return Result{k, KernelSource::Remote};
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        warnOnce(warnedFleetLock_,
                 "waited " + std::to_string(config_.lockTimeoutMs) +
                     " ms (BQJIT_LOCK_TIMEOUT_MS) for another host's compile of " + key +
                     " in the remote cache " + remote_->shown() + "; compiling here");
        break;
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(100));
      const RemoteTier::Status there = remote_->exists(key);
      if (there == RemoteTier::Status::Down)
        break;
      if (there == RemoteTier::Status::Hit)
        if (auto k = fromRemote(key, /*count=*/false))
          return Result{k, KernelSource::Remote};
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
  if (remote_)
    countRemote(remote_->publish(*compiled, kernel.keyText) ? CacheEvent::RemotePublish
                                                            : CacheEvent::RemoteError,
                key);
  return Result{std::make_shared<const CompiledKernel>(std::move(*compiled)),
                KernelSource::Compiled, std::move(notStored)};
}

CacheCounters KernelCache::counters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return counters_;
}

} // namespace bqjit
