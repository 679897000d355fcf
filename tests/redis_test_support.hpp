// A real redis-server for the tests of the remote tier: started on a free
// loopback port in a temporary directory, with no persistence, and stopped
// (SIGKILL) with the test. Where the binary is missing the tests skip with
// the reason on a developer's machine, and fail in CI (CI=true) or under
// scripts/test.sh (BQJIT_REQUIRE_REDIS=1), whose install step installs it.
#pragma once

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "redis/redis_client.hpp"

namespace bqjit::test {

inline std::string redisServerBinary() {
  for (const char* path : {"/usr/bin/redis-server", "/usr/local/bin/redis-server"})
    if (::access(path, X_OK) == 0)
      return path;
  return "";
}

inline bool redisRequired() {
  const char* ci = std::getenv("CI");
  const char* required = std::getenv("BQJIT_REQUIRE_REDIS");
  return (ci && std::string(ci) == "true") || (required && std::string(required) == "1");
}

/// In a test body: skips (developer machine) or fails (CI) without redis-server.
#define BQJIT_REQUIRE_REDIS_SERVER()                                                               \
  do {                                                                                             \
    if (::bqjit::test::redisServerBinary().empty()) {                                              \
      if (::bqjit::test::redisRequired())                                                          \
        FAIL() << "redis-server is missing (scripts/install_deps.sh installs it)";                 \
      GTEST_SKIP() << "redis-server is not installed (apt-get install redis-server)";              \
    }                                                                                              \
  } while (0)

inline int freeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

class RedisServer {
public:
  ~RedisServer() { kill(); }

  /// Starts a server in `dir` (its log there too); false with a test failure.
  bool start(const std::string& dir, const std::vector<std::string>& extra = {}) {
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = freeLoopbackPort();
      std::vector<std::string> args = {redisServerBinary(),
                                       "--port",
                                       std::to_string(port_),
                                       "--bind",
                                       "127.0.0.1",
                                       "--dir",
                                       dir,
                                       "--logfile",
                                       dir + "/redis.log",
                                       "--save",
                                       "",
                                       "--appendonly",
                                       "no",
                                       "--daemonize",
                                       "no",
                                       "--enable-debug-command",
                                       "local"};
      args.insert(args.end(), extra.begin(), extra.end());
      pid_ = ::fork();
      if (pid_ == 0) {
        std::vector<char*> argv;
        for (auto& a : args)
          argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        ::execv(argv[0], argv.data());
        ::_exit(127);
      }
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
          pid_ = -1;
          break; // exited: the port was taken, say
        }
        if (auto c = client(1000)) {
          if (auto r = (*c)->command({"PING"}))
            return true;
          else
            llvm::consumeError(r.takeError());
        } else {
          llvm::consumeError(c.takeError());
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      kill();
    }
    ADD_FAILURE() << "redis-server did not start (see " << dir << "/redis.log)";
    return false;
  }

  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/0"; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }

  /// A client for the test's own commands (DEBUG SLEEP, CONFIG SET, SET).
  llvm::Expected<std::unique_ptr<redis::Client>> client(int timeoutMs = 5000) const {
    RedisUrl u;
    u.host = "127.0.0.1";
    u.port = port_;
    return redis::Client::connect(u, timeoutMs);
  }
  /// Runs one command; its reply (failing the test on a transport error).
  redis::Reply run(const std::vector<std::string>& args) const {
    auto c = client();
    if (!c) {
      ADD_FAILURE() << consumeToString(c.takeError());
      return {};
    }
    auto r = (*c)->command(args);
    if (!r) {
      ADD_FAILURE() << consumeToString(r.takeError());
      return {};
    }
    return *r;
  }

  void signal(int sig) const {
    if (pid_ > 0)
      ::kill(pid_, sig);
  }
  void kill() {
    if (pid_ <= 0)
      return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

private:
  int port_ = 0;
  pid_t pid_ = -1;
};

} // namespace bqjit::test
