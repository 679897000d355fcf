// The CUDA driver (libcuda.so.1), opened at run time with dlopen so that
// everything but launching works on machines without an NVIDIA driver.
#pragma once

#include <memory>
#include <string>

#include <cuda.h>
#include <cudaTypedefs.h>
#include <llvm/Support/Error.h>

#include "planner/device_profile.hpp"

namespace bqjit {

/// The driver entry points bqjit uses, as X(name, version): `name` is the
/// base symbol handed to cuGetProcAddress and `version` the CUDA version
/// whose ABI is requested, which is also the suffix of the cudaTypedefs.h
/// type PFN_<name>_v<version>. Requesting each symbol at its own typedef's
/// version pins the ABI to the type, whatever version the driver is: asking
/// for "cuStreamGetCtx" at 12.5 or later, say, would return the
/// three-argument cuStreamGetCtx_v2, and "cuCtxSynchronize" at 13.0 the
/// one-argument cuCtxSynchronize_v2. "cuGraphInstantiate" is not asked for at
/// all: at 12.8 the driver still returns the five-argument
/// cuGraphInstantiate_v2, while cuda.h calls cuGraphInstantiateWithFlags.
/// The member's name is macro-expanded the way cuda.h expands calls
/// (cuMemAlloc -> cuMemAlloc_v2, cuGraphInstantiate ->
/// cuGraphInstantiateWithFlags), so `driver.cuMemAlloc(...)` and
/// `driver.cuGraphInstantiate(...)` resolve to these members with the
/// CUDA 12/13 signatures. "cuCtxCreate" is asked for at 12.5, the
/// four-argument cuCtxCreate_v4 taking a CUctxCreateParams* that cuda.h 13
/// calls cuCtxCreate (at 3.2 it would be the three-argument cuCtxCreate_v2,
/// at 11.4 cuCtxCreate_v3 with execution-affinity parameters);
/// "cuCtxDestroy" at 4.0, cuCtxDestroy_v2.
#define BQJIT_CUDA_DRIVER_ENTRY_POINTS(X)                                                          \
  X(cuInit, 2000)                                                                                  \
  X(cuGetErrorName, 6000)                                                                          \
  X(cuGetErrorString, 6000)                                                                        \
  X(cuDriverGetVersion, 2020)                                                                      \
  X(cuDeviceGetCount, 2000)                                                                        \
  X(cuDeviceGet, 2000)                                                                             \
  X(cuDeviceGetAttribute, 2000)                                                                    \
  X(cuDeviceGetName, 2000)                                                                         \
  X(cuDevicePrimaryCtxRetain, 7000)                                                                \
  X(cuDevicePrimaryCtxRelease, 11000)                                                              \
  X(cuCtxGetCurrent, 4000)                                                                         \
  X(cuCtxSetCurrent, 4000)                                                                         \
  X(cuCtxPushCurrent, 4000)                                                                        \
  X(cuCtxPopCurrent, 4000)                                                                         \
  X(cuCtxGetDevice, 2000)                                                                          \
  X(cuStreamGetCtx, 9020)                                                                          \
  X(cuStreamIsCapturing, 10000)                                                                    \
  X(cuThreadExchangeStreamCaptureMode, 10010)                                                      \
  X(cuLibraryLoadData, 12000)                                                                      \
  X(cuLibraryUnload, 12000)                                                                        \
  X(cuLibraryGetKernel, 12000)                                                                     \
  X(cuKernelGetFunction, 12000)                                                                    \
  X(cuFuncLoad, 12040)                                                                             \
  X(cuFuncIsLoaded, 12040)                                                                         \
  X(cuFuncGetAttribute, 2020)                                                                      \
  X(cuFuncSetAttribute, 9000)                                                                      \
  X(cuLaunchKernel, 4000)                                                                          \
  X(cuLaunchKernelEx, 11060)                                                                       \
  X(cuPointerGetAttribute, 4000)

/// Entry points only the tools (verify, tune) and the tests use: memory,
/// streams, events, graphs, contexts of their own. They are resolved where the
/// driver has them and null where it does not, so that they never raise the
/// driver a serving host needs; CudaDriver::requireToolEntryPoints() says
/// which are missing.
#define BQJIT_CUDA_DRIVER_TOOL_ENTRY_POINTS(X)                                                     \
  X(cuCtxSynchronize, 2000)                                                                        \
  X(cuCtxCreate, 12050)                                                                            \
  X(cuCtxDestroy, 4000)                                                                            \
  X(cuStreamCreate, 2000)                                                                          \
  X(cuStreamDestroy, 4000)                                                                         \
  X(cuStreamSynchronize, 2000)                                                                     \
  X(cuMemAlloc, 3020)                                                                              \
  X(cuMemFree, 3020)                                                                               \
  X(cuMemcpyHtoD, 3020)                                                                            \
  X(cuMemcpyDtoH, 3020)                                                                            \
  X(cuMemcpyDtoD, 3020)                                                                            \
  X(cuMemcpyHtoDAsync, 3020)                                                                       \
  X(cuMemcpyDtoHAsync, 3020)                                                                       \
  X(cuMemsetD8, 3020)                                                                              \
  X(cuMemsetD8Async, 3020)                                                                         \
  X(cuMemsetD32Async, 3020)                                                                        \
  X(cuMemGetInfo, 3020)                                                                            \
  X(cuEventCreate, 2000)                                                                           \
  X(cuEventDestroy, 4000)                                                                          \
  X(cuEventRecord, 2000)                                                                           \
  X(cuEventSynchronize, 2000)                                                                      \
  X(cuEventElapsedTime, 12080)                                                                     \
  X(cuStreamBeginCapture, 10010)                                                                   \
  X(cuStreamEndCapture, 10000)                                                                     \
  X(cuGraphInstantiateWithFlags, 11040)                                                            \
  X(cuGraphGetEdges, 12030)                                                                        \
  X(cuGraphLaunch, 10000)                                                                          \
  X(cuGraphDestroy, 10000)                                                                         \
  X(cuGraphExecDestroy, 10000)

/// One device's identity and the numbers bqjit compiles and launches for.
struct DeviceInfo {
  int ordinal = 0;         ///< the CUdevice handle, which the driver numbers 0..count-1
  std::string name;        ///< e.g. "NVIDIA H100 80GB HBM3"
  int ccMajor = 0;         ///< compute capability, major
  int ccMinor = 0;         ///< compute capability, minor
  int smCount = 0;         ///< multiprocessors
  int memoryClockKHz = 0;  ///< peak memory clock
  int busWidthBits = 0;    ///< global memory bus width
  int l2Bytes = 0;         ///< L2 cache size
  int registersPerSm = 0;  ///< 32-bit registers per multiprocessor
  int maxThreadsPerSm = 0; ///< resident threads per multiprocessor
  /// The real architecture NVRTC targets for this device, e.g. "sm_90".
  std::string arch() const { return "sm_" + std::to_string(ccMajor) + std::to_string(ccMinor); }
  /// The properties launch shapes derive from, as this driver reports them.
  DeviceProfile profile() const;
};

/// Owner of one dlopen handle of the CUDA driver and of the entry points
/// resolved from it. Immutable once loaded, so it may be shared between
/// threads; the caller owns the shared_ptr, and every object that calls
/// through it must hold a copy, since destruction closes the library.
class CudaDriver {
public:
  /// The newest entry-point ABI the library needs (cuFuncLoad), and so the
  /// oldest driver accepted: CUDA 12.4. Tool entry points do not count.
  static constexpr int kMinDriverVersion = 12040;

