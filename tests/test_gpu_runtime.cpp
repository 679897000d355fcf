// The runtime on a GPU: graph capture, concurrent launches, 64-bit indexing,
// launch argument checks, architecture mismatch. Skips without a GPU.
#include <atomic>
#include <condition_variable>
#include <functional>
#include <iostream>
#include <mutex>
#include <thread>

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bqjit/arch.hpp"
#include "cache/kernel_cache.hpp"
#include "core/fs_util.hpp"
#include "gpu_harness.hpp"
#include "jit/nvrtc_program.hpp"
#include "planner/launch_heuristic.hpp"
#include "planner/planner.hpp"
#include "test_util.hpp"

namespace bqjit::test {
namespace {

KernelSpec bf16Spec(int h, int g) {
  KernelSpec s;
  s.hidden = h;
  s.groupSize = g;
  s.arch = GpuEnv::get().arch;
  return s;
}

// One launch of a kernel at `tokens` rows, captured in a CUDA graph on a
// stream of its own, with its buffers: replay() runs the graph on a new
// input (the outputs poisoned first) and compares them with the reference.
struct CapturedLaunch {
  const CudaDriver& d;
  ref::Problem p;
  size_t qBytes, sBytes;
  DeviceBuffer dx, dq, ds;
  CUstream stream = nullptr;
  CUgraph graph = nullptr;
  CUgraphExec exec = nullptr;

  CapturedLaunch(const CudaDriver& driver, const KernelSpec& spec, int64_t tokens)
      : d(driver), p(problemOf(spec, tokens)), qBytes(ref::outputBytes(spec, tokens)),
        sBytes(ref::scaleBufferBytes(spec, tokens)),
        dx(d, static_cast<size_t>(tokens) * p.ldx * dtypeBytes(spec.inDtype)), dq(d, qBytes),
        ds(d, sBytes) {
    checkCu(d, d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  }
  CapturedLaunch(const CapturedLaunch&) = delete;
  CapturedLaunch& operator=(const CapturedLaunch&) = delete;
  ~CapturedLaunch() {
    if (exec)
      d.cuGraphExecDestroy(exec);
    if (graph)
      d.cuGraphDestroy(graph);
    d.cuStreamDestroy(stream);
  }
  static ref::Problem problemOf(const KernelSpec& spec, int64_t tokens) {
    ref::Problem p;
    p.spec = spec;
    p.tokens = tokens;
    p.ldx = 2 * spec.hidden;
    return p;
  }
  /// Captures kernel.launch (global capture mode) and instantiates the graph;
  /// the launch's error, if any.
  llvm::Error capture(const Kernel& kernel) {
    LaunchArgs a = argsOf(dx, p.ldx, p.tokens, dq, ds);
    checkCu(d, d.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL),
            "cuStreamBeginCapture");
    llvm::Error launched = kernel.launch(a, stream);
    checkCu(d, d.cuStreamEndCapture(stream, &graph), "cuStreamEndCapture");
    if (!launched)
      checkCu(d, d.cuGraphInstantiate(&exec, graph, 0), "cuGraphInstantiate");
    return launched;
  }
  ref::CompareReport replay(uint64_t seed) {
    std::vector<uint8_t> x = ref::makeInput(p.spec, p.tokens, p.ldx, 1, seed);
    checkCu(d, d.cuMemcpyHtoD(dx.get(), x.data(), x.size()), "upload");
    checkCu(d, d.cuMemsetD8(dq.get(), p.poison, qBytes), "poison q");
    checkCu(d, d.cuMemsetD8(ds.get(), p.poison, sBytes), "poison s");
    // The memsets went to the legacy default stream, which the non-blocking
    // stream does not wait for: on a busy GPU the poison landed after the
    // replay's outputs (scales all 0xAB, three processes on an H200).
    checkCu(d, d.cuCtxSynchronize(), "sync the poison");
    checkCu(d, d.cuGraphLaunch(exec, stream), "cuGraphLaunch");
    checkCu(d, d.cuStreamSynchronize(stream), "sync");
    std::vector<uint8_t> q(qBytes), sc(sBytes);
    checkCu(d, d.cuMemcpyDtoH(q.data(), dq.get(), qBytes), "download q");
    checkCu(d, d.cuMemcpyDtoH(sc.data(), ds.get(), sBytes), "download s");
    return ref::compare(p, ref::run(p, x.data()), q.data(), sc.data());
  }
};

TEST(GpuRuntime, GraphCaptureAndReplay) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  KernelSpec spec = bf16Spec(7168, 128);
  auto kernel = env.service->getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  CapturedLaunch c(*env.driver, kernel->spec(), 64);
  llvm::Error launched = c.capture(*kernel);
  ASSERT_FALSE(bool(launched)) << consumeToString(std::move(launched));
  // Replay twice with different inputs in the captured buffers.
  for (uint64_t seed : {21, 22}) {
    auto r = c.replay(seed);
    EXPECT_TRUE(r.ok()) << "replay seed " << seed << ": " << r.summary();
  }
}

TEST(GpuRuntime, TwoThreadsTwoStreams) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  std::vector<std::string> failures(2);
  auto work = [&](int id) {
    try {
      checkCu(d, d.cuCtxSetCurrent(env.context), "cuCtxSetCurrent");
      CUstream stream = nullptr;
      checkCu(d, d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
      for (int rep = 0; rep < 4; ++rep) {
        GpuCase c;
        // Both threads ask for the same new spec first (one compile), then their own.
        c.spec = bf16Spec(rep == 0 ? 5120 : (id ? 3072 : 6144), rep == 0 ? 128 : (id ? 96 : 192));
        c.tokens = 200 + 13 * id;
        c.seed = 100 + id * 10 + rep;
        auto r = runCase(c, stream);
        if (!r.ok())
          failures[id] += c.name() + ": " + r.summary() + "\n";
      }
      d.cuStreamDestroy(stream);
    } catch (const std::exception& e) {
      failures[id] += e.what();
    }
  };
  std::thread t0(work, 0), t1(work, 1);
  t0.join();
  t1.join();
  EXPECT_EQ(failures[0], "");
  EXPECT_EQ(failures[1], "");
}

// T * 2H above 2^31 elements: offsets must be 64-bit. The input repeats with
// a period of P rows so the reference runs on a window only.
TEST(GpuRuntime, SixtyFourBitIndexing) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  KernelSpec spec = bf16Spec(18432, 128);
  auto kernel = env.service->getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  const int64_t h = 18432, ldx = 2 * h, period = 256;
  const int64_t tokens = (int64_t(1) << 31) / ldx + 300;
  ASSERT_GT(tokens * ldx, int64_t(1) << 31);
  size_t freeBytes = 0, totalBytes = 0;
  checkCu(d, d.cuMemGetInfo(&freeBytes, &totalBytes), "cuMemGetInfo");
  const size_t need = tokens * ldx * 2 + tokens * h + tokens * (h / 128) * 4;
  if (need + (size_t(1) << 30) > freeBytes)
    GTEST_SKIP() << "needs " << need << " bytes of device memory, " << freeBytes << " free";

