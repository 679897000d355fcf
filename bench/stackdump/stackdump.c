// A diagnostic for device runs, where there is no debugger: preloaded
// (LD_PRELOAD=libbqjit_stackdump.so), it starts a watchdog thread that, after
// STACKDUMP_AFTER_S seconds, writes every thread's user-space backtrace to
// stderr, STACKDUMP_ROUNDS times (default 3) a second apart, so that a thread
// spinning in a loop shows where. Frames are printed as module(symbol+offset)
// [address]; /proc/self/maps follows the first round, for the modules' bases.
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

static volatile sig_atomic_t dumped;

static void writeAll(const char* s, size_t n) {
  while (n > 0) {
    ssize_t w = write(2, s, n);
    if (w <= 0)
      return;
    s += w;
    n -= (size_t)w;
  }
}

static void dumpSelf(int sig, siginfo_t* info, void* context) {
  (void)sig;
  (void)info;
  char head[128];
  char name[32] = "?";
  int fd = open("/proc/thread-self/comm", O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, name, sizeof name - 1);
    if (n > 0)
      name[n - 1] = 0;
    close(fd);
  }
  int len = snprintf(head, sizeof head, "--- thread %ld (%s)\n", (long)syscall(SYS_gettid), name);
  writeAll(head, (size_t)len);
  // The interrupted instruction itself, which the unwinder may skip.
  const void* pc = (const void*)((ucontext_t*)context)->uc_mcontext.gregs[REG_RIP];
  Dl_info where;
  if (dladdr(pc, &where) && where.dli_fname)
    len = snprintf(head, sizeof head, "pc %p = %s(%s+%#lx) base+%#lx\n", pc, where.dli_fname,
                   where.dli_sname ? where.dli_sname : "",
                   (unsigned long)((const char*)pc - (const char*)(where.dli_saddr ? where.dli_saddr : where.dli_fbase)),
                   (unsigned long)((const char*)pc - (const char*)where.dli_fbase));
  else
    len = snprintf(head, sizeof head, "pc %p (no module)\n", pc);
  writeAll(head, (size_t)len);
  void* frames[64];
  int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, 2);
  dumped = 1;
}

static void copyMaps(void) {
  char buf[4096];
  int fd = open("/proc/self/maps", O_RDONLY);
  if (fd < 0)
    return;
  writeAll("--- maps\n", 9);
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0)
    writeAll(buf, (size_t)n);
  close(fd);
}

static void* watchdog(void* arg) {
  (void)arg;
  const char* after = getenv("STACKDUMP_AFTER_S");
  const char* rounds = getenv("STACKDUMP_ROUNDS");
  sleep((unsigned)atoi(after));
  const int count = rounds ? atoi(rounds) : 3;
  const long self = (long)syscall(SYS_gettid);
  for (int round = 0; round < count; ++round) {
    char head[64];
    int len = snprintf(head, sizeof head, "=== stack dump round %d\n", round);
    writeAll(head, (size_t)len);
    DIR* dir = opendir("/proc/self/task");
    if (!dir)
      return NULL;
    struct dirent* e;
    while ((e = readdir(dir)) != NULL) {
      long tid = atol(e->d_name);
      if (tid <= 0 || tid == self)
        continue;
      dumped = 0;
      syscall(SYS_tgkill, (long)getpid(), tid, SIGUSR2);
      for (int i = 0; i < 200 && !dumped; ++i) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
      }
    }
    closedir(dir);
    if (round == 0)
      copyMaps();
    sleep(1);
  }
  return NULL;
}

__attribute__((constructor)) static void startWatchdog(void) {
  if (!getenv("STACKDUMP_AFTER_S"))
    return;
  void* warm[2];
  backtrace(warm, 2); // loads the unwinder now, not in a signal handler
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = dumpSelf;
  sa.sa_flags = SA_RESTART | SA_SIGINFO;
  sigaction(SIGUSR2, &sa, NULL);
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_create(&t, &attr, watchdog, NULL);
  pthread_attr_destroy(&attr);
}
