// The warm path on a GPU: what a host pays to ask the service again for a
// kernel it already holds, beside a raw cuLaunchKernel of an empty kernel in
// the same process. Prints one table and writes JSON (--json FILE).
//
//   warm_path [--calls N] [--json FILE]
//
// Rows (medians of N calls after warm-up, host time per call):
//   raw cuLaunchKernel (empty kernel), C++ Service::getKernel hit,
//   C API get with JSON and with a prepared spec, bqjit_kernel_launch T=1;
//   16 threads hitting 64 specs (per-call time against one thread);
//   hits while another thread compiles a new spec (p50, p99, max).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <stdlib.h>
#include <sys/resource.h>

#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"
#include "bqjit/service.hpp"
#include "cache/kernel_cache.hpp"
#include "jit/nvrtc_program.hpp"
#include "runtime/cuda_driver.hpp"
#include "warm_path_c.h"

namespace {

using Clock = std::chrono::steady_clock;
using bqjit::KernelSpec;

double usSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

struct Stats {
  double p50 = 0, p99 = 0, max = 0, mean = 0;
  size_t n = 0;
};

Stats stats(std::vector<double> v) {
  Stats s;
  s.n = v.size();
  if (v.empty())
    return s;
  std::sort(v.begin(), v.end());
  s.p50 = v[v.size() / 2];
  s.p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
  s.max = v.back();
  double sum = 0;
  for (double x : v)
    sum += x;
  s.mean = sum / v.size();
  return s;
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "warm_path: %s\n", what.c_str());
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

KernelSpec specOf(int hidden, int group, const std::string& arch) {
  KernelSpec s;
  s.hidden = hidden;
  s.groupSize = group;
  s.arch = arch;
  return s;
}

} // namespace

