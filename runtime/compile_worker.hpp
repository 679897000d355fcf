// One background thread for compiles, safe at process exit.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace bqjit {

/// Runs jobs (NVRTC compiles and module loads) in order on one thread,
/// started with the first job. stop(), the destructor and the process's exit
/// all drop the queued jobs and wait for the running one.
///
/// Why at exit: a host that exits while a compile runs on this thread would
/// otherwise crash. NVRTC tears itself down among the C library's exit
/// handlers, which run before the destructors of objects made earlier (a
/// service held in a static, say), so waiting in the owner's destructor is
/// too late. So an exit handler stops every live worker, registered after
/// NVRTC's teardown: at the first job (after NVRTC's first compile) and again
/// after any later compile, since NVRTC registers more teardown in the first
/// compile for each further architecture. Handlers run in the reverse order
/// of registration, so ours runs first. NVRTC may also register teardown in
/// the middle of a job of many compiles (it did during a tuning on an H200);
/// a job calls compiled() after each compile to register again, and where
/// the main thread exits, a thread-local destructor of the main thread (those
/// run before any exit handler) stops the workers before everything else.
/// (A main thread that ends by pthread_exit() while the process goes on
/// stops the workers too: jobs queued later are dropped, as after stop().)
///
/// After fork(): the child has none of the parent's threads. Its workers
/// forget the parent's thread (never joined: that would wait forever) and
/// start one of their own at their next job or drain(); the parent's queued
/// jobs, copied with the process, run there too. The fork waits for every worker's lock
/// (and for a stop() joining its thread), so that no lock is copied held.
class CompileWorker {
public:
  /// `onThreadStart` runs on the worker thread before its first job. `name`
  /// (at most 15 characters) names the thread for debuggers, top and /proc.
  explicit CompileWorker(std::function<void()> onThreadStart = {},
                         const char* name = "bqjit-worker");
  CompileWorker(const CompileWorker&) = delete;
  CompileWorker& operator=(const CompileWorker&) = delete;
  /// stop(), then forgets this worker for the exit handler.
  ~CompileWorker();

  /// Queues `job`; false (the job dropped) once stopped, or where the system
  /// refuses the thread (a process or thread limit). The first job starts
  /// the thread; in a process where NVRTC has not compiled yet, the
  /// first call compiles an empty program first, on the caller's thread (see
  /// the class comment).
  bool enqueue(std::function<void()> job);
  /// Starts the thread now (enqueue() would at its first job), so that a
  /// later first enqueue() from a thread that must not wait does not. Where
  /// the system refuses the thread, nothing starts (enqueue() tries again).
  void start();
  /// Drops the queued jobs, waits for the running one and joins the thread;
  /// later jobs are dropped. Idempotent; thread-safe.
  void stop();
  /// Waits until no job is queued or running (for tests and tools). Starts
  /// the thread where jobs wait without one (a forked child's copied queue),
  /// and drops them where the system refuses it.
  void drain();
  /// Called by a job after each NVRTC compile it makes but its last: keeps
  /// the exit handler ahead of teardown NVRTC registered in that compile.
  static void compiled();
  /// Whether stop() was called: a long job polls it between its steps, so
  /// that the process's exit does not wait for the whole job.
  bool stopRequested() const { return stopRequested_.load(std::memory_order_acquire); }

private:
  void run();
  /// Starts the thread unless it runs; false where the system refuses it.
  /// Called with mutex_ held.
  bool startLocked();

  std::function<void()> onThreadStart_;
  const char* name_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::function<void()>> jobs_;
  bool running_ = false;  ///< a job is running
  bool stopping_ = false; ///< stop() was called
  std::atomic<bool> stopRequested_{false};
  std::thread thread_;
  std::mutex joinMutex_; ///< one joiner at a time (the exit handler and the destructor)

  friend struct CompileWorkerForkHooks;
};

} // namespace bqjit
