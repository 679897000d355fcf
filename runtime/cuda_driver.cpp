#include "runtime/cuda_driver.hpp"

#include <dlfcn.h>

#include <utility>

#include "bqjit/error.hpp"

namespace bqjit {

namespace {

constexpr const char* kWithoutDriver = "Compiling, caching, prewarm and PTX inspection still work "
                                       "without it; only launching kernels needs the driver.";

/// "12.8" for 12080.
std::string versionText(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

std::string unusableText(const std::string& libraryName, const std::string& what) {
  return "the NVIDIA driver " + libraryName + " is unusable: " + what + ". " + kWithoutDriver;
}

llvm::Error noDriver(const std::string& libraryName, const std::string& what) {
  return makeError(ErrorCode::NoDriver, unusableText(libraryName, what));
}

/// dlclose on scope exit unless released; keeps load()'s early returns leak-free.
class DlHandle {
public:
  explicit DlHandle(void* handle) : handle_(handle) {}
  DlHandle(const DlHandle&) = delete;
  DlHandle& operator=(const DlHandle&) = delete;
  ~DlHandle() {
    if (handle_)
      dlclose(handle_);
  }
  void* get() const { return handle_; }
  void* release() { return std::exchange(handle_, nullptr); }

private:
  void* handle_;
};

} // namespace

/// Looks entry points up through the driver's cuGetProcAddress and keeps the
/// first failure, so that the constructor's member initializers can call it
/// unconditionally and load() reports one error afterwards.
class CudaDriver::Resolver {
public:
  Resolver(std::string libraryName, void* handle) : libraryName_(std::move(libraryName)) {
    getProcV2_ =
        reinterpret_cast<PFN_cuGetProcAddress_v12000>(dlsym(handle, "cuGetProcAddress_v2"));
    // Drivers before CUDA 12.0 export only the four-argument cuGetProcAddress;
    // it is enough to read their version and say that they are too old.
    if (!getProcV2_)
      getProcV1_ = reinterpret_cast<PFN_cuGetProcAddress_v11030>(dlsym(handle, "cuGetProcAddress"));
    if (!getProcV2_ && !getProcV1_)
      fail(unusableText(libraryName_, "it exports neither cuGetProcAddress_v2 nor cuGetProcAddress "
                                      "(it predates CUDA 11.3; bqjit needs " +
                                          versionText(kMinDriverVersion) + " or newer)"));
    else
      getErrorName_ = get<PFN_cuGetErrorName_v6000>("cuGetErrorName", 6000);
  }

  template <typename Pfn> Pfn get(const char* symbol, int version) {
    if (failed())
      return nullptr;
    void* pfn = nullptr;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
    CUresult r = getProcV2_
                     ? getProcV2_(symbol, &pfn, version, CU_GET_PROC_ADDRESS_DEFAULT, &status)
                     : getProcV1_(symbol, &pfn, version, CU_GET_PROC_ADDRESS_DEFAULT);
    if (r != CUDA_SUCCESS || status != CU_GET_PROC_ADDRESS_SUCCESS || !pfn) {
      std::string why = r != CUDA_SUCCESS ? "cuGetProcAddress returned " + name(r) : "";
      if (status == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND)
        why += std::string(why.empty() ? "" : ", ") + "symbol not found";
      else if (status == CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT)
        why += std::string(why.empty() ? "" : ", ") + "the driver's version is not sufficient";
      else if (why.empty())
        why = "cuGetProcAddress returned a null pointer";
      fail(unusableText(libraryName_, "it has no entry point " + std::string(symbol) + " (CUDA " +
                                          versionText(version) + " ABI): " + why));
      return nullptr;
    }
    return reinterpret_cast<Pfn>(pfn);
  }

