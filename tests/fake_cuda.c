/* A stand-in for libcuda.so.1 that tests load with CudaDriver::load(path).
 * It exports only cuGetProcAddress_v2, which hands out a few working fakes
 * (cuInit, the error names, the version and device queries, and enough of
 * memory, streams, events and launches for the autotuner's tests) and a generic
 * CUDA_SUCCESS stub for every other name, plus fakeCuda* knobs that a test
 * reaches with dlopen/dlsym on the same path (the same handle, so the same
 * state): which symbol is missing, what cuInit and cuDriverGetVersion
 * return, and which version each symbol was requested at. */
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define FAKE_EXPORT __attribute__((visibility("default")))

enum { kMaxRequests = 128 };

static char missingSymbol[64];
static CUresult initResult = CUDA_SUCCESS;
static int driverVersion = 13000;
/* 1: the memory of an H200 (the H100 SXM's otherwise). */
static int h200Memory = 0;
static struct {
  char symbol[64];
  int version;
} requests[kMaxRequests];
static int requestCount;

FAKE_EXPORT void fakeCudaReset(void) {
  missingSymbol[0] = '\0';
  initResult = CUDA_SUCCESS;
  driverVersion = 13000;
  h200Memory = 0;
  requestCount = 0;
}

/* NULL or "" makes every symbol resolvable. */
FAKE_EXPORT void fakeCudaSetMissingSymbol(const char* symbol) {
  snprintf(missingSymbol, sizeof(missingSymbol), "%s", symbol ? symbol : "");
}

FAKE_EXPORT void fakeCudaSetInitResult(int result) {
  initResult = (CUresult)result;
}

FAKE_EXPORT void fakeCudaSetH200Memory(int on) {
  h200Memory = on;
}

FAKE_EXPORT void fakeCudaSetDriverVersion(int version) {
  driverVersion = version;
}

/* The version the last request for `symbol` asked for, or -1. */
FAKE_EXPORT int fakeCudaRequestedVersion(const char* symbol) {
  for (int i = requestCount - 1; i >= 0; --i)
    if (strcmp(requests[i].symbol, symbol) == 0)
      return requests[i].version;
  return -1;
}

/* The highest version any request asked for, or -1. */
FAKE_EXPORT int fakeCudaMaxRequestedVersion(void) {
  int max = -1;
  for (int i = 0; i < requestCount; ++i)
    if (requests[i].version > max)
      max = requests[i].version;
  return max;
}

static CUresult CUDAAPI fakeInit(unsigned int flags) {
  (void)flags;
  return initResult;
}

static CUresult CUDAAPI fakeGetErrorName(CUresult error, const char** text) {
  switch (error) {
  case CUDA_SUCCESS:
    *text = "CUDA_SUCCESS";
    return CUDA_SUCCESS;
  case CUDA_ERROR_INVALID_VALUE:
    *text = "CUDA_ERROR_INVALID_VALUE";
    return CUDA_SUCCESS;
  case CUDA_ERROR_NO_DEVICE:
    *text = "CUDA_ERROR_NO_DEVICE";
    return CUDA_SUCCESS;
  case CUDA_ERROR_NOT_FOUND:
    *text = "CUDA_ERROR_NOT_FOUND";
    return CUDA_SUCCESS;
  default:
    *text = NULL;
    return CUDA_ERROR_INVALID_VALUE;
  }
}

static CUresult CUDAAPI fakeGetErrorString(CUresult error, const char** text) {
  switch (error) {
  case CUDA_SUCCESS:
    *text = "no error";
    return CUDA_SUCCESS;
  case CUDA_ERROR_INVALID_VALUE:
    *text = "invalid argument";
    return CUDA_SUCCESS;
  case CUDA_ERROR_NO_DEVICE:
    *text = "no CUDA-capable device is detected";
    return CUDA_SUCCESS;
  case CUDA_ERROR_NOT_FOUND:
    *text = "named symbol not found";
    return CUDA_SUCCESS;
  default:
    *text = NULL;
    return CUDA_ERROR_INVALID_VALUE;
  }
}