  ref::Problem window;
  window.spec = kernel->spec();
  window.ldx = ldx;
  std::vector<uint8_t> pattern = ref::makeInput(window.spec, period, ldx, 1, 7);
  DeviceBuffer dx(d, tokens * ldx * 2), dq(d, tokens * h), ds(d, tokens * (h / 128) * 4);
  for (int64_t r = 0; r < tokens; r += period) {
    const int64_t rows = std::min(period, tokens - r);
    checkCu(d, d.cuMemcpyHtoD(dx.get() + r * ldx * 2, pattern.data(), rows * ldx * 2), "upload");
  }
  checkCu(d, d.cuMemsetD8(dq.get(), 0xAB, dq.bytes()), "poison q");
  checkCu(d, d.cuMemsetD8(ds.get(), 0xAB, ds.bytes()), "poison s");
  LaunchArgs a = argsOf(dx, ldx, tokens, dq, ds);
  llvm::Error err = kernel->launch(a, nullptr);
  ASSERT_FALSE(bool(err)) << consumeToString(std::move(err));
  checkCu(d, d.cuCtxSynchronize(), "sync");

  // The first rows and the last 300, which lie past element 2^31.
  for (int64_t first : {int64_t(0), tokens - 300}) {
    const int64_t rows = first == 0 ? 16 : 300;
    window.tokens = rows;
    std::vector<uint8_t> x(rows * ldx * 2);
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(&x[i * ldx * 2], &pattern[((first + i) % period) * ldx * 2], ldx * 2);
    std::vector<uint8_t> q(rows * h), s(rows * (h / 128) * 4);
    checkCu(d, d.cuMemcpyDtoH(q.data(), dq.get() + first * h, q.size()), "download q");
    checkCu(d, d.cuMemcpyDtoH(s.data(), ds.get() + first * (h / 128) * 4, s.size()), "download s");
    auto r = ref::compare(window, ref::run(window, x.data()), q.data(), s.data());
    EXPECT_TRUE(r.ok()) << "rows from " << first << ": " << r.summary();
  }
}

TEST(GpuRuntime, LaunchArgumentErrors) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  auto kernel = env.service->getKernel(bf16Spec(2048, 128), 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  DeviceBuffer dx(d, 4 * 4096 * 2 + 64), dq(d, 4 * 2048 + 64), ds(d, 4 * 16 * 4 + 64);
  LaunchArgs good = argsOf(dx, 4096, 4, dq, ds);
  llvm::Error ok = kernel->launch(good, nullptr);
  ASSERT_FALSE(bool(ok)) << consumeToString(std::move(ok));

  auto expectError = [&](LaunchArgs a, const std::string& field, const std::string& rule) {
    std::string message;
    ErrorCode code = consumeError(kernel->launch(a, nullptr), &message);
    EXPECT_EQ(code, ErrorCode::InvalidArgument) << message;
    EXPECT_NE(message.find("'" + field + "'"), std::string::npos) << message;
    EXPECT_NE(message.find(rule), std::string::npos) << message;
  };
  LaunchArgs a = good;
  a.tokens = -1;
  expectError(a, "tokens", "must be in 0..");
  a = good;
  a.x = nullptr;
  expectError(a, "x", "device pointer");
  a = good;
  a.x = static_cast<const char*>(dx.ptr()) + 2;
  expectError(a, "x", "aligned to 16 bytes");
  a = good;
  a.q = static_cast<char*>(dq.ptr()) + 1;
  expectError(a, "q", "aligned to 8 bytes");
  a = good;
  a.ldx = 4095;
  expectError(a, "ldx", ">= 2H");
  a = good;
  a.ldx = 4097;
  expectError(a, "ldx", "multiple of the 16-byte");
  a = good;
  a.numExperts = 2;
  expectError(a, "numExperts", "unmasked");
  checkCu(d, d.cuCtxSynchronize(), "sync");
}

// A programmatic dependent launch behind a producer that lets its dependents
// start at once and writes x only after spinning 100 us: the kernel must wait
// for the producer's writes (griddepcontrol.wait), so its outputs are those
// of the new x, launched on a stream and replayed from a captured graph, at a
// decode size and a many-token size.
TEST(GpuRuntime, ProgrammaticDependentLaunchWaitsForThePreviousKernel) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  auto arch = Arch::parse(env.arch);
  ASSERT_TRUE(bool(arch)) << consumeToString(arch.takeError());
  if (arch->number < 90)
    GTEST_SKIP() << "programmatic dependent launch needs sm_90 or newer; device 0 is " << env.arch;
  auto program = NvrtcProgram::create(R"(
extern "C" __global__ void produce(const uint4* src, uint4* dst, long long n, long long spinNs) {
  asm volatile("griddepcontrol.launch_dependents;");
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < static_cast<unsigned long long>(spinNs));
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
})",
                                      "produce.cu", {}, {});
  ASSERT_TRUE(bool(program)) << consumeToString(program.takeError());
  llvm::Error compiled = program->compile({"--gpu-architecture=" + env.arch});
  ASSERT_FALSE(bool(compiled)) << consumeToString(std::move(compiled)) << "\n" << program->log();
  auto cubin = program->cubin();
  ASSERT_TRUE(bool(cubin)) << consumeToString(cubin.takeError());
  CUlibrary library = nullptr;
  checkCu(d, d.cuLibraryLoadData(&library, cubin->data(), nullptr, nullptr, 0, nullptr, nullptr, 0),
          "cuLibraryLoadData");
  CUkernel handle = nullptr;
  CUfunction produce = nullptr;
  checkCu(d, d.cuLibraryGetKernel(&handle, library, "produce"), "cuLibraryGetKernel");
  checkCu(d, d.cuKernelGetFunction(&produce, handle), "cuKernelGetFunction");
  CUstream stream = nullptr;
  checkCu(d, d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");

  KernelSpec spec = bf16Spec(7168, 128);
  auto kernel = env.service->getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  for (int64_t tokens : {int64_t(5), int64_t(3000)}) {
    const int64_t ldx = 2 * 7168;
    ref::Problem p;
    p.spec = kernel->specFor(tokens);
    p.tokens = tokens;
    p.ldx = ldx;
    const size_t qBytes = ref::outputBytes(p.spec, tokens),
                 sBytes = ref::scaleBufferBytes(p.spec, tokens);
    const std::vector<uint8_t> oldX = ref::makeInput(p.spec, tokens, ldx, 1, 41);
    const std::vector<uint8_t> newX = ref::makeInput(p.spec, tokens, ldx, 1, 42);
    ASSERT_NE(oldX, newX);
    DeviceBuffer src(d, newX.size()), dx(d, oldX.size()), dq(d, qBytes), ds(d, sBytes);
    checkCu(d, d.cuMemcpyHtoD(src.get(), newX.data(), newX.size()), "upload new x");
    CUdeviceptr srcPtr = src.get(), xPtr = dx.get();
    long long n = static_cast<long long>(newX.size() / 16), spinNs = 100000;
    void* params[] = {&srcPtr, &xPtr, &n, &spinNs};
    LaunchArgs a = argsOf(dx, ldx, tokens, dq, ds);
    a.programmaticDependentLaunch = true;
    const ref::Result expected = ref::run(p, newX.data());
    auto enqueue = [&] {
      checkCu(d, d.cuLaunchKernel(produce, 132, 1, 1, 256, 1, 1, 0, stream, params, nullptr),
              "producer launch");
      llvm::Error launched = kernel->launch(a, stream);
      if (launched)
        throw std::runtime_error(consumeToString(std::move(launched)));
    };
    auto checkOutputs = [&](const std::string& how) {
      std::vector<uint8_t> q(qBytes), s(sBytes);
      checkCu(d, d.cuMemcpyDtoH(q.data(), dq.get(), qBytes), "download q");
      checkCu(d, d.cuMemcpyDtoH(s.data(), ds.get(), sBytes), "download s");
      auto r = ref::compare(p, expected, q.data(), s.data());
      EXPECT_TRUE(r.ok()) << how << ", T = " << tokens << ": " << r.summary();
    };
    auto reset = [&] {
      checkCu(d, d.cuMemcpyHtoD(dx.get(), oldX.data(), oldX.size()), "upload old x");
      checkCu(d, d.cuMemsetD8(dq.get(), p.poison, qBytes), "poison q");
      checkCu(d, d.cuMemsetD8(ds.get(), p.poison, sBytes), "poison s");
      // Legacy-stream work, which the non-blocking stream does not wait for.
      checkCu(d, d.cuCtxSynchronize(), "sync the reset");
    };
    reset();
    enqueue();
    checkCu(d, d.cuStreamSynchronize(stream), "sync");
    checkOutputs("on a stream");

    CUgraph graph = nullptr;
    checkCu(d, d.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL), "capture");
    enqueue();
    checkCu(d, d.cuStreamEndCapture(stream, &graph), "cuStreamEndCapture");
    CUgraphExec exec = nullptr;
    checkCu(d, d.cuGraphInstantiate(&exec, graph, 0), "cuGraphInstantiate");
    for (int replay = 0; replay < 2; ++replay) {
      reset();
      checkCu(d, d.cuGraphLaunch(exec, stream), "cuGraphLaunch");
      checkCu(d, d.cuStreamSynchronize(stream), "sync");
      checkOutputs("graph replay " + std::to_string(replay));
    }
    d.cuGraphExecDestroy(exec);
    d.cuGraphDestroy(graph);
  }
  d.cuStreamDestroy(stream);
  d.cuLibraryUnload(library);
}