  /// An entry point the library can do without: null, and its name noted,
  /// where the driver is older than `version` or lacks the symbol.
  template <typename Pfn> Pfn getOptional(const char* symbol, int version) {
    if (failed())
      return nullptr;
    void* pfn = nullptr;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
    CUresult r = version > driverVersion ? CUDA_ERROR_NOT_SUPPORTED
                 : getProcV2_
                     ? getProcV2_(symbol, &pfn, version, CU_GET_PROC_ADDRESS_DEFAULT, &status)
                     : getProcV1_(symbol, &pfn, version, CU_GET_PROC_ADDRESS_DEFAULT);
    if (r != CUDA_SUCCESS || status != CU_GET_PROC_ADDRESS_SUCCESS || !pfn) {
      missing += std::string(missing.empty() ? "" : ", ") + symbol + " (CUDA " +
                 versionText(version) + ")";
      return nullptr;
    }
    return reinterpret_cast<Pfn>(pfn);
  }

  int driverVersion = 0; ///< set by load() before the entry points are resolved
  std::string missing;   ///< optional entry points not found

  /// Result names before the driver object exists; codes only if the driver
  /// can't name them.
  std::string name(CUresult result) const {
    const char* text = nullptr;
    std::string code = "(" + std::to_string(static_cast<int>(result)) + ")";
    if (getErrorName_ && getErrorName_(result, &text) == CUDA_SUCCESS && text)
      return text + (" " + code);
    return "CUresult " + code;
  }

  bool failed() const { return !failure_.empty(); }
  llvm::Error error() const { return makeError(ErrorCode::NoDriver, failure_); }

private:
  void fail(std::string message) { failure_ = std::move(message); }

