#include "redis/redis_client.hpp"

#include <cerrno>
#include <cstring>

#include <sys/time.h>

#include <hiredis.h>

#include "bqjit/error.hpp"

namespace bqjit::redis {

namespace {

struct timeval toTimeval(int ms) {
  struct timeval tv;
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  return tv;
}

Reply convert(const redisReply* r) {
  Reply out;
  switch (r->type) {
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
    out.kind = Reply::Kind::String;
    out.text.assign(r->str, r->len);
    break;
  case REDIS_REPLY_ERROR:
    out.kind = Reply::Kind::Error;
    out.text.assign(r->str, r->len);
    break;
  case REDIS_REPLY_INTEGER:
    out.kind = Reply::Kind::Integer;
    out.integer = r->integer;
    break;
  case REDIS_REPLY_ARRAY:
    out.kind = Reply::Kind::Array;
    for (size_t i = 0; i < r->elements; ++i)
      out.elements.push_back(convert(r->element[i]));
    break;
  default:
    out.kind = Reply::Kind::Nil;
  }
  return out;
}

} // namespace

llvm::Expected<std::unique_ptr<Client>> Client::connect(const RedisUrl& url, int timeoutMs) {
  std::unique_ptr<Client> client(new Client(url, timeoutMs));
  if (auto err = client->open())
    return std::move(err);
  return client;
}

Client::~Client() {
  close();
}

void Client::close() {
  if (context_)
    redisFree(context_);
  context_ = nullptr;
}

llvm::Error Client::open() {
  close();
  const std::string where = "redis server " + url_.shown();
  context_ = redisConnectWithTimeout(url_.host.c_str(), url_.port, toTimeval(timeoutMs_));
  if (!context_)
    return makeError(ErrorCode::CacheError, "cannot connect to " + where + ": out of memory");
  if (context_->err) {
    const std::string why = context_->errstr;
    close();
    return makeError(ErrorCode::CacheError, "cannot connect to " + where + ": " + why);
  }
  if (redisSetTimeout(context_, toTimeval(timeoutMs_)) != REDIS_OK) {
    close();
    return makeError(ErrorCode::CacheError, "cannot set the request timeout of " + where);
  }
  if (!url_.password.empty()) {
    std::vector<std::string> auth = {"AUTH"};
    if (!url_.user.empty())
      auth.push_back(url_.user);
    auth.push_back(url_.password);
    auto r = commandOk(auth);
    if (!r) {
      close();
      return makeError(ErrorCode::CacheError,
                       "AUTH at " + where + " failed: " + consumeToString(r.takeError()));
    }
  }
  if (url_.db != 0) {
    auto r = commandOk({"SELECT", std::to_string(url_.db)});
    if (!r) {
      close();
      return makeError(ErrorCode::CacheError, "SELECT " + std::to_string(url_.db) + " at " + where +
                                                  " failed: " + consumeToString(r.takeError()));
    }
  }
  return llvm::Error::success();
}

llvm::Expected<Reply> Client::command(const std::vector<std::string>& args) {
  if (!context_)
    return makeError(ErrorCode::CacheError, "not connected to redis server " + url_.shown());
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  for (const std::string& a : args) {
    argv.push_back(a.data());
    lengths.push_back(a.size());
  }
  auto* reply = static_cast<redisReply*>(
      redisCommandArgv(context_, static_cast<int>(argv.size()), argv.data(), lengths.data()));
  if (!reply) {
    std::string why = context_->errstr;
    if (context_->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
      why = "no answer within " + std::to_string(timeoutMs_) + " ms (BQJIT_REMOTE_TIMEOUT_MS)";
    close();
    return makeError(ErrorCode::CacheError, "redis server " + url_.shown() + ": " +
                                                (args.empty() ? "" : args[0]) + " failed: " + why);
  }
  Reply out = convert(reply);
  freeReplyObject(reply);
  return out;
}

llvm::Expected<Reply> Client::commandOk(const std::vector<std::string>& args) {
  auto r = command(args);
  if (!r)
    return r.takeError();
  if (r->kind == Reply::Kind::Error)
    return makeError(ErrorCode::CacheError, "redis server " + url_.shown() + " refused " +
                                                (args.empty() ? "" : args[0]) + ": " + r->text);
  return r;
}

} // namespace bqjit::redis