// Whether a launch is a programmatic dependent one, read off a captured graph
// (two launches back to back on one stream: the type of the edge between
// them), from a service whose default is on (BQJIT_PDL unset or 1) and one
// whose default is off (BQJIT_PDL=0), each with the launch leaving it to the
// default and overriding it. Before sm_90 no launch is.
TEST(GpuRuntime, LaunchesAreProgrammaticByDefaultFromSm90) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  if (!d.cuGraphGetEdges)
    GTEST_SKIP() << "the driver has no cuGraphGetEdges (CUDA 12.3 or newer)";
  auto arch = Arch::parse(env.arch);
  ASSERT_TRUE(bool(arch)) << consumeToString(arch.takeError());
  const CUgraphDependencyType programmatic =
      arch->number >= 90 ? CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC : CU_GRAPH_DEPENDENCY_TYPE_DEFAULT;
  std::unique_ptr<Service> services[2];
  for (bool on : {false, true}) {
    Config c = env.service->config();
    c.programmaticLaunch = on;
    auto s = Service::create(c);
    ASSERT_TRUE(bool(s)) << consumeToString(s.takeError());
    services[on] = std::move(*s);
  }
  const KernelSpec spec = bf16Spec(2048, 128);
  const int64_t tokens = 4;
  DeviceBuffer dx(d, static_cast<size_t>(tokens) * 2 * 2048 * 2),
      dq(d, ref::outputBytes(spec, tokens)), ds(d, ref::scaleBufferBytes(spec, tokens));
  CUstream stream = nullptr;
  checkCu(d, d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  auto edgeType = [&](const Kernel& kernel, std::optional<bool> pdl) {
    LaunchArgs a = argsOf(dx, 2 * 2048, tokens, dq, ds);
    a.programmaticDependentLaunch = pdl;
    CUgraph graph = nullptr;
    checkCu(d, d.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL), "capture");
    llvm::Error first = kernel.launch(a, stream);
    llvm::Error second = kernel.launch(a, stream);
    checkCu(d, d.cuStreamEndCapture(stream, &graph), "cuStreamEndCapture");
    EXPECT_FALSE(bool(first)) << consumeToString(std::move(first));
    EXPECT_FALSE(bool(second)) << consumeToString(std::move(second));
    CUgraphNode from[4], to[4];
    CUgraphEdgeData data[4] = {};
    size_t edges = 4;
    checkCu(d, d.cuGraphGetEdges(graph, from, to, data, &edges), "cuGraphGetEdges");
    d.cuGraphDestroy(graph);
    EXPECT_EQ(edges, 1u) << "two launches on one stream make one edge";
    return edges == 1 ? static_cast<CUgraphDependencyType>(data[0].type)
                      : static_cast<CUgraphDependencyType>(-1);
  };
  for (bool on : {false, true}) {
    SCOPED_TRACE(on ? "Config::programmaticLaunch on" : "Config::programmaticLaunch off");
    auto kernel = services[on]->getKernel(spec, 0);
    ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
    EXPECT_EQ(edgeType(*kernel, std::nullopt), on ? programmatic : CU_GRAPH_DEPENDENCY_TYPE_DEFAULT)
        << "a launch that leaves it to the service";
    EXPECT_EQ(edgeType(*kernel, true), programmatic) << "a launch that asks for it";
    EXPECT_EQ(edgeType(*kernel, false), CU_GRAPH_DEPENDENCY_TYPE_DEFAULT)
        << "a launch that declines it";
  }
  d.cuStreamDestroy(stream);
}

// docs/contract.md section 8: an NVFP4 launch without its global scale is refused
// before anything runs; with one it runs (the C++ LaunchArgs and the C API).
TEST(GpuRuntime, Nvfp4NeedsGlobalScale) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  KernelSpec spec = bf16Spec(2048, 16);
  spec.outDtype = OutDtype::FP4E2M1;
  spec.scaleLayout = ScaleLayout::Swizzled128x4;
  auto kernel = env.service->getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  DeviceBuffer dx(d, 4 * 4096 * 2), dq(d, 4 * 1024), ds(d, 128 * 128), dg(d, 4);
  const float gs = 448.0f * 6.0f / 20.0f;
  checkCu(d, d.cuMemcpyHtoD(dg.get(), &gs, 4), "upload global scale");
  checkCu(d, d.cuMemsetD8(dx.get(), 0, dx.bytes()), "memset x");
  LaunchArgs a = argsOf(dx, 4096, 4, dq, ds);
  std::string message;
  EXPECT_EQ(consumeError(kernel->launch(a, nullptr), &message), ErrorCode::InvalidArgument);
  EXPECT_NE(message.find("'globalScale' = null"), std::string::npos) << message;
  EXPECT_NE(message.find("NVFP4"), std::string::npos) << message;
  a.globalScale = static_cast<const float*>(dg.ptr());
  llvm::Error ok = kernel->launch(a, nullptr);
  EXPECT_FALSE(bool(ok)) << consumeToString(std::move(ok));
  checkCu(d, d.cuCtxSynchronize(), "sync");
}

TEST(GpuRuntime, ArchitectureMismatchIsAnError) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  KernelSpec spec = bf16Spec(2048, 128);
  spec.arch = env.arch == "sm_80" ? "sm_90" : "sm_80";
  auto kernel = env.service->getKernel(spec, 0);
  ASSERT_FALSE(bool(kernel));
  std::string message;
  EXPECT_EQ(consumeError(kernel.takeError(), &message), ErrorCode::ArchMismatch);
  EXPECT_NE(message.find(spec.arch), std::string::npos) << message;
  EXPECT_NE(message.find(env.arch), std::string::npos) << message;
}

