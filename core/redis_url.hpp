// BQJIT_REMOTE_CACHE: redis://[[user]:password@]host[:port][/db].
#pragma once

#include <string>

#include <llvm/Support/Error.h>

namespace bqjit {

struct RedisUrl {
  std::string host;
  int port = 6379;
  int db = 0;
  std::string user;     ///< empty: AUTH with the password alone
  std::string password; ///< empty: no AUTH
  /// The URL with the password replaced by "***", for messages.
  std::string shown() const;
};

/// Parses a redis:// URL; an error (InvalidArgument) names the part and the rule.
llvm::Expected<RedisUrl> parseRedisUrl(const std::string& url);

} // namespace bqjit
