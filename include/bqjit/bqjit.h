/* bqjit C API: opaque handles, status codes and a per-thread error message.
 * For other languages (the Python binding uses it through ctypes). */
#ifndef BQJIT_BQJIT_H
#define BQJIT_BQJIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Status codes; the same numbers as bqjit::ErrorCode. No entry point lets a
 *  C++ exception out: one thrown inside bqjit (out of host memory, say) is
 *  BQJIT_ERROR_INTERNAL, with bqjit_last_error() naming the entry point. */
typedef enum {
  BQJIT_OK = 0,
  BQJIT_ERROR_INVALID_SPEC = 1,
  BQJIT_ERROR_INVALID_ARGUMENT = 2,
  BQJIT_ERROR_COMPILE_FAILED = 3,
  BQJIT_ERROR_CACHE = 4,
  BQJIT_ERROR_DRIVER = 5,
  BQJIT_ERROR_NO_DRIVER = 6,
  BQJIT_ERROR_ARCH_MISMATCH = 7,
  BQJIT_ERROR_NOT_IN_CACHE = 8,
  BQJIT_ERROR_INTERNAL = 9
} bqjit_status;

typedef struct bqjit_service_s* bqjit_service;
typedef struct bqjit_kernel_s* bqjit_kernel;
/** A spec parsed and validated once, for callers that ask for kernels on a
 *  hot path without JSON. Immutable; any thread may use it. */
typedef struct bqjit_spec_s* bqjit_spec;

/** Run-time launch arguments; pointers are device addresses. */
typedef struct {
  uint64_t x;          /**< [E][tokens][ldx] input */
  int64_t ldx;         /**< elements between rows, 2H..2^40 */
  int64_t tokens;      /**< T (T_max when masked), 0..2^40 */
  uint64_t q;          /**< [E][tokens][H] output */
  uint64_t scales;     /**< scale buffer */
  uint64_t scale_ub;   /**< one float, or 0 when the spec has no bound */
  uint64_t masked_m;   /**< int32 [E], or 0 when not masked */
  int64_t num_experts; /**< E, 1 when not masked */
} bqjit_launch_args;

/** Launch arguments added after bqjit_launch_args (whose layout is fixed by
 *  the ABI), for bqjit_kernel_launch_ex. Set `size` to
 *  sizeof(bqjit_launch_extra): fields past the size a caller was built with
 *  read as 0, so a later release can add fields here. */
typedef struct {
  size_t size;           /**< sizeof(bqjit_launch_extra) */
  uint64_t global_scale; /**< one float, NVFP4's global scale (required for an NVFP4
                              spec: fp4_e2m1, group_size 16), or 0 */
  uint32_t flags;        /**< BQJIT_LAUNCH_* bits, or 0 */
} bqjit_launch_extra;

/** bqjit_launch_extra.flags: a programmatic dependent launch (sm_90 and newer;
 *  ignored before): the kernel may start while the previous kernel on the
 *  stream still runs and waits for its memory before touching any, so the
 *  results are the same (bqjit::LaunchArgs::programmaticDependentLaunch).
 *  Without either flag (and in bqjit_kernel_launch) the service's default
 *  decides: BQJIT_PDL, on unless set to 0. */
#define BQJIT_LAUNCH_PDL 0x1u
/** bqjit_launch_extra.flags: not a programmatic dependent launch, whatever
 *  the default; not together with BQJIT_LAUNCH_PDL. */
#define BQJIT_LAUNCH_NO_PDL 0x2u

/** Log levels: a message has WARN, INFO or DEBUG; QUIET is a threshold only. */
typedef enum {
  BQJIT_LOG_QUIET = 0,
  BQJIT_LOG_WARN = 1,
  BQJIT_LOG_INFO = 2,
  BQJIT_LOG_DEBUG = 3
} bqjit_log_level;

/** Receives one log message: its level (a bqjit_log_level), its text (UTF-8,
 *  one line, no prefix and no newline; valid during the call only) and the
 *  `user` pointer given to bqjit_set_log_callback. */
typedef void (*bqjit_log_callback)(int level, const char* message, void* user);

/** Routes bqjit's log messages, process-wide, to `callback` instead of
 *  stderr: those at `level` or more severe (BQJIT_LOG_WARN: warnings only,
 *  BQJIT_LOG_INFO: also each compile, load from disk and eviction,
 *  BQJIT_LOG_DEBUG: also NVRTC options and cache paths). While a callback is
 *  set, `level` replaces BQJIT_LOG_LEVEL for every service, existing or not.
 *  A NULL callback sends messages back to stderr, filtered by BQJIT_LOG_LEVEL.
 *
 *  The callback may be called from any thread that uses bqjit, concurrently,
 *  so it must be thread-safe. When this function returns, the previous
 *  callback is not running and will not be called again (its `user` may be
 *  freed). Calling this function from inside the callback is refused
 *  (BQJIT_ERROR_INVALID_ARGUMENT), and so is a `level` outside 0..3; messages
 *  that bqjit logs while the callback runs on the same thread go to stderr. */