TEST(GpuRuntime, SecondRequestIsAWarmHit) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  auto kernel = env.service->getKernel(bf16Spec(4096, 128), 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  env.service->finishVariants();
  // A second request is a warm hit: the same loaded functions, and neither
  // the planner nor the cache is asked (no memory hit, no compile).
  auto profile = env.service->deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  auto variants = env.service->planner().plan(bf16Spec(4096, 128), *profile);
  ASSERT_TRUE(bool(variants)) << consumeToString(variants.takeError());
  // G = 128: the four regimes' shapes differ, except on a device that needs
  // twice the bytes in flight, where very many tokens take the many-token
  // shape and the few-token regime splits by waves (the full-SM promise).
  const bool h200Class = inFlightMultiple(*profile) == 2;
  ASSERT_EQ(variants->variants.size(), 4u);
  EXPECT_EQ(variants->fullSmVariant >= 0, h200Class);
  const auto before = env.service->cache().counters();
  auto again = env.service->getKernel(bf16Spec(4096, 128), 0);
  ASSERT_TRUE(bool(again));
  const auto after = env.service->cache().counters();
  EXPECT_EQ(after.compiles, before.compiles);
  EXPECT_EQ(after.memoryHits, before.memoryHits);
  EXPECT_EQ(&again->specFor(1), &kernel->specFor(1));
  EXPECT_EQ(&again->specFor(1 << 20), &kernel->specFor(1 << 20));
  // Very few tokens take the tiny shape, few the latency shape, many the
  // throughput shape, very many the bulk shape (T x H against the regimes'
  // limits, H = 4096).
  const int64_t lastTiny = regimeMaxElements(Regime::VeryFewTokens) / 4096;
  const int64_t lastLatency = regimeMaxElements(Regime::FewTokens) / 4096;
  const int64_t lastThroughput = regimeMaxElements(Regime::ManyTokens) / 4096;
  EXPECT_EQ(*kernel->specFor(lastTiny).shape,
            chooseLaunchShape(bf16Spec(4096, 128), Regime::VeryFewTokens, *profile));
  EXPECT_EQ(*kernel->specFor(lastTiny + 1).shape,
            chooseLaunchShape(bf16Spec(4096, 128), Regime::FewTokens, *profile));
  // The few-token shape, or from the split's T on its full-SM variant where
  // that kept its promise (at H = 4096 it spills 4 bytes and is set aside).
  const LaunchShape fewShape = chooseLaunchShape(bf16Spec(4096, 128), Regime::FewTokens, *profile);
  LaunchShape upperFew = fewShape;
  if (h200Class) {
    auto promised = env.service->compile(variants->variants[variants->fullSmVariant]);
    ASSERT_TRUE(bool(promised)) << consumeToString(promised.takeError());
    if (!(*promised)->resources.spills())
      upperFew = *variants->variants[variants->fullSmVariant].shape;
    EXPECT_EQ(*kernel->specFor(variants->fullSmFrom - 1).shape, fewShape);
    EXPECT_EQ(*kernel->specFor(variants->fullSmFrom).shape, upperFew);
  }
  EXPECT_EQ(*kernel->specFor(lastLatency).shape, upperFew);
  EXPECT_EQ(*kernel->specFor(lastLatency + 1).shape,
            chooseLaunchShape(bf16Spec(4096, 128), Regime::ManyTokens, *profile));
  EXPECT_EQ(*kernel->specFor(lastThroughput).shape,
            chooseLaunchShape(bf16Spec(4096, 128), Regime::ManyTokens, *profile));
  EXPECT_EQ(*kernel->specFor(lastThroughput + 1).shape,
            chooseLaunchShape(bf16Spec(4096, 128), Regime::VeryManyTokens, *profile));
}

// The offline table that prewarm plans with (DeviceProfile::knownModels)
// holds the values this GPU's driver reports, so that a build machine
// compiles the shapes this GPU will ask for.
TEST(GpuRuntime, KnownModelTableMatchesTheDriver) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  auto profile = env.service->deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  const DeviceProfile& p = *profile;
  std::printf("[device] %s: %s, %d SMs, memory clock %lld kHz, bus %d bits, L2 %lld bytes, "
              "%d registers and %d threads per SM; %.0f GB/s peak, in-flight scale %.2f "
              "(multiple %d)\n",
              p.model.c_str(), p.arch.str().c_str(), p.smCount,
              static_cast<long long>(p.memoryClockKHz), p.busWidthBits,
              static_cast<long long>(p.l2Bytes), p.registersPerSm, p.maxThreadsPerSm,
              p.peakBandwidth() / 1e9, p.inFlightScale(), inFlightMultiple(p));
  auto known = DeviceProfile::known(p.model);
  if (!known)
    GTEST_SKIP() << "model '" << p.model << "' is not in the table (planned from its own "
                 << "properties; prewarm plans it as its architecture's default)";
  EXPECT_EQ(known->arch, p.arch);
  EXPECT_EQ(known->smCount, p.smCount);
  EXPECT_EQ(known->memoryClockKHz, p.memoryClockKHz);
  EXPECT_EQ(known->busWidthBits, p.busWidthBits);
  EXPECT_EQ(known->l2Bytes, p.l2Bytes);
  EXPECT_EQ(known->registersPerSm, p.registersPerSm);
  EXPECT_EQ(known->maxThreadsPerSm, p.maxThreadsPerSm);
  EXPECT_EQ(*known, p);
}

/// A service of its own on a fresh cache directory (removed at the end).
struct FreshService {
  std::string dir;
  std::unique_ptr<Service> service;
  std::mutex logMutex;
  std::vector<std::string> autotuneLines; ///< the autotuner's log lines, info and up
  /// `autotune`: Config::autotune (BQJIT_AUTOTUNE=1).
  explicit FreshService(bool autotune = false) {
    char tmpl[] = "/tmp/bqjit_gpu_warm_XXXXXX";
    if (!::mkdtemp(tmpl))
      throw std::runtime_error("mkdtemp failed");
    dir = tmpl;
    Config c;
    c.cacheDir = dir;
    c.logLevel = autotune ? LogLevel::Info : LogLevel::Quiet;
    c.autotune = autotune;
    c.logSink = [this](LogLevel level, const std::string& text) {
      if (level <= LogLevel::Info && text.find("autotune") != std::string::npos) {
        std::lock_guard<std::mutex> lock(logMutex);
        autotuneLines.push_back(text);
      }
    };
    auto s = Service::create(c);
    if (!s)
      throw std::runtime_error(consumeToString(s.takeError()));
    service = std::move(*s);
  }
  ~FreshService() {
    service.reset();
    llvm::consumeError(fs::removeTree(dir));
  }
};

/// runWithKernel on `tokens` rows of input drawn with `seed` (H from `spec`).
ref::CompareReport runRows(const Kernel& kernel, const KernelSpec& spec, int64_t tokens,
                           uint64_t seed) {
  GpuCase c;
  c.spec = spec;
  c.tokens = tokens;
  c.seed = seed;
  return runWithKernel(kernel, c);
}

