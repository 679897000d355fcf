// Programmatic dependent launch at decode sizes, on a GPU: a CUDA graph of
// pairs (a producer kernel that writes x, then bqjit's kernel reading it),
// with and without bqjit's launch attribute, beside graphs of each kernel
// alone. Prints one table and writes JSON (--json FILE).
//
//   bench_pdl [--pairs N] [--reps R] [--json FILE]
//
// The producer stands for the GEMM before the activation: it copies x from a
// source buffer after spinning `spin` ns (0, or a few microseconds as a
// decode GEMM takes) and lets its dependents launch at its start, as GEMMs
// with PDL support do (griddepcontrol.launch_dependents). Time per pair is
// the graph's time over N pairs, the median of R graph launches.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <stdlib.h>

#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"
#include "bqjit/service.hpp"
#include "jit/nvrtc_program.hpp"
#include "runtime/cuda_driver.hpp"

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_pdl: %s\n", what.c_str());
  std::exit(1);
}

void check(const bqjit::CudaDriver& d, CUresult r, const char* what) {
  if (auto err = d.check(r, what))
    die(bqjit::consumeToString(std::move(err)));
}

template <class T> T ok(llvm::Expected<T> v, const char* what) {
  if (!v)
    die(std::string(what) + ": " + bqjit::consumeToString(v.takeError()));
  return std::move(*v);
}

const char* kProducer = R"(
extern "C" __global__ void produce(const uint4* __restrict__ src, uint4* __restrict__ dst,
                                   long long n, long long spinNs) {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
  if (spinNs > 0) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < static_cast<unsigned long long>(spinNs));
  }
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}
)";

} // namespace

