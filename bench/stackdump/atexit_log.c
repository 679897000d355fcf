// A diagnostic for device runs: preloaded (LD_PRELOAD=libbqjit_atexit_log.so),
// it logs to stderr every exit handler registered through __cxa_atexit (the
// path of atexit() and of static destructors) with its module and thread,
// and each handler as it runs at exit, so that the order in which the
// libraries' teardowns and bqjit's own handler run can be read off.
// Thread-local destructors (__cxa_thread_atexit_impl), which exit() runs on
// the exiting thread before any exit handler, are logged the same way.
// ATEXIT_LOG_QUIET_RUNS=1 logs only the runs of handlers not from libnvrtc.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct Entry {
  void (*fn)(void*);
  void* arg;
  int n;
  char module[160];
};

static double msSinceStart(void) {
  static struct timespec t0;
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  if (t0.tv_sec == 0 && t0.tv_nsec == 0)
    t0 = t;
  return (double)(t.tv_sec - t0.tv_sec) * 1e3 + (double)(t.tv_nsec - t0.tv_nsec) / 1e6;
}

// "module:symbol+offset" of a code address (the offset from the module's
// base where no symbol is known).
static void describe(const void* address, char* out, size_t size) {
  Dl_info info;
  if (!dladdr(address, &info) || !info.dli_fname) {
    snprintf(out, size, "%p", address);
    return;
  }
  const char* mod = strrchr(info.dli_fname, '/') ? strrchr(info.dli_fname, '/') + 1 : info.dli_fname;
  if (info.dli_sname && info.dli_saddr)
    snprintf(out, size, "%s:%.40s+%#lx", mod, info.dli_sname,
             (unsigned long)((const char*)address - (const char*)info.dli_saddr));
  else
    snprintf(out, size, "%s+%#lx", mod, (unsigned long)((const char*)address - (const char*)info.dli_fbase));
}

static int count;

static void line(const char* what, const struct Entry* e) {
  char buf[256];
  int len = snprintf(buf, sizeof buf, "[atexit %s #%d %s tid=%ld t=%.1fms]\n", what, e->n, e->module,
                     (long)syscall(SYS_gettid), msSinceStart());
  write(2, buf, (size_t)len);
}

static void trampoline(void* p) {
  struct Entry* e = p;
  const char* quiet = getenv("ATEXIT_LOG_QUIET_RUNS");
  if (!quiet || !strstr(e->module, "nvrtc"))
    line("run", e);
  e->fn(e->arg);
}

static void tlsTrampoline(void* p) {
  struct Entry* e = p;
  line("run", e);
  e->fn(e->arg);
}

typedef int (*Register)(void (*)(void*), void*, void*);

// Logs one registration (`kind` "" or "tls ") and passes it on to `real`
// with a trampoline that logs the run.
static int registerLogged(Register real, void (*trampolineFn)(void*), const char* kind,
                          void (*fn)(void*), void* arg, void* dso, const void* caller) {
  struct Entry* e = malloc(sizeof *e);
  if (!e)
    return real(fn, arg, dso);
  e->fn = fn;
  e->arg = arg;
  e->n = __atomic_add_fetch(&count, 1, __ATOMIC_SEQ_CST);
  char fnText[72], callerText[72];
  describe((void*)fn, fnText, sizeof fnText);
  describe(caller, callerText, sizeof callerText);
  snprintf(e->module, sizeof e->module, "%s%s from %s", kind, fnText, callerText);
  line("add", e);
  return real(trampolineFn, e, dso);
}

int __cxa_atexit(void (*fn)(void*), void* arg, void* dso) {
  static Register real;
  if (!real)
    real = (Register)dlsym(RTLD_NEXT, "__cxa_atexit");
  return registerLogged(real, trampoline, "", fn, arg, dso, __builtin_return_address(0));
}

int __cxa_thread_atexit_impl(void (*fn)(void*), void* obj, void* dso) {
  static Register real;
  if (!real)
    real = (Register)dlsym(RTLD_NEXT, "__cxa_thread_atexit_impl");
  return registerLogged(real, tlsTrampoline, "tls ", fn, obj, dso, __builtin_return_address(0));
}

// exit() itself, to time it against the registrations.
void exit(int status) {
  static void (*real)(int);
  if (!real)
    real = (void (*)(int))dlsym(RTLD_NEXT, "exit");
  char buf[96];
  int len = snprintf(buf, sizeof buf, "[atexit exit(%d) called tid=%ld t=%.1fms]\n", status,
                     (long)syscall(SYS_gettid), msSinceStart());
  write(2, buf, (size_t)len);
  real(status);
  __builtin_unreachable();
}

__attribute__((constructor)) static void startClock(void) {
  msSinceStart();
}
