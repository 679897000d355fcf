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
#include <unistd.h>

struct Entry {
  void (*fn)(void*);
  void* arg;
  int n;
  char module[64];
};

static int count;

static void line(const char* what, const struct Entry* e) {
  char buf[256];
  int len = snprintf(buf, sizeof buf, "[atexit %s #%d %s tid=%ld]\n", what, e->n, e->module,
                     (long)syscall(SYS_gettid));
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

int __cxa_atexit(void (*fn)(void*), void* arg, void* dso) {
  static int (*real)(void (*)(void*), void*, void*);
  if (!real)
    real = (int (*)(void (*)(void*), void*, void*))dlsym(RTLD_NEXT, "__cxa_atexit");
  struct Entry* e = malloc(sizeof *e);
  if (!e)
    return real(fn, arg, dso);
  e->fn = fn;
  e->arg = arg;
  e->n = __atomic_add_fetch(&count, 1, __ATOMIC_SEQ_CST);
  Dl_info info;
  const char* mod = "?";
  if (dladdr((void*)fn, &info) && info.dli_fname)
    mod = strrchr(info.dli_fname, '/') ? strrchr(info.dli_fname, '/') + 1 : info.dli_fname;
  snprintf(e->module, sizeof e->module, "%s%s%s", mod, info.dli_sname ? ":" : "",
           info.dli_sname ? info.dli_sname : "");
  line("add", e);
  return real(trampoline, e, dso);
}

int __cxa_thread_atexit_impl(void (*fn)(void*), void* obj, void* dso) {
  static int (*real)(void (*)(void*), void*, void*);
  if (!real)
    real = (int (*)(void (*)(void*), void*, void*))dlsym(RTLD_NEXT, "__cxa_thread_atexit_impl");
  struct Entry* e = malloc(sizeof *e);
  if (!e)
    return real(fn, obj, dso);
  e->fn = fn;
  e->arg = obj;
  e->n = __atomic_add_fetch(&count, 1, __ATOMIC_SEQ_CST);
  Dl_info info;
  const char* mod = "?";
  if (dladdr((void*)fn, &info) && info.dli_fname)
    mod = strrchr(info.dli_fname, '/') ? strrchr(info.dli_fname, '/') + 1 : info.dli_fname;
  snprintf(e->module, sizeof e->module, "tls %s%s%s", mod, info.dli_sname ? ":" : "",
           info.dli_sname ? info.dli_sname : "");
  line("add", e);
  return real(tlsTrampoline, e, dso);
}