int main(int argc, char** argv) {
  int calls = 20000;
  std::string jsonPath;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--calls") && i + 1 < argc)
      calls = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--json") && i + 1 < argc)
      jsonPath = argv[++i];
    else
      die(std::string("unknown argument '") + argv[i] +
          "' (usage: warm_path [--calls N] [--json FILE])");
  }
  const int warmup = std::max(100, calls / 10);

  auto config = ok(bqjit::Config::fromEnvironment(), "configuration");
  auto service = ok(bqjit::Service::create(config), "Service::create");
  auto driverPtr = ok(service->driver(), "driver");
  const bqjit::CudaDriver& d = *driverPtr;
  auto info = ok(d.deviceInfo(0), "deviceInfo");
  CUcontext ctx = nullptr;
  check(d, d.cuDevicePrimaryCtxRetain(&ctx, 0), "cuDevicePrimaryCtxRetain");
  check(d, d.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
  CUstream stream = nullptr;
  check(d, d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  nlohmann::json out = {{"gpu", info.name}, {"arch", info.arch()}, {"calls", calls}};
  std::printf("warm path on %s (%s), median of %d calls after %d warm-up calls\n",
              info.name.c_str(), info.arch().c_str(), calls, warmup);
  auto row = [&](const char* key, const char* label, const Stats& s) {
    std::printf("  %-46s p50 %8.3f us  p99 %8.3f us  max %9.3f us\n", label, s.p50, s.p99, s.max);
    out[key] = {{"p50_us", s.p50}, {"p99_us", s.p99}, {"max_us", s.max}, {"mean_us", s.mean}};
  };

  // A raw launch of an empty kernel: the floor any launch path stands on.
  auto program = ok(
      bqjit::NvrtcProgram::create("extern \"C\" __global__ void empty() {}\n", "empty.cu", {}, {}),
      "NVRTC");
  if (auto err = program.compile({"--gpu-architecture=" + info.arch()}))
    die(bqjit::consumeToString(std::move(err)));
  auto cubin = ok(program.cubin(), "cubin");
  CUlibrary library = nullptr;
  CUkernel kernelHandle = nullptr;
  CUfunction empty = nullptr;
  check(d, d.cuLibraryLoadData(&library, cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0),
        "cuLibraryLoadData");
  check(d, d.cuLibraryGetKernel(&kernelHandle, library, "empty"), "cuLibraryGetKernel");
  check(d, d.cuKernelGetFunction(&empty, kernelHandle), "cuKernelGetFunction");
  std::vector<double> t(calls);
  for (int i = -warmup; i < calls; ++i) {
    const auto t0 = Clock::now();
    check(d, d.cuLaunchKernel(empty, 1, 1, 1, 32, 1, 1, 0, stream, nullptr, nullptr), "launch");
    if (i >= 0)
      t[i] = usSince(t0);
  }
  check(d, d.cuStreamSynchronize(stream), "sync");
  const Stats raw = stats(t);
  row("raw_launch", "raw cuLaunchKernel (empty kernel)", raw);

  // C++: a hit on a kernel the service already holds.
  const KernelSpec spec = specOf(7168, 128, info.arch());
  auto held = ok(service->getKernel(spec, 0), "getKernel (cold)");
  for (int i = -warmup; i < calls; ++i) {
    const auto t0 = Clock::now();
    auto k = service->getKernel(spec, 0);
    const double us = usSince(t0);
    if (!k)
      die(bqjit::consumeToString(k.takeError()));
    if (i >= 0)
      t[i] = us;
  }
  const Stats cppHit = stats(t);
  row("cpp_get_hit", "C++ Service::getKernel, hit", cppHit);
  for (int i = -warmup; i < calls; ++i) {
    const auto t0 = Clock::now();
    auto k = service->getKernel(spec, -1);
    const double us = usSince(t0);
    if (!k)
      die(bqjit::consumeToString(k.takeError()));
    if (i >= 0)
      t[i] = us;
  }
  row("cpp_get_hit_current_device", "C++ Service::getKernel(device -1), hit", stats(t));

  // C: JSON, prepared spec, launch with a held handle (T = 1).
  CUdeviceptr x = 0, q = 0, scales = 0;
  check(d, d.cuMemAlloc(&x, 2 * 7168 * 2), "cuMemAlloc x");
  check(d, d.cuMemAlloc(&q, 7168), "cuMemAlloc q");
  check(d, d.cuMemAlloc(&scales, 7168 / 128 * 4), "cuMemAlloc scales");
  check(d, d.cuMemsetD8(x, 0, 2 * 7168 * 2), "cuMemsetD8");
  // The hits above asked for H = 7168, G = 128, whose other variants may
  // still compile in the background (an empty BQJIT_CACHE_DIR): the new spec
  // below is timed alone, not beside them.
  service->finishVariants();
  // A new spec in this process (CUDA initialized) with an empty cache: from
  // getKernel to the first launch's return, then the same spec from a second
  // service on that cache (a warm disk hit). H = 7168 with another group size
  // than the rest of this benchmark, so nothing is in memory.
  {
    char tmpl[] = "/tmp/bqjit_cold_XXXXXX";
    if (!::mkdtemp(tmpl))
      die("mkdtemp failed");
    bqjit::Config coldConfig = config;
    coldConfig.cacheDir = tmpl;
    coldConfig.noCompile = false;
    const KernelSpec cold = specOf(7168, 112, info.arch());
    // A second new spec after the first: NVRTC is then loaded and warm in
    // this process, which tells its first-use cost from the compile's own.
    const KernelSpec cold2 = specOf(7168, 224, info.arch());
    bqjit::LaunchArgs args;
    args.x = reinterpret_cast<const void*>(x);
    args.ldx = 2 * 7168;
    args.tokens = 1;
    args.q = reinterpret_cast<void*>(q);
    args.scales = reinterpret_cast<void*>(scales);
    struct Step {
      const char* key;
      const char* label;
      const KernelSpec& spec;
    };
    const Step steps[] = {
        {"cold_spec_first_launch_ms", "new spec, empty cache: getKernel + first launch", cold},
        {"disk_hit_first_launch_ms", "same spec, new service: disk hit + first launch", cold},
        {"second_cold_spec_first_launch_ms", "second new spec (NVRTC warm): + first launch", cold2},
    };
    for (const Step& step : steps) {
      auto fresh = ok(bqjit::Service::create(coldConfig), "Service::create");
      // This thread's CPU time and page faults over getKernel: a compile
      // that takes longer than usual either computes longer (CPU time near
      // the wall time) or waits (for the disk, a lock, another process).
      rusage before{}, after{};
      ::getrusage(RUSAGE_THREAD, &before);
      const auto t0 = Clock::now();
      auto k = ok(fresh->getKernel(step.spec, 0), "getKernel (new spec)");
      const double getMs = usSince(t0) / 1000.0;
      ::getrusage(RUSAGE_THREAD, &after);
      const auto cpuMs = [](const timeval& a, const timeval& b) {
        return (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_usec - a.tv_usec) / 1e3;
      };
      const double userMs = cpuMs(before.ru_utime, after.ru_utime);
      const double sysMs = cpuMs(before.ru_stime, after.ru_stime);
      // Read before the background compiles of the other variants finish.
      const bqjit::CacheCounters counters = fresh->cache().counters();
      if (auto err = k.launch(args, stream))
        die(bqjit::consumeToString(std::move(err)));
      check(d, d.cuStreamSynchronize(stream), "sync");
      const double ms = usSince(t0) / 1000.0;
      std::printf("  %-46s %8.1f ms (getKernel %.1f ms, of which NVRTC %.1f ms in %lld "
                  "compile(s); this thread's CPU %.1f ms user + %.1f ms system, %ld minor and "
                  "%ld major page faults, %ld waits, %ld preemptions)\n",
                  step.label, ms, getMs, counters.compileMs,
                  static_cast<long long>(counters.compiles), userMs, sysMs,
                  after.ru_minflt - before.ru_minflt, after.ru_majflt - before.ru_majflt,
                  after.ru_nvcsw - before.ru_nvcsw, after.ru_nivcsw - before.ru_nivcsw);
      out[step.key] = ms;
      out[std::string(step.key) + "_cpu_user_ms"] = userMs;
      out[std::string(step.key) + "_cpu_sys_ms"] = sysMs;
      out[std::string(step.key) + "_minor_faults"] = after.ru_minflt - before.ru_minflt;
      out[std::string(step.key) + "_nvrtc_ms"] = counters.compileMs;
    }
    std::filesystem::remove_all(tmpl);
  }
  std::vector<double> json(calls), prepared(calls), launch(calls);
  c_api_times times{json.data(), prepared.data(), launch.data()};
  const std::string specJson =
      R"({"hidden": 7168, "group_size": 128, "arch": ")" + info.arch() + R"("})";
  if (bench_c_api(specJson.c_str(), 7168, x, q, scales, stream, warmup, calls, &times) != 0)
    die("C API benchmark failed");
  check(d, d.cuStreamSynchronize(stream), "sync");
  row("c_get_json_hit", "C bqjit_kernel_get (JSON), hit", stats(json));
  row("c_get_prepared_hit", "C bqjit_kernel_get_spec (prepared), hit", stats(prepared));
  const Stats cLaunch = stats(launch);
  row("c_launch_t1", "C bqjit_kernel_launch, T=1", cLaunch);
  std::printf("  bqjit_kernel_launch over the raw launch: %+.3f us (p50)\n", cLaunch.p50 - raw.p50);
  out["launch_over_raw_us"] = cLaunch.p50 - raw.p50;

  // 16 threads hitting 64 different specs, against one thread doing the same.
  // Explicit shapes: one kernel each, compiled on 16 threads.
  std::vector<KernelSpec> specs;
  for (int i = 0; i < 64; ++i) {
    KernelSpec s = specOf(1024 * (1 + i / 2), (i % 2) ? 64 : 128, info.arch());
    s.shape = bqjit::LaunchShape{8, 8, 32};
    specs.push_back(s);
  }
  {
    std::vector<std::thread> pool;
    for (int t = 0; t < 16; ++t)
      pool.emplace_back([&, t] {
        for (size_t i = t; i < specs.size(); i += 16)
          ok(service->getKernel(specs[i], 0), "getKernel (64 specs)");
      });
    for (auto& th : pool)
      th.join();
  }
  auto perCall = [&](int threads) {
    const int each = calls;
    std::vector<double> perThread(threads);
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        ++ready;
        while (!go.load())
          ;
        const auto t0 = Clock::now();
        for (int i = 0; i < each; ++i) {
          auto k = service->getKernel(specs[(t * 5 + i) % specs.size()], 0);
          if (!k)
            die(bqjit::consumeToString(k.takeError()));
        }
        perThread[t] = usSince(t0) / each;
      });
    while (ready.load() < threads)
      ;
    go = true;
    for (auto& th : pool)
      th.join();
    return stats(perThread);
  };
  perCall(1); // warm-up
  const Stats one = perCall(1);
  const Stats eight = perCall(8);
  const Stats sixteen = perCall(16);
  std::printf("  64 specs, 8 threads:  %.3f us per call (median thread), %.2fx one thread\n",
              eight.p50, eight.p50 / one.p50);
  out["threads_8_us"] = eight.p50;
  std::printf("  64 specs, 1 thread:   %.3f us per call\n", one.p50);
  std::printf("  64 specs, 16 threads: %.3f us per call (median thread; max thread %.3f us), "
              "%.2fx one thread (%u hardware threads)\n",
              sixteen.p50, sixteen.max, sixteen.p50 / one.p50, std::thread::hardware_concurrency());
  out["threads_1_us"] = one.p50;
  out["threads_16_us"] = sixteen.p50;
  out["threads_16_max_us"] = sixteen.max;
  out["threads_16_ratio"] = sixteen.p50 / one.p50;
  out["hardware_threads"] = std::thread::hardware_concurrency();

  // Hits while another thread plans and compiles a spec never asked for.
  std::vector<double> quiet;
  for (int i = 0; i < calls; ++i) {
    const auto t0 = Clock::now();
    auto k = service->getKernel(spec, 0);
    quiet.push_back(usSince(t0));
  }
  std::atomic<bool> compiling{true};
  double compileMs = 0;
  std::thread compiler([&] {
    const auto t0 = Clock::now();
    // A spec no earlier run left in the disk cache: 3 variants planned and
    // compiled now.
    const int hidden = 176 * (64 + static_cast<int>(std::time(nullptr) % 300));
    auto k = service->getKernel(specOf(hidden, 176, info.arch()), 0);
    compileMs = usSince(t0) / 1000;
    if (!k)
      die(bqjit::consumeToString(k.takeError()));
    compiling = false;
  });
  std::vector<double> during;
  while (compiling.load()) {
    const auto t0 = Clock::now();
    auto k = service->getKernel(spec, 0);
    during.push_back(usSince(t0));
  }
  compiler.join();
  row("hit_quiet", "hit, nothing else running", stats(quiet));
  const Stats busy = stats(during);
  char label[96];
  std::snprintf(label, sizeof label, "hit while a compile runs (%.0f ms, %zu hits)", compileMs,
                during.size());
  row("hit_during_compile", label, busy);
  out["compile_ms"] = compileMs;
  check(d, d.cuStreamSynchronize(stream), "sync");
  d.cuMemFree(x);
  d.cuMemFree(q);
  d.cuMemFree(scales);
  d.cuLibraryUnload(library);
  d.cuStreamDestroy(stream);
  if (!jsonPath.empty())
    std::ofstream(jsonPath) << out.dump(2) << "\n";
  return 0;
}
