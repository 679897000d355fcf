#include "core/redis_url.hpp"

#include "bqjit/error.hpp"

namespace bqjit {

namespace {

llvm::Error urlError(const std::string& rule) {
  return makeError(ErrorCode::InvalidArgument,
                   "redis URL " + rule + " (form: redis://[:password@]host:port/db)");
}

bool digits(const std::string& s) {
  return !s.empty() && s.size() <= 9 && s.find_first_not_of("0123456789") == std::string::npos;
}

} // namespace

std::string RedisUrl::shown() const {
  std::string out = "redis://";
  if (!password.empty())
    out += user + ":***@";
  out += (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
         std::to_string(port) + "/" + std::to_string(db);
  return out;
}

llvm::Expected<RedisUrl> parseRedisUrl(const std::string& url) {
  const std::string scheme = "redis://";
  if (url.compare(0, scheme.size(), scheme) != 0)
    return urlError("must start with redis:// (rediss://, TLS, is not supported)");
  std::string rest = url.substr(scheme.size());
  RedisUrl u;
  if (const auto at = rest.rfind('@'); at != std::string::npos) {
    const std::string auth = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const auto colon = auth.find(':');
    if (colon == std::string::npos)
      return urlError("has credentials without ':' before the password");
    u.user = auth.substr(0, colon);
    u.password = auth.substr(colon + 1);
    if (u.password.empty())
      return urlError("has an empty password");
  }
  std::string hostPort = rest;
  if (const auto slash = rest.find('/'); slash != std::string::npos) {
    hostPort = rest.substr(0, slash);
    const std::string db = rest.substr(slash + 1);
    if (!db.empty()) {
      if (!digits(db) || std::stoi(db) > 15)
        return urlError("database '" + db + "' must be a number from 0 to 15");
      u.db = std::stoi(db);
    }
  }
  if (!hostPort.empty() && hostPort[0] == '[') { // [::1]:6379
    const auto close = hostPort.find(']');
    if (close == std::string::npos)
      return urlError("has an unclosed '[' in the host");
    u.host = hostPort.substr(1, close - 1);
    hostPort = hostPort.substr(close + 1);
    if (!hostPort.empty() && hostPort[0] != ':')
      return urlError("has text after the host's ']'");
    hostPort = hostPort.empty() ? "" : hostPort.substr(1);
    if (!hostPort.empty()) {
      if (!digits(hostPort) || std::stoi(hostPort) < 1 || std::stoi(hostPort) > 65535)
        return urlError("port '" + hostPort + "' must be a number from 1 to 65535");
      u.port = std::stoi(hostPort);
    }
  } else {
    const auto colon = hostPort.rfind(':');
    u.host = hostPort.substr(0, colon);
    if (colon != std::string::npos) {
      const std::string port = hostPort.substr(colon + 1);
      if (!digits(port) || std::stoi(port) < 1 || std::stoi(port) > 65535)
        return urlError("port '" + port + "' must be a number from 1 to 65535");
      u.port = std::stoi(port);
    }
  }
  if (u.host.empty())
    return urlError("names no host");
  return u;
}

} // namespace bqjit
