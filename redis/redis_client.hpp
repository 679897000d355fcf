// A small synchronous Redis client over hiredis: one connection, a timeout
// on the connect and on every request, AUTH and SELECT from the URL. It
// knows nothing of kernels (the cache's remote tier does). Not thread-safe:
// its user serializes the calls. After a transport error (refused, reset,
// timed out) the connection is gone and every call fails until reconnect().
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <llvm/Support/Error.h>

#include "core/redis_url.hpp"

struct redisContext;

namespace bqjit::redis {

/// A reply: nil, a string (bulk or status), an integer, an array, or an
/// error reply of the server ("OOM command not allowed ...").
struct Reply {
  enum class Kind { Nil, String, Integer, Array, Error };
  Kind kind = Kind::Nil;
  std::string text; ///< String and Error
  int64_t integer = 0;
  std::vector<Reply> elements;
};

class Client {
public:
  /// Connects (TCP, `timeoutMs` for the connect and then each request),
  /// authenticates and selects the database of `url`. Errors (CacheError)
  /// name the server (password hidden) and what failed.
  static llvm::Expected<std::unique_ptr<Client>> connect(const RedisUrl& url, int timeoutMs);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  /// One command; a transport failure is an error (and the connection is
  /// closed), an error reply of the server is a Reply of Kind::Error.
  llvm::Expected<Reply> command(const std::vector<std::string>& args);
  /// command(), with an error reply made an error too.
  llvm::Expected<Reply> commandOk(const std::vector<std::string>& args);

  bool connected() const { return context_ != nullptr; }
  const RedisUrl& url() const { return url_; }

private:
  Client(RedisUrl url, int timeoutMs) : url_(std::move(url)), timeoutMs_(timeoutMs) {}
  llvm::Error open();
  void close();
  RedisUrl url_;
  int timeoutMs_;
  redisContext* context_ = nullptr;
};

} // namespace bqjit::redis