// Storing a tuning record in this process changes the kernel handed out next;
// one stored by another process takes effect after reloadTuning().
TEST(GpuRuntime, StoredTuningRecordChangesTheNextKernel) {
  BQJIT_REQUIRE_GPU_ENV();
  FreshService fresh;
  Service& service = *fresh.service;
  const KernelSpec spec = bf16Spec(3584, 128);
  const int64_t manyTokens = 4096; // 3584 x 4096 elements: the many-token regime
  ASSERT_EQ(regimeFor(manyTokens * 3584), Regime::ManyTokens);
  auto profile = service.deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  const LaunchShape heuristic = chooseLaunchShape(spec, Regime::ManyTokens, *profile);
  auto before = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(before)) << consumeToString(before.takeError());
  service.finishVariants();
  EXPECT_EQ(*before->specFor(manyTokens).shape, heuristic);

  const LaunchShape tuned = withDerivedOccupancy(spec, LaunchShape{4, 8, 64});
  ASSERT_NE(tuned, heuristic);
  // A record of another GPU model does not apply to this one.
  DeviceProfile otherModel = *profile;
  otherModel.model += " (another)";
  ASSERT_FALSE(bool(service.planner().tuning().store(spec, tuned, Regime::ManyTokens, otherModel)));
  auto notMine = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(notMine));
  EXPECT_EQ(*notMine->specFor(manyTokens).shape, heuristic);
  ASSERT_FALSE(bool(service.planner().tuning().store(spec, tuned, Regime::ManyTokens, *profile)));
  auto after = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(after)) << consumeToString(after.takeError());
  EXPECT_EQ(*after->specFor(manyTokens).shape, tuned); // no stale answer
  EXPECT_EQ(*before->specFor(manyTokens).shape, heuristic);
  auto report = runRows(*after, spec, manyTokens, 901);
  EXPECT_TRUE(report.ok()) << report.summary();

  // Another process stores a record for the few-token regime.
  {
    Config other;
    other.cacheDir = fresh.dir;
    Planner writer(other, service.cache().compiler().codeIdentity());
    ASSERT_FALSE(
        bool(writer.tuning().store(spec, LaunchShape{8, 8, 32}, Regime::FewTokens, *profile)));
  }
  const int64_t fewTokens = 1000; // 3584 x 1000: the few-token regime
  ASSERT_EQ(regimeFor(fewTokens * 3584), Regime::FewTokens);
  // Not read before reloadTuning: the plan without the record (on an H200,
  // T = 1000 is past the few-token regime's full-SM split).
  auto withoutRecord = service.planner().plan(spec, *profile);
  ASSERT_TRUE(bool(withoutRecord)) << consumeToString(withoutRecord.takeError());
  EXPECT_EQ(withoutRecord->fromHeuristic[index(Regime::FewTokens)], true);
  auto unchanged = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(unchanged));
  service.finishVariants();
  EXPECT_EQ(*unchanged->specFor(fewTokens).shape,
            *withoutRecord->variantForTokens(fewTokens).shape);
  service.reloadTuning();
  auto reloaded = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(reloaded));
  service.finishVariants();
  EXPECT_EQ(*reloaded->specFor(fewTokens).shape, withDerivedOccupancy(spec, LaunchShape{8, 8, 32}));
}

// A new spec's getKernel compiles the many-token variant alone; it stands in
// for the other regimes (same values, another shape) until their variants,
// compiled in the background, take their slots in every copy of the handle.
TEST(GpuRuntime, NewSpecLaunchesAtOnceAndItsOtherVariantsArriveInTheBackground) {
  BQJIT_REQUIRE_GPU_ENV();
  FreshService fresh;
  Service& service = *fresh.service;
  const KernelSpec spec = bf16Spec(5376, 128);
  auto profile = service.deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  auto plan = service.planner().plan(spec, *profile);
  ASSERT_TRUE(bool(plan));
  ASSERT_GE(plan->variants.size(), 3u);
  auto kernel = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  const Kernel heldCopy = *kernel;
  // Every regime launches correctly at once, whichever variant serves it.
  for (int64_t tokens : {int64_t(1), int64_t(500), int64_t(3000), int64_t(7000)}) {
    GpuCase c;
    c.spec = spec;
    c.tokens = tokens;
    c.seed = 77 + static_cast<int>(tokens);
    auto report = runWithKernel(*kernel, c);
    EXPECT_TRUE(report.ok()) << "T=" << tokens << ": " << report.summary();
  }
  service.finishVariants();
  EXPECT_EQ(service.cache().counters().compiles, static_cast<int64_t>(plan->variants.size()));
  // Each regime's first T, and where the few-token regime splits by waves
  // (an H200's full-SM promise) the split's first T.
  std::vector<int64_t> firsts;
  for (Regime r : kRegimes)
    firsts.push_back(std::max<int64_t>(1, regimeMinElements(r) / spec.hidden + 1));
  if (plan->fullSmFrom < INT64_MAX)
    firsts.push_back(plan->fullSmFrom);
  for (int64_t tokens : firsts) {
    const KernelSpec& planned = plan->variantForTokens(tokens);
    EXPECT_EQ(*kernel->specFor(tokens).shape, *planned.shape) << "T=" << tokens;
    EXPECT_EQ(*heldCopy.specFor(tokens).shape, *planned.shape) << "T=" << tokens;
    GpuCase c;
    c.spec = spec;
    c.tokens = tokens;
    c.seed = 90;
    auto report = runWithKernel(heldCopy, c);
    EXPECT_TRUE(report.ok()) << planned.shape->label() << " T=" << tokens << ": "
                             << report.summary();
  }
}

// A graph keeps the function it captured. A new spec's first launches run
// the many-token variant in place of the others while those compile; a
// launch captured then would keep that stand-in in the graph for good (a
// decode step 0.2-0.3 us slower on an H200, bench/NOTES.md eighth session).
// So a captured launch waits for its regime's own variant.
TEST(GpuRuntime, CapturedLaunchOfANewSpecTakesItsRegimesOwnVariant) {
  BQJIT_REQUIRE_GPU_ENV();
  FreshService fresh;
  Service& service = *fresh.service;
  const CudaDriver& d = *GpuEnv::get().driver;
  const KernelSpec spec = bf16Spec(4864, 128); // no other test compiles it
  auto profile = service.deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  auto plan = service.planner().plan(spec, *profile);
  ASSERT_TRUE(bool(plan));
  const LaunchShape own = *plan->variantFor(Regime::VeryFewTokens).shape;
  ASSERT_NE(own, *plan->variantFor(kDefaultRegime).shape) << "the test needs a stand-in";
  auto kernel = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());

  CapturedLaunch c(d, plan->variantFor(Regime::VeryFewTokens), 1);
  llvm::Error launched = c.capture(*kernel);
  ASSERT_FALSE(bool(launched)) << consumeToString(std::move(launched));
  // The launch waited for the very-few-token variant (it compiles in tens of
  // milliseconds at least; without the wait the slot still held the stand-in).
  EXPECT_EQ(*kernel->specFor(1).shape, own);
  auto r = c.replay(31);
  EXPECT_TRUE(r.ok()) << r.summary();
}