int main(int argc, char** argv) {
  int pairs = 100, reps = 21;
  std::string jsonPath;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--pairs") && i + 1 < argc)
      pairs = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc)
      reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--json") && i + 1 < argc)
      jsonPath = argv[++i];
    else
      die(std::string("unknown argument '") + argv[i] +
          "' (usage: bench_pdl [--pairs N] [--reps R] [--json FILE])");
  }
  if (pairs < 1 || reps < 1)
    die("--pairs and --reps must be >= 1");

  auto config = ok(bqjit::Config::fromEnvironment(), "configuration");
  auto service = ok(bqjit::Service::create(config), "Service::create");
  auto driverPtr = ok(service->driver(), "driver (bench_pdl needs a GPU)");
  const bqjit::CudaDriver& d = *driverPtr;
  if (auto err = d.requireToolEntryPoints())
    die(bqjit::consumeToString(std::move(err)));
  auto info = ok(d.deviceInfo(0), "deviceInfo");
  if (info.ccMajor < 9) {
    std::printf("bench_pdl: %s is %s; programmatic dependent launch needs sm_90 or newer\n",
                info.name.c_str(), info.arch().c_str());
    return 0;
  }
  CUcontext ctx = nullptr;
  check(d, d.cuDevicePrimaryCtxRetain(&ctx, 0), "cuDevicePrimaryCtxRetain");
  check(d, d.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
  CUstream stream = nullptr;
  check(d, d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  CUevent start = nullptr, stop = nullptr;
  check(d, d.cuEventCreate(&start, CU_EVENT_DEFAULT), "cuEventCreate");
  check(d, d.cuEventCreate(&stop, CU_EVENT_DEFAULT), "cuEventCreate");

  auto program = ok(bqjit::NvrtcProgram::create(kProducer, "produce.cu", {}, {}), "NVRTC");
  if (auto err = program.compile({"--gpu-architecture=" + info.arch(), "--std=c++17"}))
    die(bqjit::consumeToString(std::move(err)));
  auto cubin = ok(program.cubin(), "cubin");
  CUlibrary library = nullptr;
  CUkernel producerKernel = nullptr;
  CUfunction produce = nullptr;
  check(d, d.cuLibraryLoadData(&library, cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0),
        "cuLibraryLoadData");
  check(d, d.cuLibraryGetKernel(&producerKernel, library, "produce"), "cuLibraryGetKernel");
  check(d, d.cuKernelGetFunction(&produce, producerKernel), "cuKernelGetFunction");

  nlohmann::json out = {{"gpu", info.name},
                        {"arch", info.arch()},
                        {"pairs", pairs},
                        {"reps", reps},
                        {"rows", nlohmann::json::array()}};
  std::printf("programmatic dependent launch on %s (%s): graphs of %d pairs (producer, bqjit), "
              "median of %d graph launches, us per pair\n",
              info.name.c_str(), info.arch().c_str(), pairs, reps);
  std::printf("%6s %5s %4s %7s | %9s %9s | %9s %9s %8s | %s\n", "H", "T", "G", "spin_ns",
              "producer", "bqjit", "pair", "pair+PDL", "saved", "same output");

  for (int hidden : {2048, 7168, 18432})
    for (int tokens : {1, 16, 64})
      for (long long spinNs : {0LL, 5000LL}) {
        bqjit::KernelSpec spec;
        spec.hidden = hidden;
        spec.groupSize = 128;
        spec.arch = info.arch();
        auto kernel = ok(service->getKernel(spec, 0), "getKernel");
        const long long xBytes = 2LL * hidden * tokens * 2;
        const long long qBytes = 1LL * hidden * tokens;
        const long long sBytes = 4LL * (hidden / 128) * tokens;
        CUdeviceptr src = 0, x = 0, q = 0, s = 0, qRef = 0;
        check(d, d.cuMemAlloc(&src, xBytes), "cuMemAlloc");
        check(d, d.cuMemAlloc(&x, xBytes), "cuMemAlloc");
        check(d, d.cuMemAlloc(&q, qBytes), "cuMemAlloc");
        check(d, d.cuMemAlloc(&qRef, qBytes), "cuMemAlloc");
        check(d, d.cuMemAlloc(&s, sBytes), "cuMemAlloc");
        std::vector<uint16_t> host(xBytes / 2);
        for (size_t i = 0; i < host.size(); ++i)
          host[i] = static_cast<uint16_t>(0x3c00 + (i * 2654435761u >> 20) % 0x0400) ^
                    static_cast<uint16_t>((i & 1) << 15); // bf16 in +-[0.0078, 0.0156)
        check(d, d.cuMemcpyHtoD(src, host.data(), xBytes), "upload");
        check(d, d.cuMemsetD8(x, 0, xBytes), "memset");

        long long n = xBytes / 16;
        unsigned producerBlocks =
            static_cast<unsigned>(std::max(1LL, std::min(1056LL, (n + 255) / 256)));
        void* producerParams[] = {&src, &x, &n, &spinNs};
        bqjit::LaunchArgs a;
        a.x = reinterpret_cast<const void*>(x);
        a.ldx = 2LL * hidden;
        a.tokens = tokens;
        a.q = reinterpret_cast<void*>(q);
        a.scales = reinterpret_cast<void*>(s);

        // 0: producer alone, 1: bqjit alone, 2: pairs, 3: pairs with PDL.
        auto timeGraph = [&](int mode) {
          CUgraph graph = nullptr;
          check(d, d.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_RELAXED), "capture");
          for (int p = 0; p < pairs; ++p) {
            if (mode != 1)
              check(d,
                    d.cuLaunchKernel(produce, producerBlocks, 1, 1, 256, 1, 1, 0, stream,
                                     producerParams, nullptr),
                    "producer launch");
            if (mode != 0) {
              a.programmaticDependentLaunch = mode == 3;
              if (auto err = kernel.launch(a, stream))
                die(bqjit::consumeToString(std::move(err)));
            }
          }
          check(d, d.cuStreamEndCapture(stream, &graph), "cuStreamEndCapture");
          CUgraphExec exec = nullptr;
          check(d, d.cuGraphInstantiate(&exec, graph, 0), "cuGraphInstantiate");
          std::vector<double> us;
          for (int r = -2; r < reps; ++r) {
            check(d, d.cuEventRecord(start, stream), "record");
            check(d, d.cuGraphLaunch(exec, stream), "cuGraphLaunch");
            check(d, d.cuEventRecord(stop, stream), "record");
            check(d, d.cuEventSynchronize(stop), "sync");
            float ms = 0;
            check(d, d.cuEventElapsedTime(&ms, start, stop), "elapsed");
            if (r >= 0)
              us.push_back(1000.0 * ms / pairs);
          }
          d.cuGraphExecDestroy(exec);
          d.cuGraphDestroy(graph);
          std::sort(us.begin(), us.end());
          return us[us.size() / 2];
        };
        const double producerUs = timeGraph(0);
        const double bqjitUs = timeGraph(1);
        const double pairUs = timeGraph(2);
        check(d, d.cuMemcpyDtoD(qRef, q, qBytes), "copy q");
        check(d, d.cuMemsetD8(q, 0xff, qBytes), "poison q");
        check(d, d.cuMemsetD8(x, 0, xBytes), "reset x");
        const double pdlUs = timeGraph(3);
        std::vector<uint8_t> q1(qBytes), q2(qBytes);
        check(d, d.cuMemcpyDtoH(q1.data(), qRef, qBytes), "download");
        check(d, d.cuMemcpyDtoH(q2.data(), q, qBytes), "download");
        const bool same = q1 == q2;
        std::printf("%6d %5d %4d %7lld | %9.2f %9.2f | %9.2f %9.2f %+8.2f | %s\n", hidden, tokens,
                    128, spinNs, producerUs, bqjitUs, pairUs, pdlUs, pairUs - pdlUs,
                    same ? "yes" : "NO");
        out["rows"].push_back({{"hidden", hidden},
                               {"tokens", tokens},
                               {"group_size", 128},
                               {"spin_ns", spinNs},
                               {"producer_us", producerUs},
                               {"bqjit_us", bqjitUs},
                               {"pair_us", pairUs},
                               {"pair_pdl_us", pdlUs},
                               {"saved_us", pairUs - pdlUs},
                               {"same_output", same}});
        for (CUdeviceptr p : {src, x, q, qRef, s})
          d.cuMemFree(p);
        if (!same)
          die("the output with PDL differs from the output without it");
      }
  if (!jsonPath.empty())
    std::ofstream(jsonPath) << out.dump(2) << "\n";
  return 0;
}
