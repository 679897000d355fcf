/* The C API on its warm path: a repeated bqjit_kernel_get (JSON text and a
 * prepared spec) and bqjit_kernel_launch with a held handle, timed per call. */
#include "warm_path_c.h"

#include <stdio.h>
#include <time.h>

#include "bqjit/bqjit.h"

static double nowUs(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int failed(const char* what, bqjit_status status) {
  fprintf(stderr, "warm_path (C): %s: status %d: %s\n", what, (int)status, bqjit_last_error());
  return (int)status;
}

int bench_c_api(const char* spec_json, int hidden, uint64_t x, uint64_t q, uint64_t scales,
                void* stream, int warmup, int calls, c_api_times* out) {
  bqjit_service service = NULL;
  bqjit_spec spec = NULL;
  bqjit_kernel kernel = NULL;
  bqjit_status s = bqjit_service_create(NULL, &service);
  if (s != BQJIT_OK)
    return failed("bqjit_service_create", s);
  s = bqjit_spec_parse(spec_json, &spec);
  if (s != BQJIT_OK)
    return failed("bqjit_spec_parse", s);
  s = bqjit_kernel_get(service, spec_json, 0, &kernel); /* the cold request */
  if (s != BQJIT_OK)
    return failed("bqjit_kernel_get", s);

  for (int i = -warmup; i < calls; ++i) {
    bqjit_kernel k = NULL;
    const double t0 = nowUs();
    s = bqjit_kernel_get(service, spec_json, 0, &k);
    const double t1 = nowUs();
    if (s != BQJIT_OK)
      return failed("bqjit_kernel_get (hit)", s);
    bqjit_kernel_release(k);
    if (i >= 0)
      out->getJson[i] = t1 - t0;
  }
  for (int i = -warmup; i < calls; ++i) {
    bqjit_kernel k = NULL;
    const double t0 = nowUs();
    s = bqjit_kernel_get_spec(service, spec, 0, &k);
    const double t1 = nowUs();
    if (s != BQJIT_OK)
      return failed("bqjit_kernel_get_spec (hit)", s);
    bqjit_kernel_release(k);
    if (i >= 0)
      out->getPrepared[i] = t1 - t0;
  }
  bqjit_launch_args a = {x, 2 * (int64_t)hidden, 1, q, scales, 0, 0, 1};
  for (int i = -warmup; i < calls; ++i) {
    const double t0 = nowUs();
    s = bqjit_kernel_launch(kernel, &a, stream);
    const double t1 = nowUs();
    if (s != BQJIT_OK)
      return failed("bqjit_kernel_launch", s);
    if (i >= 0)
      out->launch[i] = t1 - t0;
  }
  bqjit_kernel_release(kernel);
  bqjit_spec_release(spec);
  bqjit_service_destroy(service);
  return 0;
}
