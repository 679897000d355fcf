#include "runtime/cuda_driver.hpp"

#include <dlfcn.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nvrtc.h>

#include "bqjit/error.hpp"
#include "test_util.hpp"
#include "tests/cuda_driver_test_support.hpp"
#include "tests/fake_driver.hpp"

namespace bqjit {
namespace {

using test::FakeDriver;

/// `text` holds `needle`; the failure message shows both.
using test::contains;

/// `text` begins with `prefix`.
testing::AssertionResult startsWith(const std::string& text, const std::string& prefix) {
  if (text.compare(0, prefix.size(), prefix) == 0)
    return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "\"" << text << "\" does not start with \"" << prefix << "\"";
}

class FakeDriverTest : public testing::Test {
protected:
  void SetUp() override {
    ASSERT_TRUE(fake_.ok()) << "could not open " << BQJIT_FAKE_CUDA_LIBRARY << ": " << dlerror();
    fake_.reset();
  }
  void TearDown() override {
    if (fake_.ok())
      fake_.reset();
  }
  FakeDriver fake_;
};

/// Success for CUDA_SUCCESS; otherwise the driver's DriverError text.
testing::AssertionResult succeeded(const CudaDriver& driver, CUresult result, const char* call) {
  if (llvm::Error err = driver.check(result, call))
    return testing::AssertionFailure() << consumeToString(std::move(err));
  return testing::AssertionSuccess();
}
#define EXPECT_CU(driver, call) EXPECT_TRUE(succeeded(driver, driver.call, #call))
#define ASSERT_CU(driver, call) ASSERT_TRUE(succeeded(driver, driver.call, #call))

/// A cubin of `source` for `arch` (e.g. "sm_90"), or empty with *log set.
std::vector<char> compileCubin(const char* source, const std::string& arch, std::string* log) {
  nvrtcProgram program = nullptr;
  if (nvrtcCreateProgram(&program, source, "fill.cu", 0, nullptr, nullptr) != NVRTC_SUCCESS)
    return {};
  const std::string option = "--gpu-architecture=" + arch;
  const char* options[] = {option.c_str()};
  nvrtcResult r = nvrtcCompileProgram(program, 1, options);
  size_t size = 0;
  nvrtcGetProgramLogSize(program, &size);
  log->resize(size);
  nvrtcGetProgramLog(program, log->data());
  std::vector<char> cubin;
  if (r == NVRTC_SUCCESS && nvrtcGetCUBINSize(program, &size) == NVRTC_SUCCESS) {
    cubin.resize(size);
    if (nvrtcGetCUBIN(program, cubin.data()) != NVRTC_SUCCESS)
      cubin.clear();
  }
  nvrtcDestroyProgram(&program);
  return cubin;
}

/// Loads the fake and returns the error's code, writing its message.
ErrorCode loadFakeError(std::string* message) {
  auto driver = CudaDriver::load(BQJIT_FAKE_CUDA_LIBRARY);
  if (driver) {
    *message = "(loaded)";
    return static_cast<ErrorCode>(0);
  }
  return consumeError(driver.takeError(), message);
}

// (a)
TEST(CudaDriverTest, MissingLibraryIsNoDriverNamingLibraryAndDlerror) {
  const char* missing = "libdoes-not-exist.so.1";
  // The dlerror text this machine gives for it, to compare against.
  ASSERT_EQ(dlopen(missing, RTLD_NOW | RTLD_LOCAL), nullptr);
  const std::string dlerrorText = dlerror();

  auto driver = CudaDriver::load(missing);
  ASSERT_FALSE(driver);
  std::string message;
  EXPECT_EQ(consumeError(driver.takeError(), &message), ErrorCode::NoDriver);
  EXPECT_TRUE(contains(message, missing));
  EXPECT_TRUE(contains(message, dlerrorText));
  EXPECT_TRUE(contains(message, "NVIDIA driver"));
  EXPECT_TRUE(contains(message, "caching, prewarm and PTX inspection still work"));
}

// (b)
TEST(CudaDriverTest, SystemDriverLoadsOrIsNoDriver) {
  void* probe = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  const std::string probeError = probe ? "" : dlerror();
  if (probe)
    dlclose(probe);

  auto driver = CudaDriver::load();
  if (!probe) {
    ASSERT_FALSE(driver) << "load() succeeded although dlopen(libcuda.so.1) failed";
    std::string message;
    EXPECT_EQ(consumeError(driver.takeError(), &message), ErrorCode::NoDriver);
    EXPECT_TRUE(contains(message, "libcuda.so.1"));
    EXPECT_TRUE(contains(message, probeError));
    return;
  }
  // A driver without a usable device (or too old) must still say NoDriver.
  if (!driver) {
    std::string message;
    EXPECT_EQ(consumeError(driver.takeError(), &message), ErrorCode::NoDriver) << message;
    GTEST_SKIP() << "libcuda.so.1 opens but is unusable: " << message;
  }
  const CudaDriver& d = **driver;
  EXPECT_GE(d.driverVersion(), CudaDriver::kMinDriverVersion);
  int count = 0;
  ASSERT_FALSE(d.check(d.cuDeviceGetCount(&count), "cuDeviceGetCount"));
  EXPECT_GE(count, 1);
  CUdevice device = 0;
  ASSERT_FALSE(d.check(d.cuDeviceGet(&device, 0), "cuDeviceGet"));
  auto info = d.deviceInfo(device);
  ASSERT_TRUE(static_cast<bool>(info)) << consumeToString(info.takeError());
  EXPECT_TRUE(startsWith(info->arch(), "sm_"));
  EXPECT_FALSE(info->name.empty());
  EXPECT_GT(info->smCount, 0);
  EXPECT_EQ(info->ordinal, 0);
}

// (c)
TEST(CudaDriverTest, ResultNameAndCheckFormatWithSystemDriver) {
  std::string whyNot;
  if (!gpuAvailable(&whyNot))
    GTEST_SKIP() << whyNot;
  auto driver = CudaDriver::load();
  ASSERT_TRUE(static_cast<bool>(driver)) << consumeToString(driver.takeError());
  const CudaDriver& d = **driver;

  EXPECT_EQ(d.resultName(CUDA_ERROR_INVALID_VALUE), "CUDA_ERROR_INVALID_VALUE (1)");
  EXPECT_EQ(d.resultName(CUDA_ERROR_NO_DEVICE), "CUDA_ERROR_NO_DEVICE (100)");
  EXPECT_EQ(d.resultName(static_cast<CUresult>(12345)), "CUresult (12345)");
  EXPECT_FALSE(d.check(CUDA_SUCCESS, "cuInit"));

  std::string message;
  EXPECT_EQ(consumeError(d.check(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc", "64 bytes"), &message),
            ErrorCode::DriverError);
  EXPECT_TRUE(startsWith(message, "cuMemAlloc failed: CUDA_ERROR_INVALID_VALUE (1): "));
  EXPECT_TRUE(contains(message, "; 64 bytes"));

  // A real failure through a real entry point.
  EXPECT_EQ(consumeError(d.check(d.cuDeviceGetAttribute(
                                     nullptr, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0),
                                 "cuDeviceGetAttribute"),
                         &message),
            ErrorCode::DriverError);
  EXPECT_TRUE(startsWith(message, "cuDeviceGetAttribute failed: CUDA_ERROR_INVALID_VALUE (1)"));
}

// (d)
TEST_F(FakeDriverTest, MissingEntryPointIsNoDriverNamingTheSymbol) {
  fake_.setMissingSymbol("cuFuncLoad");
  std::string message;
  EXPECT_EQ(loadFakeError(&message), ErrorCode::NoDriver);
  EXPECT_TRUE(contains(message, "cuFuncLoad"));
  EXPECT_TRUE(contains(message, "CUDA_ERROR_NOT_FOUND (500)"));
  EXPECT_TRUE(contains(message, BQJIT_FAKE_CUDA_LIBRARY));
}

TEST_F(FakeDriverTest, CuInitFailureIsNoDriverNamingTheResult) {
  fake_.setInitResult(CUDA_ERROR_NO_DEVICE);
  std::string message;
  EXPECT_EQ(loadFakeError(&message), ErrorCode::NoDriver);
  EXPECT_TRUE(startsWith(message, "cuInit failed: CUDA_ERROR_NO_DEVICE (100)"));
  EXPECT_TRUE(contains(message, "no CUDA-capable device is detected"));
}

TEST_F(FakeDriverTest, DriverOlderThanMinimumIsNoDriver) {
  fake_.setDriverVersion(12030);
  std::string message;
  EXPECT_EQ(loadFakeError(&message), ErrorCode::NoDriver);
  EXPECT_TRUE(contains(message, "CUDA 12.3"));
  EXPECT_TRUE(contains(message, "12.4 or newer"));
}

// Entry points only the tools and tests use (cuEventElapsedTime_v2 at 12.8,
// cuCtxCreate_v4 at 12.5) do not raise the driver a serving host needs.
TEST_F(FakeDriverTest, ToolEntryPointsDoNotRaiseTheMinimumDriver) {
  fake_.setDriverVersion(CudaDriver::kMinDriverVersion);
  auto driver = CudaDriver::load(BQJIT_FAKE_CUDA_LIBRARY);
  ASSERT_TRUE(static_cast<bool>(driver)) << consumeToString(driver.takeError());
  const CudaDriver& d = **driver;
  EXPECT_NE(d.cuLaunchKernel, nullptr);
  EXPECT_NE(d.cuFuncLoad, nullptr);
  EXPECT_EQ(d.cuEventElapsedTime, nullptr);
  EXPECT_EQ(d.cuCtxCreate, nullptr);
  EXPECT_NE(d.cuMemAlloc, nullptr);
  EXPECT_EQ(fake_.maxRequestedVersion(), CudaDriver::kMinDriverVersion);
  std::string message;
  EXPECT_EQ(consumeError(d.requireToolEntryPoints(), &message), ErrorCode::NoDriver);
  EXPECT_TRUE(contains(message, "cuEventElapsedTime (CUDA 12.8)")) << message;
  EXPECT_TRUE(contains(message, "cuCtxCreate (CUDA 12.5)")) << message;
  EXPECT_TRUE(contains(message, "CUDA 12.4")) << message;
  // A current driver has them all.
  fake_.setDriverVersion(13000);
  auto current = CudaDriver::load(BQJIT_FAKE_CUDA_LIBRARY);
  ASSERT_TRUE(static_cast<bool>(current));
  EXPECT_FALSE(bool((*current)->requireToolEntryPoints()));
}

TEST_F(FakeDriverTest, LoadsAndFormatsResults) {
  auto driver = CudaDriver::load(BQJIT_FAKE_CUDA_LIBRARY);
  ASSERT_TRUE(static_cast<bool>(driver)) << consumeToString(driver.takeError());
  const CudaDriver& d = **driver;
  EXPECT_EQ(d.driverVersion(), 13000);
  EXPECT_EQ(d.libraryName(), BQJIT_FAKE_CUDA_LIBRARY);

  EXPECT_EQ(d.resultName(CUDA_ERROR_NO_DEVICE), "CUDA_ERROR_NO_DEVICE (100)");
  EXPECT_EQ(d.resultName(static_cast<CUresult>(999)), "CUresult (999)");
  EXPECT_FALSE(d.check(CUDA_SUCCESS, "cuStreamCreate"));
  std::string message;
  EXPECT_EQ(consumeError(d.check(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate", "flags 1"), &message),
            ErrorCode::DriverError);
  EXPECT_EQ(message, "cuStreamCreate failed: CUDA_ERROR_INVALID_VALUE (1): invalid argument; "
                     "flags 1");
  EXPECT_EQ(consumeError(d.check(CUDA_ERROR_NOT_FOUND, "cuLibraryGetKernel"), &message),
            ErrorCode::DriverError);
  EXPECT_EQ(message,
            "cuLibraryGetKernel failed: CUDA_ERROR_NOT_FOUND (500): named symbol not found");

  auto info = d.deviceInfo(0);
  ASSERT_TRUE(static_cast<bool>(info)) << consumeToString(info.takeError());
  EXPECT_EQ(info->name, "Fake GPU");
  EXPECT_EQ(info->arch(), "sm_90");
  EXPECT_EQ(info->smCount, 132);
  auto bad = d.deviceInfo(3);
  ASSERT_FALSE(static_cast<bool>(bad));
  EXPECT_EQ(consumeError(bad.takeError(), &message), ErrorCode::DriverError);
  EXPECT_TRUE(contains(message, "cuDeviceGetName failed"));
  EXPECT_TRUE(contains(message, "device 3"));
}

// Each symbol is requested at the version of its PFN typedef, so the pointer's
// ABI is the typedef's even where a newer driver has a newer variant.
TEST_F(FakeDriverTest, RequestsEachSymbolAtItsTypedefVersion) {
  auto driver = CudaDriver::load(BQJIT_FAKE_CUDA_LIBRARY);
  ASSERT_TRUE(static_cast<bool>(driver)) << consumeToString(driver.takeError());
  EXPECT_EQ(fake_.requestedVersion("cuStreamGetCtx"), 9020);   // not the 12.5 _v2 with green ctx
  EXPECT_EQ(fake_.requestedVersion("cuCtxSynchronize"), 2000); // not the 13.0 _v2 taking a ctx
  EXPECT_EQ(fake_.requestedVersion("cuCtxGetDevice"), 2000);   // likewise
  EXPECT_EQ(fake_.requestedVersion("cuMemAlloc"), 3020);       // cuMemAlloc_v2
  EXPECT_EQ(fake_.requestedVersion("cuStreamBeginCapture"), 10010); // with a capture mode
  EXPECT_EQ(fake_.requestedVersion("cuEventElapsedTime"), 12080);   // cuEventElapsedTime_v2
  EXPECT_EQ(fake_.requestedVersion("cuGraphInstantiateWithFlags"), 11040);
  EXPECT_EQ(fake_.requestedVersion("cuFuncLoad"), CudaDriver::kMinDriverVersion);
}

// Calls every entry point on a real GPU, which would crash or fail on a
// pointer whose ABI differs from its member's type.
TEST(CudaDriverGpuTest, EveryEntryPointWorksOnTheDevice) {
  BQJIT_REQUIRE_GPU();
  auto loaded = CudaDriver::load();
  ASSERT_TRUE(static_cast<bool>(loaded)) << consumeToString(loaded.takeError());
  const CudaDriver& d = **loaded;

  CUdevice device = 0;
  ASSERT_CU(d, cuDeviceGet(&device, 0));
  auto info = d.deviceInfo(device);
  ASSERT_TRUE(static_cast<bool>(info)) << consumeToString(info.takeError());

  CUcontext ctx = nullptr, current = nullptr, popped = nullptr, streamCtx = nullptr;
  ASSERT_CU(d, cuDevicePrimaryCtxRetain(&ctx, device));
  ASSERT_CU(d, cuCtxSetCurrent(ctx));
  EXPECT_CU(d, cuCtxGetCurrent(&current));
  EXPECT_EQ(current, ctx);
  CUdevice ctxDevice = -1;
  EXPECT_CU(d, cuCtxGetDevice(&ctxDevice));
  EXPECT_EQ(ctxDevice, device);
  EXPECT_CU(d, cuCtxPushCurrent(ctx));
  EXPECT_CU(d, cuCtxPopCurrent(&popped));
  EXPECT_EQ(popped, ctx);

  CUstream stream = nullptr;
  ASSERT_CU(d, cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  EXPECT_CU(d, cuStreamGetCtx(stream, &streamCtx));
  EXPECT_EQ(streamCtx, ctx);

  size_t freeBytes = 0, totalBytes = 0;
  EXPECT_CU(d, cuMemGetInfo(&freeBytes, &totalBytes));
  EXPECT_GT(totalBytes, 0u);
  EXPECT_LE(freeBytes, totalBytes);

  constexpr int kCount = 1 << 16;
  CUdeviceptr buffer = 0;
  ASSERT_CU(d, cuMemAlloc(&buffer, kCount * sizeof(int)));
  unsigned int memoryType = 0;
  EXPECT_CU(d, cuPointerGetAttribute(&memoryType, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, buffer));
  EXPECT_EQ(memoryType, static_cast<unsigned int>(CU_MEMORYTYPE_DEVICE));
  std::vector<int> host(kCount, 3);
  EXPECT_CU(d, cuMemsetD8(buffer, 0, kCount * sizeof(int)));
  EXPECT_CU(d, cuMemcpyHtoD(buffer, host.data(), 16 * sizeof(int)));
  std::vector<int> back(kCount, -1);
  EXPECT_CU(d, cuMemcpyDtoH(back.data(), buffer, kCount * sizeof(int)));
  EXPECT_EQ(back[15], 3);
  EXPECT_EQ(back[16], 0);

  std::string log;
  std::vector<char> cubin = compileCubin(R"(extern "C" __global__ void fill(int* p, int v, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = v;
  })",
                                         info->arch(), &log);
  ASSERT_FALSE(cubin.empty()) << "NVRTC failed for " << info->arch() << ": " << log;
  CUlibrary library = nullptr;
  ASSERT_CU(d, cuLibraryLoadData(&library, cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
  CUkernel kernel = nullptr;
  ASSERT_CU(d, cuLibraryGetKernel(&kernel, library, "fill"));
  CUfunction function = nullptr;
  ASSERT_CU(d, cuKernelGetFunction(&function, kernel));
  EXPECT_CU(d, cuFuncLoad(function));
  CUfunctionLoadingState state = CU_FUNCTION_LOADING_STATE_UNLOADED;
  EXPECT_CU(d, cuFuncIsLoaded(&state, function));
  EXPECT_EQ(state, CU_FUNCTION_LOADING_STATE_LOADED);
  int maxThreads = 0;
  EXPECT_CU(d, cuFuncGetAttribute(&maxThreads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, function));
  EXPECT_GE(maxThreads, 256);
  EXPECT_CU(d, cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 0));

  int value = 7, count = kCount;
  void* args[] = {&buffer, &value, &count};
  CUevent start = nullptr, stop = nullptr;
  ASSERT_CU(d, cuEventCreate(&start, CU_EVENT_DEFAULT));
  ASSERT_CU(d, cuEventCreate(&stop, CU_EVENT_DEFAULT));
  EXPECT_CU(d, cuEventRecord(start, stream));
  EXPECT_CU(d, cuLaunchKernel(function, kCount / 256, 1, 1, 256, 1, 1, 0, stream, args, nullptr));
  EXPECT_CU(d, cuEventRecord(stop, stream));
  EXPECT_CU(d, cuEventSynchronize(stop));
  float ms = -1;
  EXPECT_CU(d, cuEventElapsedTime(&ms, start, stop));
  EXPECT_GE(ms, 0.0f);
  EXPECT_CU(d, cuMemcpyDtoHAsync(back.data(), buffer, kCount * sizeof(int), stream));
  EXPECT_CU(d, cuStreamSynchronize(stream));
  EXPECT_EQ(back[0], 7);
  EXPECT_EQ(back[kCount - 1], 7);

  EXPECT_CU(d, cuMemsetD32Async(buffer, 5, kCount, stream));
  EXPECT_CU(d, cuMemsetD8Async(buffer, 0, sizeof(int), stream));
  EXPECT_CU(d, cuMemcpyHtoDAsync(buffer + sizeof(int), host.data(), sizeof(int), stream));
  EXPECT_CU(d, cuMemcpyDtoHAsync(back.data(), buffer, kCount * sizeof(int), stream));
  EXPECT_CU(d, cuStreamSynchronize(stream));
  EXPECT_EQ(back[0], 0);
  EXPECT_EQ(back[1], 3);
  EXPECT_EQ(back[2], 5);

  value = 9;
  CUgraph graph = nullptr;
  CUgraphExec exec = nullptr;
  ASSERT_CU(d, cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  EXPECT_CU(d, cuLaunchKernel(function, kCount / 256, 1, 1, 256, 1, 1, 0, stream, args, nullptr));
  ASSERT_CU(d, cuStreamEndCapture(stream, &graph));
  ASSERT_CU(d, cuGraphInstantiate(&exec, graph, 0));
  EXPECT_CU(d, cuGraphLaunch(exec, stream));
  EXPECT_CU(d, cuStreamSynchronize(stream));
  EXPECT_CU(d, cuCtxSynchronize());
  EXPECT_CU(d, cuMemcpyDtoH(back.data(), buffer, kCount * sizeof(int)));
  EXPECT_EQ(back[0], 9);
  EXPECT_EQ(back[kCount - 1], 9);

  EXPECT_CU(d, cuGraphExecDestroy(exec));
  EXPECT_CU(d, cuGraphDestroy(graph));
  EXPECT_CU(d, cuEventDestroy(start));
  EXPECT_CU(d, cuEventDestroy(stop));
  EXPECT_CU(d, cuLibraryUnload(library));
  EXPECT_CU(d, cuMemFree(buffer));
  EXPECT_CU(d, cuStreamDestroy(stream));
  EXPECT_CU(d, cuCtxSetCurrent(nullptr));
  EXPECT_CU(d, cuDevicePrimaryCtxRelease(device));
}

TEST(CudaDriverTest, GpuAvailableAgreesWithLoad) {
  std::string whyNot;
  bool available = gpuAvailable(&whyNot);
  auto driver = CudaDriver::load();
  if (!driver) {
    EXPECT_FALSE(available);
    EXPECT_TRUE(contains(whyNot, "no-driver"));
    consumeError(driver.takeError(), nullptr);
  }
  if (!available) {
    EXPECT_FALSE(whyNot.empty());
  }
}

TEST(CudaDriverTest, RequireGpuMacroSkipsWithoutGpu) {
  BQJIT_REQUIRE_GPU();
  std::string whyNot;
  EXPECT_TRUE(gpuAvailable(&whyNot)) << whyNot;
}

} // namespace
} // namespace bqjit
