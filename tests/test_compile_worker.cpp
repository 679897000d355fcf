// CompileWorker: jobs in order on one thread, stop semantics, and a process
// that exits while a compile runs on the worker (no GPU needed: NVRTC only).
#include "runtime/compile_worker.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "jit/nvrtc_program.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using namespace std::chrono_literals;

/// A kernel that takes NVRTC about 50 ms, long enough that an exit a few
/// milliseconds into the compile lands inside it.
const char* const kSlowSource = R"(
extern "C" __global__ void busy(float* p) {
  for (int i = 0; i < 100; ++i)
    p[i] = __expf(p[i]) * p[i];
}
)";

/// Compiles kSlowSource for `arch`; true when it compiled.
bool compileSlowSource(const std::string& arch = "sm_90") {
  auto program = NvrtcProgram::create(kSlowSource, "busy.cu", {}, {});
  if (!program) {
    llvm::consumeError(program.takeError());
    return false;
  }
  if (auto err = program->compile({"-arch=" + arch})) {
    llvm::consumeError(std::move(err));
    return false;
  }
  return true;
}

/// A one-shot flag another thread can wait for.
class Latch {
public:
  void set() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      set_ = true;
    }
    changed_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return set_; });
  }

private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool set_ = false;
};

// The thread carries the worker's name (what top, a debugger and
// /proc/<pid>/task/*/comm show of a host's threads).
TEST(CompileWorker, ItsThreadIsNamed) {
  for (const char* name : {"bqjit-worker", "bqjit-tune"}) {
    CompileWorker worker =
        name == std::string("bqjit-worker") ? CompileWorker() : CompileWorker({}, name);
    std::string seen;
    ASSERT_TRUE(worker.enqueue([&] {
      char buf[32] = {};
      ::pthread_getname_np(::pthread_self(), buf, sizeof buf);
      seen = buf;
    }));
    worker.drain();
    EXPECT_EQ(seen, name);
  }
}

TEST(CompileWorker, RunsJobsInOrderOnOneThreadOtherThanTheCallers) {
  CompileWorker worker;
  std::mutex mutex;
  std::vector<int> order;
  std::vector<std::thread::id> threads;
  for (int i = 0; i < 6; ++i)
    ASSERT_TRUE(worker.enqueue([&, i] {
      std::lock_guard<std::mutex> lock(mutex);
      order.push_back(i);
      threads.push_back(std::this_thread::get_id());
    }));
  worker.drain();
  ASSERT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  for (const auto& id : threads) {
    EXPECT_EQ(id, threads.front());
    EXPECT_NE(id, std::this_thread::get_id());
  }
}

TEST(CompileWorker, RunsItsThreadStartFirstOnTheWorkerThread) {
  std::thread::id startThread;
  std::atomic<int> startsBeforeJob{-1};
  std::atomic<int> starts{0};
  CompileWorker worker([&] {
    startThread = std::this_thread::get_id();
    ++starts;
  });
  std::thread::id jobThread;
  ASSERT_TRUE(worker.enqueue([&] {
    jobThread = std::this_thread::get_id();
    startsBeforeJob = starts.load();
  }));
  ASSERT_TRUE(worker.enqueue([] {}));
  worker.drain();
  EXPECT_EQ(startsBeforeJob.load(), 1);
  EXPECT_EQ(starts.load(), 1);
  EXPECT_EQ(startThread, jobThread);
}

// start() runs the thread (and its start function) before any job, once;
// jobs then run on it; a stopped worker does not start again.
TEST(CompileWorker, StartRunsTheThreadBeforeAnyJob) {
  Latch started;
  std::thread::id startThread;
  std::atomic<int> starts{0};
  CompileWorker worker([&] {
    startThread = std::this_thread::get_id();
    ++starts;
    started.set();
  });
  worker.start();
  started.wait(); // without start() no thread would run, and this would hang
  worker.start(); // once
  std::thread::id jobThread;
  ASSERT_TRUE(worker.enqueue([&] { jobThread = std::this_thread::get_id(); }));
  worker.drain();
  EXPECT_EQ(starts.load(), 1);
  EXPECT_EQ(jobThread, startThread);
  EXPECT_NE(jobThread, std::this_thread::get_id());
  worker.stop();
  worker.start();
  EXPECT_FALSE(worker.enqueue([] {}));
  EXPECT_EQ(starts.load(), 1);
}

TEST(CompileWorker, StopRequestedIsSeenByTheRunningJob) {
  CompileWorker worker;
  Latch started;
  std::atomic<bool> sawStop{false};
  ASSERT_TRUE(worker.enqueue([&] {
    started.set();
    // A long job polling between its steps, as the autotuner's does.
    for (int i = 0; i < 2000 && !worker.stopRequested(); ++i)
      std::this_thread::sleep_for(1ms);
    sawStop = worker.stopRequested();
  }));
  started.wait();
  EXPECT_FALSE(worker.stopRequested());
  const auto before = std::chrono::steady_clock::now();
  worker.stop();
  EXPECT_TRUE(sawStop.load());
  EXPECT_LT(std::chrono::steady_clock::now() - before, 1s) << "stop() waited for the whole job";
}