// BQJIT_AUTOTUNE: the first launch of a regime whose shape the heuristic
// chose asks the tuner; the tuner's winner takes the slot (the same bytes:
// the launch after it matches the reference) and is stored as the device
// model's record, so the next plan takes it and asks nothing. A second launch
// of the regime asks nothing either, nor do regimes not launched.
TEST(GpuRuntime, AutotuneTunesARegimeOnItsFirstLaunchAndStoresTheWinner) {
  BQJIT_REQUIRE_GPU_ENV();
  FreshService fresh(/*autotune=*/true);
  Service& service = *fresh.service;
  const KernelSpec spec = bf16Spec(2048, 128);
  const int64_t tokens = 1000; // 2048 x 1000: the few-token regime
  ASSERT_EQ(regimeFor(tokens * 2048), Regime::FewTokens);
  auto profile = service.deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  auto kernel = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  service.finishVariants();
  const LaunchShape heuristic = chooseLaunchShape(spec, Regime::FewTokens, *profile);
  EXPECT_EQ(*kernel->specFor(tokens).shape, heuristic);

  auto first = runRows(*kernel, spec, tokens, 1201);
  EXPECT_TRUE(first.ok()) << first.summary();
  service.finishTuning();
  auto record = service.planner().tuning().find(spec, Regime::FewTokens, *profile);
  ASSERT_TRUE(record.has_value()) << "no record after the first launch";
  const LaunchShape winner = withDerivedOccupancy(spec, *record);
  EXPECT_EQ(*kernel->specFor(tokens).shape, winner);
  EXPECT_LE(winner.vecWidth, 16);
  for (Regime r : kRegimes)
    if (r != Regime::FewTokens)
      EXPECT_FALSE(service.planner().tuning().find(spec, r, *profile).has_value()) << regimeName(r);
  size_t lines = 0;
  {
    std::lock_guard<std::mutex> lock(fresh.logMutex);
    lines = fresh.autotuneLines.size();
    for (const std::string& line : fresh.autotuneLines) {
      EXPECT_EQ(line.find("gives other bytes"), std::string::npos) << line;
      std::cout << "  " << line << "\n";
    }
  }
  EXPECT_GE(lines, 2u); // what it tunes, and the winner

  auto after = runRows(*kernel, spec, tokens, 1202);
  EXPECT_TRUE(after.ok()) << after.summary();
  // The next plan takes the record: its kernel asks nothing for the regime,
  // and neither does the tuned kernel's second launch.
  auto next = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(next)) << consumeToString(next.takeError());
  EXPECT_EQ(*next->specFor(tokens).shape, winner);
  auto fromRecord = runRows(*next, spec, tokens, 1203);
  EXPECT_TRUE(fromRecord.ok()) << fromRecord.summary();
  service.finishTuning();
  std::lock_guard<std::mutex> lock(fresh.logMutex);
  EXPECT_EQ(fresh.autotuneLines.size(), lines);
}

// The tuner never disturbs a host's graph capture: a captured launch asks
// nothing, and a tuning that runs (allocations, copies, launches, module
// loads on its own stream in the relaxed mode) while another thread captures
// in the global mode leaves that capture valid.
TEST(GpuRuntime, AutotuneLeavesAnotherThreadsCaptureIntact) {
  BQJIT_REQUIRE_GPU_ENV();
  FreshService fresh(/*autotune=*/true);
  Service& service = *fresh.service;
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  const KernelSpec captured = bf16Spec(2304, 128);
  const KernelSpec tuned = bf16Spec(1536, 128);
  auto profile = service.deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  auto a = service.getKernel(captured, 0);
  ASSERT_TRUE(bool(a)) << consumeToString(a.takeError());
  auto b = service.getKernel(tuned, 0);
  ASSERT_TRUE(bool(b)) << consumeToString(b.takeError());
  service.finishVariants();

  // Both launches' buffers are made before the capture begins: the main
  // thread must not allocate while the other captures in the global mode.
  CapturedLaunch cap(d, a->specFor(1), 1);
  const int64_t tokens = 600; // 1536 x 600: the very-few-token regime
  const Regime regime = regimeFor(tokens * 1536);
  DeviceBuffer bx(d, tokens * 2 * 1536 * 2), bq(d, tokens * 1536), bs(d, tokens * 12 * 4);
  CUstream bStream = nullptr;
  checkCu(d, d.cuStreamCreate(&bStream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");

  std::mutex m;
  std::condition_variable cv;
  bool capturing = false, tunedDone = false;
  CUresult began = CUDA_ERROR_UNKNOWN, ended = CUDA_ERROR_UNKNOWN;
  std::string launchError;
  std::thread host([&] {
    d.cuCtxSetCurrent(env.context);
    began = d.cuStreamBeginCapture(cap.stream, CU_STREAM_CAPTURE_MODE_GLOBAL);
    {
      std::lock_guard<std::mutex> lock(m);
      capturing = true;
    }
    cv.notify_all();
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return tunedDone; });
    LaunchArgs args;
    args.x = cap.dx.ptr();
    args.ldx = cap.p.ldx;
    args.tokens = 1;
    args.q = cap.dq.ptr();
    args.scales = cap.ds.ptr();
    if (llvm::Error err = a->launch(args, cap.stream))
      launchError = consumeToString(std::move(err));
    ended = d.cuStreamEndCapture(cap.stream, &cap.graph);
  });
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return capturing; });
  }
  LaunchArgs args = argsOf(bx, 2 * 1536, tokens, bq, bs);
  llvm::Error launched = b->launch(args, bStream);
  EXPECT_FALSE(bool(launched)) << consumeToString(std::move(launched));
  service.finishTuning(); // the whole tuning runs during the capture
  {
    std::lock_guard<std::mutex> lock(m);
    tunedDone = true;
  }
  cv.notify_all();
  host.join();
  checkCu(d, d.cuStreamSynchronize(bStream), "cuStreamSynchronize");
  d.cuStreamDestroy(bStream);

  ASSERT_EQ(began, CUDA_SUCCESS) << d.resultName(began);
  EXPECT_TRUE(launchError.empty()) << launchError;
  ASSERT_EQ(ended, CUDA_SUCCESS) << "the capture was invalidated: " << d.resultName(ended);
  checkCu(d, d.cuGraphInstantiate(&cap.exec, cap.graph, 0), "cuGraphInstantiate");
  auto replayed = cap.replay(1301);
  EXPECT_TRUE(replayed.ok()) << replayed.summary();
  EXPECT_TRUE(service.planner().tuning().find(tuned, regime, *profile).has_value())
      << "the uncaptured launch's regime was not tuned";
  // The captured launch asked nothing, then or since.
  service.finishTuning();
  EXPECT_FALSE(
      service.planner().tuning().find(captured, Regime::VeryFewTokens, *profile).has_value());
}

// Evicting the disk entry and forgetting the service's answers unloads
// nothing a held handle uses: it still launches and is still right.
// A host that exits while the service still compiles a new spec's other
// variants in the background: the compile in flight must finish before
// NVRTC's teardown among the exit handlers, which runs before the static
// service's destructor (runtime/compile_worker.hpp; test_compile_worker
// checks the same without a GPU). The child below is this binary run again;
// it exits while its variants compile.
TEST(GpuRuntime, ExitingWhileVariantsCompileInTheBackgroundIsClean) {
  BQJIT_REQUIRE_GPU_ENV();
  if (::getenv("BQJIT_TEST_EXIT_CHILD"))
    GTEST_SKIP() << "the child's own run";
  for (int attempt = 0; attempt < 3; ++attempt) {
    char dir[] = "/tmp/bqjit_exit_child_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    const int status = runThisBinary(std::string("BQJIT_TEST_EXIT_CHILD=1 BQJIT_CACHE_DIR=") + dir,
                                     "GpuRuntimeExitChild.*");
    llvm::consumeError(fs::removeTree(dir));
    ASSERT_TRUE(WIFEXITED(status))
        << "the child died of signal " << WTERMSIG(status) << " (attempt " << attempt << ")";
    EXPECT_EQ(WEXITSTATUS(status), 0) << "attempt " << attempt;
  }
}

