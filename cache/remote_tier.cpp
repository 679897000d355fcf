#include "cache/remote_tier.hpp"

#include <random>

#include <unistd.h>

#include "bqjit/error.hpp"
#include "cache/entry_blob.hpp"
#include "cache/log_lines.hpp"

namespace bqjit {

namespace {

// How long the tier stays off after a transport fault before reconnecting.
constexpr auto kRetryAfter = std::chrono::milliseconds(1000);

// Deletes the lock only while it holds the caller's token.
constexpr const char* kUnlockScript =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end";

} // namespace

std::unique_ptr<RemoteTier> RemoteTier::create(const Config& config, std::string* refusal) {
  if (config.remoteCache.empty())
    return nullptr;
  auto url = parseRedisUrl(config.remoteCache);
  if (!url) {
    if (refusal)
      *refusal =
          "BQJIT_REMOTE_CACHE: " + consumeToString(url.takeError()) + "; the remote cache is off";
    return nullptr;
  }
  auto auth = Authenticator::fromConfig(config, "the remote cache " + url->shown() +
                                                    " (BQJIT_REMOTE_CACHE)");
  if (!auth) {
    if (refusal)
      *refusal = consumeToString(auth.takeError()) + "; the remote cache is off";
    return nullptr;
  }
  if (auth->insecure)
    config.log(LogLevel::Warn,
               "BQJIT_INSECURE_UNSIGNED=1: entries of the remote cache " + url->shown() +
                   " are neither signed nor verified; anyone who can write that database can "
                   "run code in this process");
  return std::unique_ptr<RemoteTier>(new RemoteTier(config, std::move(*url), std::move(*auth)));
}

RemoteTier::RemoteTier(const Config& config, RedisUrl url, Authenticator auth)
    : config_(config), url_(std::move(url)), auth_(std::move(auth)) {}

RemoteTier::~RemoteTier() = default;

std::string RemoteTier::newToken() {
  std::random_device rd;
  char host[64] = {0};
  ::gethostname(host, sizeof host - 1);
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s:%d:%08x%08x", host, static_cast<int>(::getpid()), rd(), rd());
  return buf;
}

void RemoteTier::warnDown(const std::string& why) {
  if (!warnedDown_)
    config_.log(LogLevel::Warn, "remote cache " + url_.shown() + ": " + oneLine(why) +
                                    "; using the local cache alone until it answers again");
  else if (config_.logs(LogLevel::Info))
    config_.log(LogLevel::Info, "remote cache fault: " + oneLine(why));
  warnedDown_ = true;
}

std::optional<redis::Reply> RemoteTier::call(const std::vector<std::string>& args) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  if (now < downUntil_)
    return std::nullopt;
  if (!client_ || !client_->connected()) {
    client_.reset();
    auto client = redis::Client::connect(url_, config_.remoteTimeoutMs);
    if (!client) {
      warnDown(consumeToString(client.takeError()));
      downUntil_ = std::chrono::steady_clock::now() + kRetryAfter;
      return std::nullopt;
    }
    client_ = std::move(*client);
  }
  auto reply = client_->command(args);
  if (!reply) {
    warnDown(consumeToString(reply.takeError()));
    client_.reset();
    downUntil_ = std::chrono::steady_clock::now() + kRetryAfter;
    return std::nullopt;
  }
  if (warnedDown_) {
    config_.log(LogLevel::Info, "remote cache " + url_.shown() + " answers again");
    warnedDown_ = false;
  }
  return std::move(*reply);
}

RemoteTier::Fetched RemoteTier::fetch(const std::string& key) {
  Fetched out;
  auto reply = call({"GET", entryKey(key)});
  if (!reply)
    return out; // Down
  if (reply->kind == redis::Reply::Kind::Nil) {
    out.status = Status::Miss;
    return out;
  }
  std::string problem;
  if (reply->kind == redis::Reply::Kind::String) {
    auto decoded = decodeEntryBlob(reply->text, key, auth_);
    if (decoded) {
      out.status = Status::Hit;
      out.kernel = std::move(decoded->kernel);
      out.keyInputs = std::move(decoded->keyInputs);
      if (config_.logs(LogLevel::Info))
        config_.log(LogLevel::Info, "loaded from remote key=" + key +
                                        " arch=" + out.kernel->spec.arch +
                                        " spec=" + out.kernel->spec.label());
      return out;
    }
    problem = consumeToString(decoded.takeError());
  } else {
    problem = "the server answered GET with " + (reply->kind == redis::Reply::Kind::Error
                                                     ? "an error: " + reply->text
                                                     : std::string("a value of another type"));
  }
  out.status = Status::Bad;
  bool first;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    first = warnedBad_.insert(key).second;
  }
  if (first)
    config_.log(LogLevel::Warn,
                "remote cache " + url_.shown() + " entry " + key +
                    " is rejected and will be recompiled and replaced: " + oneLine(problem));
  return out;
}

RemoteTier::Status RemoteTier::exists(const std::string& key) {
  auto reply = call({"EXISTS", entryKey(key)});
  if (!reply)
    return Status::Down;
  if (reply->kind != redis::Reply::Kind::Integer)
    return Status::Bad;
  return reply->integer > 0 ? Status::Hit : Status::Miss;
}

RemoteTier::LockStatus RemoteTier::tryLock(const std::string& key, const std::string& token,
                                           int ttlMs) {
  auto reply = call({"SET", lockKey(key), token, "NX", "PX", std::to_string(std::max(1, ttlMs))});
  if (!reply)
    return LockStatus::Down;
  if (reply->kind == redis::Reply::Kind::Nil)
    return LockStatus::Held;
  if (reply->kind == redis::Reply::Kind::String)
    return LockStatus::Acquired;
  // An error reply (OOM under noeviction, say): compile without the fleet lock.
  std::lock_guard<std::mutex> lock(mutex_);
  warnDown("SET NX of the lock of " + key + " refused: " + reply->text);
  return LockStatus::Down;
}

void RemoteTier::unlock(const std::string& key, const std::string& token) {
  call({"EVAL", kUnlockScript, "1", lockKey(key), token});
}

bool RemoteTier::publish(const CompiledKernel& kernel, const std::string& keyInputs) {
  const std::string blob = encodeEntryBlob(kernel, keyInputs, auth_);
  std::vector<std::string> args = {"SET", entryKey(kernel.key), blob};
  if (config_.remoteTtlSeconds > 0) {
    args.push_back("EX");
    args.push_back(std::to_string(config_.remoteTtlSeconds));
  }
  auto reply = call(args);
  if (!reply)
    return false;
  if (reply->kind == redis::Reply::Kind::Error) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!warnedPublish_)
      config_.log(LogLevel::Warn, "remote cache " + url_.shown() + " did not store " + kernel.key +
                                      ": " + oneLine(reply->text) +
                                      " (kernels stay on this host's disk)");
    warnedPublish_ = true;
    return false;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    warnedBad_.erase(kernel.key);
  }
  if (config_.logs(LogLevel::Debug))
    config_.log(LogLevel::Debug,
                "remote entry stored key=" + kernel.key + " bytes=" + std::to_string(blob.size()));
  return true;
}

} // namespace bqjit