TEST(CompileWorker, StopWaitsForTheRunningJobAndDropsTheQueuedOnes) {
  CompileWorker worker;
  Latch started;
  std::atomic<bool> firstFinished{false}, secondRan{false}, lateRan{false};
  ASSERT_TRUE(worker.enqueue([&] {
    started.set();
    std::this_thread::sleep_for(50ms);
    firstFinished = true;
  }));
  ASSERT_TRUE(worker.enqueue([&] { secondRan = true; }));
  started.wait();
  worker.stop();
  EXPECT_TRUE(firstFinished.load()) << "stop() returned while a job still ran";
  EXPECT_FALSE(secondRan.load()) << "a queued job ran after stop()";
  EXPECT_FALSE(worker.enqueue([&] { lateRan = true; })) << "a job was accepted after stop()";
  worker.stop(); // idempotent
  worker.drain();
  EXPECT_FALSE(lateRan.load());
}

TEST(CompileWorker, DestroyingItWaitsForTheRunningJob) {
  std::atomic<bool> finished{false};
  Latch started;
  {
    CompileWorker worker;
    ASSERT_TRUE(worker.enqueue([&] {
      started.set();
      std::this_thread::sleep_for(30ms);
      finished = true;
    }));
    started.wait();
  }
  EXPECT_TRUE(finished.load());
}

// A host under a process limit (a container's pids.max, RLIMIT_NPROC): the
// worker's thread is refused, and enqueue() says so (the caller's job is
// dropped: a service's stand-ins settle, a tuning is skipped) instead of
// throwing std::system_error out of a host's call. In a child that drops
// root first (root's limits do not bind) and may then start no thread.
TEST(CompileWorker, AThreadTheSystemRefusesDropsTheJobInsteadOfThrowing) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0))
      ::_exit(3);
    const rlimit none{1, 1};
    if (::setrlimit(RLIMIT_NPROC, &none) != 0)
      ::_exit(4);
    pthread_t probe;
    if (::pthread_create(
            &probe, nullptr, [](void*) -> void* { return nullptr; }, nullptr) == 0)
      ::_exit(5); // the limit does not bind here
    int code = 0;
    try {
      CompileWorker worker;
      worker.start();
      std::atomic<bool> ran{false};
      if (worker.enqueue([&] { ran = true; }))
        code = 1;
      worker.drain();
      worker.stop();
      if (ran)
        code = 2;
    } catch (...) {
      code = 6;
    }
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  if (WEXITSTATUS(status) == 5 || WEXITSTATUS(status) == 3)
    GTEST_SKIP() << "a process limit does not refuse threads on this machine";
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: enqueue() said queued; 2: the job ran; 6: it threw";
}

// Forks; the child runs `child` (which exits), and the parent expects it to
// have exited with status 0 within 10 s.
void expectForkedChildExitsCleanly(const std::function<void()>& child, const char* codes) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    child();
    ::_exit(9);
  }
  int status = 0;
  pid_t done = 0;
  for (int i = 0; i < 200 && done == 0; ++i) {
    done = ::waitpid(pid, &status, WNOHANG);
    if (done == 0)
      std::this_thread::sleep_for(50ms);
  }
  if (done == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL() << "the forked child did not exit within 10 s";
  }
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << codes;
}

// A host that forks after the worker started (a server's helper process, a
// data loader) and whose child goes on and exits: the child has no worker
// thread (fork copies only the caller's), so neither its exit (the exit
// handler, a static owner's destructor) nor a drain may wait for the
// parent's thread. The child's own jobs, and the jobs queued in the parent
// at the fork (copied with the process), run on a thread of the child's.
TEST(CompileWorker, AForkedChildRunsItsJobsAndExits) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "ThreadSanitizer kills a child that starts a thread after a multithreaded fork";
#endif
  static std::unique_ptr<CompileWorker> worker; // as a service held in a static
  worker = std::make_unique<CompileWorker>();
  Latch ran;
  ASSERT_TRUE(worker->enqueue([&] { ran.set(); }));
  ran.wait();
  worker->drain();
  expectForkedChildExitsCleanly(
      [&] {
        std::atomic<bool> childRan{false};
        if (!worker->enqueue([&] { childRan = true; }))
          ::_exit(1);
        worker->drain();
        if (!childRan)
          ::_exit(2);
        std::exit(0); // the exit handlers and static destructors run
      },
      "1: enqueue() refused; 2: the job did not run");

  // At the fork, one job runs in the parent and one waits behind it.
  Latch running, release;
  static std::atomic<bool> queuedRan{false};
  ASSERT_TRUE(worker->enqueue([&] {
    running.set();
    release.wait();
  }));
  ASSERT_TRUE(worker->enqueue([] { queuedRan = true; }));
  running.wait();
  expectForkedChildExitsCleanly(
      [] {
        worker->drain();
        std::exit(queuedRan ? 0 : 3);
      },
      "3: the queued job did not run in the child");
  EXPECT_FALSE(queuedRan); // not in the parent yet
  release.set();
  worker->drain();
  EXPECT_TRUE(queuedRan);
  worker->stop();
}

