/* The C API half of the warm-path benchmark (warm_path.cpp is the rest). */
#ifndef BQJIT_BENCH_WARM_PATH_C_H
#define BQJIT_BENCH_WARM_PATH_C_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Per-call host times in microseconds, `calls` of each, after `warmup`. */
typedef struct {
  double* getJson;     /**< bqjit_kernel_get with JSON text, a hit */
  double* getPrepared; /**< bqjit_kernel_get_spec with a prepared spec, a hit */
  double* launch;      /**< bqjit_kernel_launch, T = 1, a held handle */
} c_api_times;

/** Runs the C API measurements on device 0 with a spec's JSON and device
 *  buffers for T = 1 (x of 2H bf16, q of H bytes, scales of H / G floats).
 *  Returns 0, or prints bqjit_last_error() and returns the status. */
int bench_c_api(const char* spec_json, int hidden, uint64_t x, uint64_t q, uint64_t scales,
                void* stream, int warmup, int calls, c_api_times* out);

#ifdef __cplusplus
}
#endif

#endif