static CUresult CUDAAPI fakeDriverGetVersion(int* version) {
  *version = driverVersion;
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeDeviceGetCount(int* count) {
  *count = 1;
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeDeviceGetName(char* name, int length, CUdevice device) {
  if (device != 0)
    return CUDA_ERROR_INVALID_VALUE;
  snprintf(name, (size_t)length, "%s", "Fake GPU");
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeDeviceGetAttribute(int* value, CUdevice_attribute attribute,
                                               CUdevice device) {
  if (device != 0)
    return CUDA_ERROR_INVALID_VALUE;
  switch (attribute) {
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
    *value = 9;
    return CUDA_SUCCESS;
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
    *value = 0;
    return CUDA_SUCCESS;
  case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT:
    *value = 132;
    return CUDA_SUCCESS;
  /* The rest of an H100 SXM. */
  case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE:
    *value = h200Memory ? 3201000 : 2619000;
    return CUDA_SUCCESS;
  case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH:
    *value = h200Memory ? 6016 : 5120;
    return CUDA_SUCCESS;
  case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE:
    *value = (h200Memory ? 60 : 50) << 20;
    return CUDA_SUCCESS;
  case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR:
    *value = 65536;
    return CUDA_SUCCESS;
  case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR:
    *value = 2048;
    return CUDA_SUCCESS;
  default:
    return CUDA_ERROR_INVALID_VALUE;
  }
}

/* Enough of memory, streams, events and launches for a service and its
 * autotuner to run their course (nothing executes): allocations hand out
 * distinct aligned addresses, streams and events distinct handles, and an
 * event pair's elapsed time is that of the block size of the launch recorded
 * last before its end event: kFastMs for fakeCudaSetFastBlock's size, else
 * kSlowMs. fakeCudaSetCapturing makes every stream report an active capture. */
enum { kMaxEvents = 1 << 16 };
static const float kFastMs = 0.010f, kSlowMs = 0.020f;
static CUdeviceptr nextAddress = 0x100000000ull;
static uintptr_t streamCount, eventCount;
static unsigned lastBlock, fastBlock;
static unsigned eventBlock[kMaxEvents];
static int capturing;
static long launchCount;

FAKE_EXPORT void fakeCudaSetFastBlock(unsigned threads) {
  fastBlock = threads;
}
FAKE_EXPORT void fakeCudaSetCapturing(int on) {
  capturing = on;
}
/* Kernel launches so far (cuLaunchKernel and cuLaunchKernelEx). */
FAKE_EXPORT long fakeCudaLaunches(void) {
  return __atomic_load_n(&launchCount, __ATOMIC_SEQ_CST);
}

static CUresult CUDAAPI fakeMemAlloc(CUdeviceptr* ptr, size_t bytes) {
  *ptr = __atomic_fetch_add(&nextAddress, (bytes + 255) / 256 * 256 + 256, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeMemGetInfo(size_t* freeBytes, size_t* totalBytes) {
  *freeBytes = (size_t)64 << 30;
  *totalBytes = (size_t)80 << 30;
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeStreamCreate(CUstream* stream, unsigned int flags) {
  (void)flags;
  *stream = (CUstream)(0x5000 + __atomic_add_fetch(&streamCount, 1, __ATOMIC_SEQ_CST));
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeStreamIsCapturing(CUstream stream, CUstreamCaptureStatus* status) {
  (void)stream;
  *status = capturing ? CU_STREAM_CAPTURE_STATUS_ACTIVE : CU_STREAM_CAPTURE_STATUS_NONE;
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeEventCreate(CUevent* event, unsigned int flags) {
  (void)flags;
  *event = (CUevent)(__atomic_add_fetch(&eventCount, 1, __ATOMIC_SEQ_CST));
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeEventRecord(CUevent event, CUstream stream) {
  (void)stream;
  eventBlock[(uintptr_t)event % kMaxEvents] = __atomic_load_n(&lastBlock, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeEventElapsedTime(float* ms, CUevent start, CUevent end) {
  (void)start;
  *ms = eventBlock[(uintptr_t)end % kMaxEvents] == fastBlock ? kFastMs : kSlowMs;
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                                         unsigned bx, unsigned by, unsigned bz, unsigned shmem,
                                         CUstream stream, void** params, void** extra) {
  (void)f, (void)gx, (void)gy, (void)gz, (void)by, (void)bz, (void)shmem, (void)stream;
  (void)params, (void)extra;
  __atomic_store_n(&lastBlock, bx, __ATOMIC_SEQ_CST);
  __atomic_add_fetch(&launchCount, 1, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}

static CUresult CUDAAPI fakeLaunchKernelEx(const CUlaunchConfig* config, CUfunction f,
                                           void** params, void** extra) {
  (void)f, (void)params, (void)extra;
  __atomic_store_n(&lastBlock, config->blockDimX, __ATOMIC_SEQ_CST);
  __atomic_add_fetch(&launchCount, 1, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}

/* Stands in for every entry point the tests never call. */
static CUresult CUDAAPI fakeStub(void) {
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult CUDAAPI cuGetProcAddress_v2(const char* symbol, void** pfn, int cudaVersion,
                                                 cuuint64_t flags,
                                                 CUdriverProcAddressQueryResult* status) {
  (void)flags;
  *pfn = NULL;
  if (requestCount < kMaxRequests) {
    snprintf(requests[requestCount].symbol, sizeof(requests[0].symbol), "%s", symbol);
    requests[requestCount].version = cudaVersion;
    ++requestCount;
  }
  /* As the real driver: a version newer than the driver is an invalid value. */
  if (cudaVersion > driverVersion)
    return CUDA_ERROR_INVALID_VALUE;
  if (missingSymbol[0] && strcmp(symbol, missingSymbol) == 0) {
    if (status)
      *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_ERROR_NOT_FOUND;
  }
  static const struct {
    const char* symbol;
    void* pfn;
  } fakes[] = {
      {"cuInit", (void*)fakeInit},
      {"cuGetErrorName", (void*)fakeGetErrorName},
      {"cuGetErrorString", (void*)fakeGetErrorString},
      {"cuDriverGetVersion", (void*)fakeDriverGetVersion},
      {"cuDeviceGetCount", (void*)fakeDeviceGetCount},
      {"cuDeviceGetName", (void*)fakeDeviceGetName},
      {"cuDeviceGetAttribute", (void*)fakeDeviceGetAttribute},
      {"cuMemAlloc", (void*)fakeMemAlloc},
      {"cuMemGetInfo", (void*)fakeMemGetInfo},
      {"cuStreamCreate", (void*)fakeStreamCreate},
      {"cuStreamIsCapturing", (void*)fakeStreamIsCapturing},
      {"cuEventCreate", (void*)fakeEventCreate},
      {"cuEventRecord", (void*)fakeEventRecord},
      {"cuEventElapsedTime", (void*)fakeEventElapsedTime},
      {"cuLaunchKernel", (void*)fakeLaunchKernel},
      {"cuLaunchKernelEx", (void*)fakeLaunchKernelEx},
  };
  *pfn = (void*)fakeStub;
  for (size_t i = 0; i < sizeof(fakes) / sizeof(fakes[0]); ++i)
    if (strcmp(symbol, fakes[i].symbol) == 0)
      *pfn = fakes[i].pfn;
  if (status)
    *status = CU_GET_PROC_ADDRESS_SUCCESS;
  return CUDA_SUCCESS;
}
