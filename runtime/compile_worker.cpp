#include "runtime/compile_worker.hpp"

#include <cstdlib>
#include <new>
#include <optional>
#include <set>
#include <system_error>

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "jit/nvrtc_program.hpp"

namespace bqjit {

namespace {

// The workers alive in the process, for the exit handler, and how far the
// handler's registration is. Never destroyed: the handler runs during exit,
// after static objects made later are gone.
struct LiveWorkers {
  std::mutex mutex;
  std::set<CompileWorker*> workers;
  std::mutex registering;
  std::optional<uint64_t> registeredAfter; ///< NVRTC compiles returned at the last registration
};

LiveWorkers& liveWorkers() {
  static LiveWorkers* live = new LiveWorkers;
  return *live;
}

void stopLiveWorkers() {
  LiveWorkers& live = liveWorkers();
  std::lock_guard<std::mutex> lock(live.mutex);
  for (CompileWorker* w : live.workers)
    w->stop();
}

// exit() runs the exiting thread's thread-local destructors before any exit
// handler. One on the main thread stops the workers first when the main
// thread exits (returning from main, or exit() there), however late NVRTC
// registered its teardown: in the middle of a job of many compiles (a
// tuning), which no registration below can follow.
struct MainThreadExitGuard {
  ~MainThreadExitGuard() { stopLiveWorkers(); }
};

// Arms the guard where the calling thread is the process's main thread;
// cheap after a thread's first call.
void guardMainThreadExit() {
  thread_local bool checked = false;
  if (checked)
    return;
  checked = true;
  if (::syscall(SYS_gettid) != ::getpid())
    return;
  thread_local MainThreadExitGuard guard;
  (void)guard;
}

// Registers stopLiveWorkers with the exit handlers after NVRTC's own
// teardown (see CompileWorker and nvrtcCompilesReturned): first after
// NVRTC's first compile (made here where none has returned yet), then again
// whenever compiles have returned since, which may have registered more.
// stopLiveWorkers runs once per registration; the runs after the first find
// nothing to stop. Where NVRTC cannot even compile an empty program, the
// jobs' own compiles fail too and none is in flight at exit; the handler is
// registered all the same.
void registerExitHandler() {
  guardMainThreadExit();
  LiveWorkers& live = liveWorkers();
  std::lock_guard<std::mutex> lock(live.registering);
  if (!live.registeredAfter)
    llvm::consumeError(ensureNvrtcExitTeardownRegistered());
  const uint64_t compiles = nvrtcCompilesReturned();
  if (live.registeredAfter == compiles)
    return;
  std::atexit(stopLiveWorkers);
  live.registeredAfter = compiles;
}

} // namespace

/// fork()'s handlers, with access to the workers' locks and threads.
struct CompileWorkerForkHooks {
  // Every joiner's lock first, then every worker's: a job that enqueues to
  // another worker while its own is being joined never waits for a lock
  // held here.
  static void prepare() {
    LiveWorkers& live = liveWorkers();
    live.mutex.lock();
    for (CompileWorker* w : live.workers)
      w->joinMutex_.lock();
    for (CompileWorker* w : live.workers)
      w->mutex_.lock();
  }
  static void parent() {
    LiveWorkers& live = liveWorkers();
    for (CompileWorker* w : live.workers) {
      w->mutex_.unlock();
      w->joinMutex_.unlock();
    }
    live.mutex.unlock();
  }
  static void child() {
    LiveWorkers& live = liveWorkers();
    for (CompileWorker* w : live.workers) {
      // The parent's thread is not in this process: never joined, and not
      // destroyed either (a joinable std::thread's destructor terminates),
      // but replaced in place by a thread object that is not joinable. The
      // condition variable counts the parent's waiting thread, which a
      // notify here would wait for: a fresh one in its place too. Neither
      // old object holds memory, and nothing here depends on their
      // destructors, so reusing their storage is enough.
      new (&w->thread_) std::thread();
      new (&w->changed_) std::condition_variable();
      w->running_ = false;
      w->mutex_.unlock();
      w->joinMutex_.unlock();
    }
    live.mutex.unlock();
  }
};

CompileWorker::CompileWorker(std::function<void()> onThreadStart, const char* name)
    : onThreadStart_(std::move(onThreadStart)), name_(name) {
  // Once a process, with the first worker.
  static const bool forkHooks =
      ::pthread_atfork(&CompileWorkerForkHooks::prepare, &CompileWorkerForkHooks::parent,
                       &CompileWorkerForkHooks::child) == 0;
  (void)forkHooks;
  guardMainThreadExit();
  LiveWorkers& live = liveWorkers();
  std::lock_guard<std::mutex> lock(live.mutex);
  live.workers.insert(this);
}

void CompileWorker::compiled() {
  registerExitHandler();
}

CompileWorker::~CompileWorker() {
  {
    // Waits for an exit handler that is stopping this worker.
    LiveWorkers& live = liveWorkers();
    std::lock_guard<std::mutex> lock(live.mutex);
    live.workers.erase(this);
  }
  stop();
}

bool CompileWorker::startLocked() {
  if (thread_.joinable())
    return true;
  try {
    thread_ = std::thread([this] { run(); });
    return true;
  } catch (const std::system_error&) {
    // The system refused a thread (a process or thread limit): no
    // background work, rather than an exception out of a host's call.
    return false;
  }
}

bool CompileWorker::enqueue(std::function<void()> job) {
  registerExitHandler();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || !startLocked())
      return false;
    jobs_.push_back(std::move(job));
  }
  changed_.notify_all();
  return true;
}

void CompileWorker::start() {
  registerExitHandler();
  std::lock_guard<std::mutex> lock(mutex_);
  if (!stopping_)
    startLocked();
}

void CompileWorker::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    stopRequested_.store(true, std::memory_order_release);
    jobs_.clear();
  }
  changed_.notify_all();
  std::lock_guard<std::mutex> join(joinMutex_);
  // A job that stops its own worker cannot join its own thread; the thread
  // ends after that job all the same.
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id())
    thread_.join();
}

void CompileWorker::drain() {
  std::deque<std::function<void()>> dropped; // destroyed after the lock is released
  std::unique_lock<std::mutex> lock(mutex_);
  // Jobs a forked child copied from its parent have no thread until one
  // starts here; where none can, nothing would ever run them.
  if (!stopping_ && !jobs_.empty() && !startLocked())
    dropped.swap(jobs_);
  changed_.wait(lock, [&] { return stopping_ || (jobs_.empty() && !running_); });
}

void CompileWorker::run() {
  ::pthread_setname_np(::pthread_self(), name_);
  if (onThreadStart_)
    onThreadStart_();
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
    if (stopping_)
      break;
    std::function<void()> job = std::move(jobs_.front());
    jobs_.pop_front();
    running_ = true;
    lock.unlock();
    job();
    registerExitHandler();
    lock.lock();
    running_ = false;
    changed_.notify_all();
  }
}

} // namespace bqjit