// The child: a service held by a static, new specs whose other variants
// compile in the background, then exit at once.
TEST(GpuRuntimeExitChild, ExitsWithVariantsCompiling) {
  if (!::getenv("BQJIT_TEST_EXIT_CHILD"))
    GTEST_SKIP() << "run by GpuRuntime.ExitingWhileVariantsCompileInTheBackgroundIsClean";
  static std::unique_ptr<Service> service;
  auto config = Config::fromEnvironment();
  ASSERT_TRUE(bool(config)) << consumeToString(config.takeError());
  auto created = Service::create(*config);
  ASSERT_TRUE(bool(created)) << consumeToString(created.takeError());
  service = std::move(*created);
  auto driver = service->driver();
  ASSERT_TRUE(bool(driver)) << consumeToString(driver.takeError());
  auto info = (*driver)->deviceInfo(0);
  ASSERT_TRUE(bool(info)) << consumeToString(info.takeError());
  for (int g : {96, 160}) {
    KernelSpec spec;
    spec.hidden = g * 40;
    spec.groupSize = g;
    spec.arch = info->arch();
    auto k = service->getKernel(spec, 0);
    ASSERT_TRUE(bool(k)) << consumeToString(k.takeError());
  }
  std::exit(0);
}

// A host that exits while the autotuner tunes (compiles, module loads,
// timed launches on its own stream): the tuning stops at its next step and
// the process exits cleanly, at three moments of the tuning.
TEST(GpuRuntime, ExitingWhileTuningIsClean) {
  BQJIT_REQUIRE_GPU_ENV();
  if (::getenv("BQJIT_TEST_EXIT_CHILD"))
    GTEST_SKIP() << "the child's own run";
  for (int delayMs : {0, 150, 600}) {
    char dir[] = "/tmp/bqjit_exit_tune_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    const int status = runThisBinary(std::string("BQJIT_TEST_EXIT_CHILD=tune BQJIT_AUTOTUNE=1 "
                                                 "BQJIT_TEST_EXIT_DELAY_MS=") +
                                         std::to_string(delayMs) + " BQJIT_CACHE_DIR=" + dir,
                                     "GpuRuntimeExitChild.ExitsWhileTuning");
    llvm::consumeError(fs::removeTree(dir));
    ASSERT_TRUE(WIFEXITED(status))
        << "the child died of signal " << WTERMSIG(status) << " (delay " << delayMs << " ms)";
    EXPECT_EQ(WEXITSTATUS(status), 0) << "delay " << delayMs << " ms";
  }
}

// The child: a service held by a static with BQJIT_AUTOTUNE=1, one launch
// that asks for a tuning, then exit after BQJIT_TEST_EXIT_DELAY_MS.
TEST(GpuRuntimeExitChild, ExitsWhileTuning) {
  const char* child = ::getenv("BQJIT_TEST_EXIT_CHILD");
  if (!child || std::string(child) != "tune")
    GTEST_SKIP() << "run by GpuRuntime.ExitingWhileTuningIsClean";
  static std::unique_ptr<Service> service;
  auto config = Config::fromEnvironment();
  ASSERT_TRUE(bool(config)) << consumeToString(config.takeError());
  ASSERT_TRUE(config->autotune);
  auto created = Service::create(*config);
  ASSERT_TRUE(bool(created)) << consumeToString(created.takeError());
  service = std::move(*created);
  GpuEnv& env = GpuEnv::get();
  ASSERT_TRUE(env.skipReason.empty()) << env.skipReason;
  const CudaDriver& d = *env.driver;
  const KernelSpec spec = bf16Spec(3072, 128);
  auto kernel = service->getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  service->finishVariants();
  const int64_t tokens = 64;
  // Left allocated: the process exits below.
  auto* x = new DeviceBuffer(d, tokens * 2 * 3072 * 2);
  auto* q = new DeviceBuffer(d, tokens * 3072);
  auto* scales = new DeviceBuffer(d, tokens * 24 * 4);
  LaunchArgs a = argsOf(*x, 2 * 3072, tokens, *q, *scales);
  llvm::Error launched = kernel->launch(a, nullptr);
  ASSERT_FALSE(bool(launched)) << consumeToString(std::move(launched));
  const char* delay = ::getenv("BQJIT_TEST_EXIT_DELAY_MS");
  std::this_thread::sleep_for(std::chrono::milliseconds(delay ? std::atoi(delay) : 0));
  std::exit(0);
}

// FP4 with swizzled scales: where the device gets the planner's wave rule
// (an H200), a launch below the many-token regime from the planner's T on
// takes the many-token (two-vector) variant, and computes what the
// reference does; below that T, the few-token variant.
TEST(GpuRuntime, Fp4SwizzledLaunchesTakeTheManyTokenTeamsFromThePlannersT) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  auto profile = env.service->deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  for (bool mx : {false, true})
    for (int hidden : {7168, 25600}) {
      KernelSpec spec = bf16Spec(hidden, mx ? 32 : 16);
      spec.outDtype = OutDtype::FP4E2M1;
      spec.ue8m0 = mx;
      spec.scaleLayout = ScaleLayout::Swizzled128x4;
      auto plan = env.service->planner().plan(spec, *profile);
      ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
      if (plan->manyTokensFrom == INT64_MAX)
        GTEST_SKIP() << "no wave rule for FP4 on " << profile->model;
      auto kernel = env.service->getKernel(spec, 0);
      ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
      env.service->finishVariants();
      const LaunchShape many = *plan->variantFor(Regime::ManyTokens).shape;
      const int64_t from = plan->manyTokensFrom;
      std::vector<int64_t> counts = {from, from + 3};
      if (from > 1)
        counts.push_back(from - 1);
      for (int64_t tokens : counts) {
        const bool takesMany = tokens >= from;
        EXPECT_EQ(*kernel->specFor(tokens).shape == many, takesMany)
            << spec.label() << " T=" << tokens;
        GpuCase c;
        c.spec = spec;
        c.tokens = tokens;
        c.globalScale = mx ? 0.0f : 448.0f * 6.0f / 64.0f;
        c.seed = 1400 + static_cast<uint64_t>(tokens);
        auto report = runWithKernel(*kernel, c);
        EXPECT_TRUE(report.ok()) << c.name() << ": " << report.summary();
      }
    }
}

TEST(GpuRuntime, EvictingTheDiskEntryUnloadsNothingInUse) {
  BQJIT_REQUIRE_GPU_ENV();
  FreshService fresh;
  Service& service = *fresh.service;
  const KernelSpec spec = bf16Spec(2560, 128);
  auto held = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(held)) << consumeToString(held.takeError());
  ASSERT_FALSE(bool(service.cache().disk()->clear()));
  EXPECT_TRUE(service.cache().disk()->list().empty());
  service.invalidate();
  for (int64_t tokens : {3, 700, 5000}) {
    GpuCase c;
    c.spec = spec;
    c.tokens = tokens;
    c.seed = 910 + static_cast<uint64_t>(tokens);
    auto report = runWithKernel(*held, c);
    EXPECT_TRUE(report.ok()) << "T=" << tokens << ": " << report.summary();
  }
  // Asked again, the service loads anew (from its memory layer) and agrees.
  auto again = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(again)) << consumeToString(again.takeError());
  EXPECT_EQ(again->compiled().key, held->compiled().key);
}

