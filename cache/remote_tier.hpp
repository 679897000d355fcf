// The fleet tier: kernels shared by every host through one Redis database
// (BQJIT_REMOTE_CACHE). KernelCache asks it after the disk and before a
// compile, and publishes to it after a compile; a fleet-wide lock key makes
// the first host to miss the only one that compiles.
//
//   bqjit:v1:entry:<key>  the entry (entry_blob.hpp: signed with the fleet
//                         secret), written with one SET: no reader sees half
//   bqjit:v1:lock:<key>   SET NX PX <lock timeout> <token>; released with a
//                         script that deletes it only while it holds our token
//
// Every fault (down, refusing, slow past BQJIT_REMOTE_TIMEOUT_MS, full, a
// corrupt or foreign entry) costs one warning and leaves the caller to its
// local behaviour: never an exception, never a wait past the timeouts. After
// a transport fault the tier stays off for a second, then reconnects.
// Thread-safe: one connection, used under a mutex.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "bqjit/compiled_kernel.hpp"
#include "bqjit/config.hpp"
#include "cache/fleet_secret.hpp"
#include "core/redis_url.hpp"
#include "redis/redis_client.hpp"

namespace bqjit {

class RemoteTier {
public:
  /// The tier of Config::remoteCache: nullptr when none is configured, or
  /// when it is refused (no fleet secret, a bad secret file): then
  /// `refusal` says why, for the caller to log. Connects lazily.
  static std::unique_ptr<RemoteTier> create(const Config& config, std::string* refusal);
  ~RemoteTier();

  enum class Status {
    Hit,  ///< a verified entry
    Miss, ///< no entry
    Bad,  ///< an entry that failed verification (warned once per key)
    Down, ///< the server did not answer (warned once per outage)
  };
  struct Fetched {
    Status status = Status::Down;
    std::optional<CompiledKernel> kernel;
    std::string keyInputs;
  };
  Fetched fetch(const std::string& key);
  /// Whether an entry exists (cheaper than fetch() while polling).
  Status exists(const std::string& key);

  enum class LockStatus { Acquired, Held, Down };
  /// Takes the fleet lock of `key` for `ttlMs` with `token` (SET NX PX).
  LockStatus tryLock(const std::string& key, const std::string& token, int ttlMs);
  /// Releases the lock if it still holds `token` (it may have expired and
  /// been taken by another host: theirs stays).
  void unlock(const std::string& key, const std::string& token);

  /// Stores an entry (overwriting a bad one); false after a fault (warned).
  bool publish(const CompiledKernel& kernel, const std::string& keyInputs);

  /// A token unique to this process and call, for tryLock.
  static std::string newToken();
  std::string shown() const { return url_.shown(); }
  const Authenticator& authenticator() const { return auth_; }

  static std::string entryKey(const std::string& key) { return "bqjit:v1:entry:" + key; }
  static std::string lockKey(const std::string& key) { return "bqjit:v1:lock:" + key; }

private:
  RemoteTier(const Config& config, RedisUrl url, Authenticator auth);
  /// Runs one command on a live connection; std::nullopt after a transport
  /// fault (the tier is then down for a while, with one warning).
  std::optional<redis::Reply> call(const std::vector<std::string>& args);
  void warnDown(const std::string& why);

  const Config& config_;
  RedisUrl url_;
  Authenticator auth_;
  std::mutex mutex_;
  std::unique_ptr<redis::Client> client_;
  std::chrono::steady_clock::time_point downUntil_{};
  bool warnedDown_ = false;
  bool warnedPublish_ = false;
  std::set<std::string> warnedBad_;
};

} // namespace bqjit