// A host that exits while the worker compiles: NVRTC's teardown among the
// exit handlers would crash the compile in flight (SIGSEGV) unless the
// worker is stopped first. The worker lives in a static made before any
// compile, as a service held in a static is; its owner's destructor alone
// would run too late. Each mode is the child below, this binary run again:
// "compiled-before" compiles on the main thread first (a new spec's first
// variant); "first-in-background" leaves the process's first compile to the
// worker (a cache that holds a spec's first variant but not the others);
// "new-arch-in-background" compiles for sm_90 first and then, on the worker,
// for sm_100a: NVRTC's first compile for another architecture registers more
// teardown (17 exit handlers with CUDA 13.0's NVRTC), after the worker's;
// "teardown-within-a-job": a job of several compiles (as a tuning is)
// registers an exit handler between two of them, standing for the teardown
// NVRTC registered in the middle of a tuning on the H200 (three handlers, in
// whichever compile first took a path that needs them), and the exit lands
// in a later compile of that job. No job boundary comes between, so the
// worker's exit handler, registered at job boundaries, would run after that
// teardown; the compile that outlives it exits the child with status 3 (on
// the H200, NVRTC looped or crashed there). "teardown-within-a-job-elsewhere"
// exits from another thread than the main one (no thread-local guard there):
// the job's CompileWorker::compiled() after the compile that registered the
// teardown keeps the exit handler first.
TEST(CompileWorker, ExitingWhileACompileRunsIsClean) {
  if (::getenv("BQJIT_TEST_EXIT_CHILD"))
    GTEST_SKIP() << "the child's own run";
  for (const char* mode : {"compiled-before", "first-in-background", "new-arch-in-background",
                           "teardown-within-a-job", "teardown-within-a-job-elsewhere"})
    for (int attempt = 0; attempt < 3; ++attempt) {
      const int status = test::runThisBinary(std::string("BQJIT_TEST_EXIT_CHILD=") + mode,
                                             "CompileWorkerExitChild.*");
      ASSERT_TRUE(WIFEXITED(status)) << mode << ": the child died of signal " << WTERMSIG(status)
                                     << " (attempt " << attempt << ")";
      EXPECT_EQ(WEXITSTATUS(status), 0) << mode << ", attempt " << attempt;
    }
}

// The child: exits (status 0) a few milliseconds into the worker's second compile.
TEST(CompileWorkerExitChild, ExitsWhileTheWorkerCompiles) {
  const char* mode = ::getenv("BQJIT_TEST_EXIT_CHILD");
  if (!mode)
    GTEST_SKIP() << "run by CompileWorker.ExitingWhileACompileRunsIsClean";
  static std::unique_ptr<CompileWorker> worker;
  worker = std::make_unique<CompileWorker>();
  if (std::string(mode) != "first-in-background")
    ASSERT_TRUE(compileSlowSource());
  static std::string arch = std::string(mode) == "new-arch-in-background" ? "sm_100a" : "sm_90";
  // The exit lands in the second job's compile: NVRTC registers its
  // teardown late in a process's first compile, so an exit during the first
  // one would find nothing of NVRTC's to run before the worker's handler.
  static Latch secondCompiling;
  const bool elsewhere = std::string(mode) == "teardown-within-a-job-elsewhere";
  if (elsewhere || std::string(mode) == "teardown-within-a-job") {
    static std::atomic<bool> tornDown{false};
    ASSERT_TRUE(worker->enqueue([elsewhere] {
      compileSlowSource(arch);
      std::atexit([] { tornDown = true; });
      if (elsewhere)
        CompileWorker::compiled();
      secondCompiling.set();
      for (int i = 0; i < 4 && !worker->stopRequested(); ++i) {
        compileSlowSource(arch);
        if (tornDown)
          ::_exit(3);
      }
    }));
    secondCompiling.wait();
    std::this_thread::sleep_for(5ms);
    if (elsewhere) {
      std::thread([] { std::exit(0); }).join();
      ::_exit(4); // not reached: exit() ends the process
    }
    std::exit(0);
  }
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(worker->enqueue([i] {
      if (i == 1)
        secondCompiling.set();
      compileSlowSource(arch);
    }));
  secondCompiling.wait();
  std::this_thread::sleep_for(5ms);
  std::exit(0);
}

} // namespace
} // namespace bqjit