  std::string libraryName_;
  PFN_cuGetProcAddress_v12000 getProcV2_ = nullptr;
  PFN_cuGetProcAddress_v11030 getProcV1_ = nullptr;
  PFN_cuGetErrorName_v6000 getErrorName_ = nullptr;
  std::string failure_; ///< the first failure's NoDriver message; empty while none
};

// clang-format off
#define BQJIT_RESOLVE_ENTRY_POINT(name, version)                                                   \
  name(resolver.get<PFN_##name##_v##version>(#name, version)),
#define BQJIT_RESOLVE_TOOL_ENTRY_POINT(name, version)                                              \
  name(resolver.getOptional<PFN_##name##_v##version>(#name, version)),
CudaDriver::CudaDriver(std::string libraryName, void* handle, Resolver& resolver)
    : BQJIT_CUDA_DRIVER_ENTRY_POINTS(BQJIT_RESOLVE_ENTRY_POINT)
      BQJIT_CUDA_DRIVER_TOOL_ENTRY_POINTS(BQJIT_RESOLVE_TOOL_ENTRY_POINT)
      libraryName_(std::move(libraryName)), handle_(handle), missingTools_(resolver.missing) {}
#undef BQJIT_RESOLVE_ENTRY_POINT
#undef BQJIT_RESOLVE_TOOL_ENTRY_POINT
// clang-format on

CudaDriver::~CudaDriver() {
  if (handle_)
    dlclose(handle_);
}

llvm::Expected<std::shared_ptr<const CudaDriver>> CudaDriver::load(const std::string& libraryName) {
  // RTLD_LOCAL: everything is reached through cuGetProcAddress, so the
  // driver's symbols need not enter the global namespace of the process.
  DlHandle handle(dlopen(libraryName.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (!handle.get()) {
    const char* why = dlerror();
    return makeError(ErrorCode::NoDriver, "could not open the NVIDIA driver " + libraryName + ": " +
                                              (why ? why : "unknown dlopen error") + ". " +
                                              kWithoutDriver);
  }

  Resolver resolver(libraryName, handle.get());
  // The version first: on an old driver, "too old" says more than the first
  // entry point it happens to lack.
  auto getVersion = resolver.get<PFN_cuDriverGetVersion_v2020>("cuDriverGetVersion", 2020);
  if (resolver.failed())
    return resolver.error();
  int version = 0;
  if (CUresult r = getVersion(&version); r != CUDA_SUCCESS)
    return noDriver(libraryName, "cuDriverGetVersion failed: " + resolver.name(r));
  if (version < kMinDriverVersion)
    return noDriver(libraryName, "it supports CUDA " + versionText(version) +
                                     ", and bqjit needs CUDA " + versionText(kMinDriverVersion) +
                                     " or newer; update the NVIDIA driver");

  resolver.driverVersion = version;
  std::shared_ptr<CudaDriver> driver(new CudaDriver(libraryName, handle.release(), resolver));
  if (resolver.failed())
    return resolver.error();
  driver->driverVersion_ = version;

  if (CUresult r = driver->cuInit(0); r != CUDA_SUCCESS) {
    const char* text = nullptr;
    std::string detail =
        driver->cuGetErrorString(r, &text) == CUDA_SUCCESS && text ? std::string(": ") + text : "";
    return makeError(ErrorCode::NoDriver, "cuInit failed: " + driver->resultName(r) + detail +
                                              " (" + libraryName + "). " + kWithoutDriver);
  }
  return std::shared_ptr<const CudaDriver>(std::move(driver));
}

llvm::Error CudaDriver::requireToolEntryPoints() const {
  if (missingTools_.empty())
    return llvm::Error::success();
  return makeError(ErrorCode::NoDriver,
                   "the NVIDIA driver " + libraryName_ + " supports CUDA " +
                       versionText(driverVersion_) +
                       " and lacks entry points that this tool needs: " + missingTools_ +
                       "; serving kernels works, measuring them needs a newer driver");
}

std::string CudaDriver::resultName(CUresult result) const {
  const char* text = nullptr;
  std::string code = "(" + std::to_string(static_cast<int>(result)) + ")";
  if (cuGetErrorName(result, &text) == CUDA_SUCCESS && text)
    return text + (" " + code);
  return "CUresult " + code;
}

llvm::Error CudaDriver::check(CUresult result, const char* call, const std::string& context) const {
  if (result == CUDA_SUCCESS)
    return llvm::Error::success();
  const char* text = nullptr;
  std::string message = std::string(call) + " failed: " + resultName(result);
  if (cuGetErrorString(result, &text) == CUDA_SUCCESS && text)
    message += std::string(": ") + text;
  if (!context.empty())
    message += "; " + context;
  return makeError(ErrorCode::DriverError, std::move(message));
}

DeviceProfile DeviceInfo::profile() const {
  DeviceProfile p;
  p.model = DeviceProfile::modelName(name);
  p.arch = Arch::fromComputeCapability(ccMajor, ccMinor);
  p.smCount = smCount;
  p.memoryClockKHz = memoryClockKHz;
  p.busWidthBits = busWidthBits;
  p.l2Bytes = l2Bytes;
  p.registersPerSm = registersPerSm;
  p.maxThreadsPerSm = maxThreadsPerSm;
  return p;
}

llvm::Expected<DeviceInfo> CudaDriver::deviceInfo(CUdevice device) const {
  DeviceInfo info;
  info.ordinal = static_cast<int>(device);
  const std::string context = "device " + std::to_string(info.ordinal);
  char name[256] = {};
  if (auto err = check(cuDeviceGetName(name, sizeof(name) - 1, device), "cuDeviceGetName", context))
    return err;
  info.name = name;
  const std::pair<CUdevice_attribute, int*> attributes[] = {
      {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &info.ccMajor},
      {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, &info.ccMinor},
      {CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, &info.smCount},
      {CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, &info.memoryClockKHz},
      {CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, &info.busWidthBits},
      {CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, &info.l2Bytes},
      {CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR, &info.registersPerSm},
      {CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, &info.maxThreadsPerSm},
  };
  for (const auto& [attribute, out] : attributes)
    if (auto err = check(cuDeviceGetAttribute(out, attribute, device), "cuDeviceGetAttribute",
                         context + ", attribute " + std::to_string(static_cast<int>(attribute))))
      return err;
  return info;
}

} // namespace bqjit