// Hits on kernels already held go on while another thread compiles a new
// spec: every hit returns its own kernel, and none fails.
TEST(GpuRuntime, WarmHitsWhileAnotherThreadCompiles) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  std::vector<KernelSpec> specs;
  std::vector<const CompiledKernel*> compiled;
  for (int h : {1024, 1536, 2048, 3072}) {
    specs.push_back(bf16Spec(h, 128));
    auto k = env.service->getKernel(specs.back(), 0);
    ASSERT_TRUE(bool(k)) << consumeToString(k.takeError());
    compiled.push_back(&k->compiled());
  }
  std::atomic<bool> done{false};
  std::atomic<int64_t> hits{0}, wrong{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t)
    readers.emplace_back([&, t] {
      for (size_t i = t; !done.load(); ++i) {
        auto k = env.service->getKernel(specs[i % specs.size()], 0);
        if (!k) {
          llvm::consumeError(k.takeError());
          ++wrong;
        } else if (&k->compiled() != compiled[i % specs.size()]) {
          ++wrong;
        }
        ++hits;
      }
    });
  KernelSpec fresh = bf16Spec(4992, 96); // not asked for before: planned and compiled now
  auto k = env.service->getKernel(fresh, 0);
  done = true;
  for (auto& r : readers)
    r.join();
  ASSERT_TRUE(bool(k)) << consumeToString(k.takeError());
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(hits.load(), 0);
}

// A spec of the full-SM split's GPU tests (gpt-oss's parameters for swiglu).
struct FullSmCase {
  int hidden, group;
  Activation activation;
  GateUp gateUp;
  InDtype in;
  OutDtype out;
  ScaleLayout layout;
  bool ue8m0;
};

KernelSpec fullSmSpec(const FullSmCase& k) {
  KernelSpec spec = bf16Spec(k.hidden, k.group);
  spec.activation = k.activation;
  if (k.activation == Activation::Swiglu) {
    spec.alpha = 1.702f;
    spec.beta = 1.0f;
    spec.limit = 7.0f;
  }
  spec.gateUp = k.gateUp;
  spec.inDtype = k.in;
  spec.outDtype = k.out;
  spec.scaleLayout = k.layout;
  spec.ue8m0 = k.ue8m0;
  return spec;
}

// Launches of `spec` through the service's kernel at `tokens` rows (the
// plan's split T relative): the promised shape serves exactly the T from
// plan.fullSmFrom below plan.manyTokensFrom, the many-token teams those
// from manyTokensFrom, and each launch computes what the reference does.
// Skips where the device gets no split.
void expectFullSmSplit(const FullSmCase& k,
                       const std::function<std::vector<int64_t>(const LaunchPlan&)>& tokens,
                       uint64_t seed) {
  GpuEnv& env = GpuEnv::get();
  auto profile = env.service->deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  const KernelSpec spec = fullSmSpec(k);
  auto plan = env.service->planner().plan(spec, *profile);
  ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
  if (plan->fullSmFrom == INT64_MAX)
    GTEST_SKIP() << "no full-SM split for " << spec.label() << " on " << profile->model;
  ASSERT_LT(plan->fullSmFrom, plan->manyTokensFrom) << spec.label();
  auto kernel = env.service->getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  env.service->finishVariants();
  const LaunchShape many = *plan->variantFor(Regime::ManyTokens).shape;
  for (int64_t t : tokens(*plan)) {
    const LaunchShape shape = *kernel->specFor(t).shape;
    EXPECT_EQ(shape.minBlocksPerSm == 8, t >= plan->fullSmFrom && t < plan->manyTokensFrom)
        << spec.label() << " T=" << t;
    EXPECT_EQ(shape == many, t >= plan->manyTokensFrom) << spec.label() << " T=" << t;
    GpuCase c;
    c.spec = spec;
    c.tokens = t;
    c.globalScale = spec.needsGlobalScale() ? 448.0f * 6.0f / 64.0f : 0.0f;
    c.seed = seed + static_cast<uint64_t>(t);
    auto report = runWithKernel(*kernel, c);
    EXPECT_TRUE(report.ok()) << c.name() << ": " << report.summary();
  }
}

// 8-bit outputs: where the device gets the planner's full-SM split of the
// few-token regime (an H200), few-token launches from the planner's T on take
// the promised shape and compute what the reference does, with every
// sigmoid-family activation, fp16 and e5m2, and the layouts the rule serves;
// below that T, the few-token shape.
TEST(GpuRuntime, EightBitFewTokenLaunchesTakeTheFullSmPromiseFromThePlannersT) {
  BQJIT_REQUIRE_GPU_ENV();
  const FullSmCase cases[] = {
      {3072, 128, Activation::Silu, GateUp::Split, InDtype::BF16, OutDtype::FP8E4M3,
       ScaleLayout::Row, false},
      {7168, 128, Activation::Swiglu, GateUp::Interleaved, InDtype::FP16, OutDtype::FP8E4M3,
       ScaleLayout::Col, false},
      {3072, 64, Activation::GeluTanh, GateUp::Split, InDtype::BF16, OutDtype::FP8E5M2,
       ScaleLayout::Ue8m0Packed, true},
      {2880, 32, Activation::Swiglu, GateUp::Interleaved, InDtype::BF16, OutDtype::FP8E4M3,
       ScaleLayout::Swizzled128x4, true},
  };
  for (const FullSmCase& k : cases)
    expectFullSmSplit(
        k,
        [&](const LaunchPlan& plan) {
          const int64_t lastFew = regimeMaxElements(Regime::FewTokens) / k.hidden;
          return std::vector<int64_t>{plan.fullSmFrom - 1, plan.fullSmFrom, plan.fullSmFrom + 1,
                                      lastFew};
        },
        1500);
}

// FP4 with swizzled_128x4 scales: where the device gets the planner's
// full-SM split (an H200), few-token launches from its T up to the T of the
// many-token teams take the one-vector shape promised a full SM, and compute
// what the reference does: NVFP4 and MXFP4, fp16, gpt-oss's interleaved
// swiglu and gelu_tanh, odd T with padding rows in the last tile; below the
// split the few-token shape, from the many-token T the two-vector teams.
TEST(GpuRuntime, Fp4SwizzledFewTokenLaunchesTakeTheFullSmPromiseBelowTheManyTokenTeams) {
  BQJIT_REQUIRE_GPU_ENV();
  const OutDtype fp4 = OutDtype::FP4E2M1;
  const ScaleLayout swizzled = ScaleLayout::Swizzled128x4;
  const FullSmCase cases[] = {
      {2048, 16, Activation::Silu, GateUp::Split, InDtype::BF16, fp4, swizzled, false},
      {2880, 32, Activation::Swiglu, GateUp::Interleaved, InDtype::BF16, fp4, swizzled, true},
      {5120, 16, Activation::GeluTanh, GateUp::Split, InDtype::FP16, fp4, swizzled, false},
      {4096, 32, Activation::Silu, GateUp::Split, InDtype::FP16, fp4, swizzled, true},
  };
  for (const FullSmCase& k : cases)
    expectFullSmSplit(
        k,
        [](const LaunchPlan& plan) {
          return std::vector<int64_t>{plan.fullSmFrom - 1, plan.fullSmFrom, plan.fullSmFrom + 2,
                                      plan.manyTokensFrom - 1, plan.manyTokensFrom};
        },
        1600);
}

} // namespace
} // namespace bqjit::test