  /// Opens `libraryName` with dlopen, resolves every entry point through
  /// cuGetProcAddress and calls cuInit(0). Fails with ErrorCode::NoDriver
  /// when the library can't be opened, is older than kMinDriverVersion, lacks
  /// an entry point, or cuInit fails (e.g. CUDA_ERROR_NO_DEVICE); the message
  /// says what is missing.
  static llvm::Expected<std::shared_ptr<const CudaDriver>>
  load(const std::string& libraryName = "libcuda.so.1");

  CudaDriver(const CudaDriver&) = delete;
  CudaDriver& operator=(const CudaDriver&) = delete;
  ~CudaDriver();

  /// The library name load() was given.
  const std::string& libraryName() const { return libraryName_; }
  /// The CUDA version the driver supports (cuDriverGetVersion), e.g. 13000.
  int driverVersion() const { return driverVersion_; }

  /// "CUDA_ERROR_INVALID_VALUE (1)"; "CUresult (12345)" for codes the driver
  /// can't name.
  std::string resultName(CUresult result) const;

  /// Success for CUDA_SUCCESS; otherwise ErrorCode::DriverError with
  /// "<call> failed: CUDA_ERROR_... (n): <cuGetErrorString text>[; <context>]".
  llvm::Error check(CUresult result, const char* call, const std::string& context = "") const;

  /// Name, compute capability and multiprocessor count of a device
  /// (a DriverError if a query fails).
  llvm::Expected<DeviceInfo> deviceInfo(CUdevice device) const;

  // The entry points, e.g. `const PFN_cuMemAlloc_v3020 cuMemAlloc;`. Never
  // null on a loaded driver.
#define BQJIT_DECLARE_ENTRY_POINT(name, version) const PFN_##name##_v##version name;
  BQJIT_CUDA_DRIVER_ENTRY_POINTS(BQJIT_DECLARE_ENTRY_POINT)
  // Null where the driver lacks them (requireToolEntryPoints).
  BQJIT_CUDA_DRIVER_TOOL_ENTRY_POINTS(BQJIT_DECLARE_ENTRY_POINT)
#undef BQJIT_DECLARE_ENTRY_POINT

  /// Success when every tool entry point resolved; else a NoDriver error
  /// naming the missing ones and the driver version they need.
  llvm::Error requireToolEntryPoints() const;

private:
  class Resolver;
  CudaDriver(std::string libraryName, void* handle, Resolver& resolver);

  std::string libraryName_;
  void* handle_;
  int driverVersion_ = 0;
  std::string missingTools_; ///< "cuEventElapsedTime (CUDA 12.8), ..."
};

} // namespace bqjit