bqjit_status bqjit_set_log_callback(bqjit_log_callback callback, void* user, int level);

/** The version of the library, "MAJOR.MINOR.PATCH" (static storage; the
 *  soname carries MAJOR.MINOR). */
const char* bqjit_version(void);

/** The message of the last failed call on this thread ("" if none). */
const char* bqjit_last_error(void);

/** A service configured from the environment (BQJIT_CACHE_DIR, ...).
 *  `cache_dir` overrides the directory when not NULL ("" disables the disk cache). */
bqjit_status bqjit_service_create(const char* cache_dir, bqjit_service* out);
void bqjit_service_destroy(bqjit_service service);

/* `spec_json` below: a NUL-terminated KernelSpec JSON object (README, "The
 * specialization") of at most 64 KiB, nested at most 64 levels deep, each
 * key once per object. Any other text is BQJIT_ERROR_INVALID_SPEC, with a
 * message that names the rule, never a crash of the calling process. */

/** Compiles (or finds) a spec given as JSON and writes its metadata (key,
 *  resolved spec, lowered name, resources, source) as JSON into `buf`.
 *  `*needed` receives the size including the NUL; a too-small buffer is
 *  BQJIT_ERROR_INVALID_ARGUMENT. Works without a GPU. */
bqjit_status bqjit_compile(bqjit_service service, const char* spec_json, char* buf, size_t size,
                           size_t* needed);

/** The spec (JSON) with "arch" set to the device's; same buffer rules. */
bqjit_status bqjit_spec_for_device(bqjit_service service, const char* spec_json, int device,
                                   char* buf, size_t size, size_t* needed);

/** The default launch shape of a spec (JSON, "launch" ignored) with vectors
 *  of at most `max_vec_width` elements, as JSON {threads_per_group, vec_width,
 *  groups_per_block, min_blocks_per_sm}; for callers whose pointers are not 16-byte aligned.
 *  Same buffer rules as bqjit_compile. */
bqjit_status bqjit_default_launch(const char* spec_json, int max_vec_width, char* buf, size_t size,
                                  size_t* needed);

/** Parses and validates a spec (JSON) once. Release it with bqjit_spec_release. */
bqjit_status bqjit_spec_parse(const char* spec_json, bqjit_spec* out);
void bqjit_spec_release(bqjit_spec spec);

/** The kernel of a spec loaded on a device (-1: current context's device).
 *  A repeated request for the same JSON text on the same device is answered
 *  from memory, without parsing. Release the handle with bqjit_kernel_release;
 *  the kernel's module stays loaded while any handle to it exists, so a host
 *  that captures a launch in a CUDA graph keeps the handle for the graph's
 *  lifetime. */
bqjit_status bqjit_kernel_get(bqjit_service service, const char* spec_json, int device,
                              bqjit_kernel* out);
/** As bqjit_kernel_get, with a prepared spec: the fastest way to ask. */
bqjit_status bqjit_kernel_get_spec(bqjit_service service, bqjit_spec spec, int device,
                                   bqjit_kernel* out);
void bqjit_kernel_release(bqjit_kernel kernel);

/** Reads tuning records again (stored by another process, e.g. `bqjit tune`). */
bqjit_status bqjit_service_reload_tuning(bqjit_service service);
/** Forgets the kernels handed out (after a device reset, say); see Service::invalidate. */
bqjit_status bqjit_service_invalidate(bqjit_service service);
/** Waits until every kernel handed out holds its own launch shape for every
 *  regime (a new spec's other variants compile in the background, its
 *  many-token variant standing in meanwhile; a launch captured in a CUDA
 *  graph waits for its own variant by itself); see Service::finishVariants. */
bqjit_status bqjit_service_finish_variants(bqjit_service service);
/** Waits until the autotuner (BQJIT_AUTOTUNE=1) has finished every tuning
 *  asked for so far: the winners are in their kernels' slots and stored as
 *  tuning records; returns at once without autotuning. See
 *  Service::finishTuning. */
bqjit_status bqjit_service_finish_tuning(bqjit_service service);

/** Enqueues the kernel on `stream` (a CUstream / cudaStream_t). An NVFP4
 *  kernel needs bqjit_kernel_launch_ex (its global scale). On sm_90 and newer
 *  it is a programmatic dependent launch unless BQJIT_PDL=0 (see
 *  BQJIT_LAUNCH_PDL; bqjit_kernel_launch_ex's flags decide per launch). */
bqjit_status bqjit_kernel_launch(bqjit_kernel kernel, const bqjit_launch_args* args, void* stream);
/** bqjit_kernel_launch with the arguments of bqjit_launch_extra (`extra` may be
 *  NULL: all zero). A `size` below that of its `size` field, or above
 *  sizeof(bqjit_launch_extra) of this library with non-zero bytes past it, is
 *  BQJIT_ERROR_INVALID_ARGUMENT. */
bqjit_status bqjit_kernel_launch_ex(bqjit_kernel kernel, const bqjit_launch_args* args,
                                    const bqjit_launch_extra* extra, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* BQJIT_BQJIT_H */
