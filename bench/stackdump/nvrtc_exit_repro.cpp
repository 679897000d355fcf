// A reproducer for the autotuner's exit hang without bqjit (bench/NOTES.md,
// fourteenth session): a thread compiles with NVRTC in a loop (and, with
// REPRO_CUDA=1, loads each cubin with the driver on its own thread, as the
// tuner does); the main thread exits REPRO_DELAY_MS after the first compile,
// and an exit handler registered after NVRTC's own (they are registered when
// libnvrtc loads) stops the thread and joins it. Each compile's start, end
// and duration go to stderr with the time since start, so a compile that
// slows or never ends once exit() began shows.
#include <nvrtc.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <dlfcn.h>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
const Clock::time_point t0 = Clock::now();
std::atomic<bool> stop{false};
std::atomic<bool> exiting{false};
std::thread worker;

double ms() { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

std::string source() {
  std::string s = "template <int N> __global__ void k(float* p, int n) {\n"
                  "  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
                  "  float v = i < n ? p[i] : 0.f;\n"
                  "  for (int j = 0; j < N % 7 + 3; ++j) v = v * 1.0001f + __expf(-v) / (1.f + v * v);\n"
                  "  if (i < n) p[i] = v;\n}\n";
  for (int i = 0; i < 6; ++i)
    s += "template __global__ void k<" + std::to_string(i) + ">(float*, int);\n";
  return s;
}

using CuInit = int (*)(unsigned);
using CuDeviceGet = int (*)(int*, int);
using CuRetain = int (*)(void**, int);
using CuSetCurrent = int (*)(void*);
using CuModuleLoadData = int (*)(void**, const void*);
using CuModuleUnload = int (*)(void*);

struct Driver {
  CuInit init = nullptr;
  CuDeviceGet deviceGet = nullptr;
  CuRetain retain = nullptr;
  CuSetCurrent setCurrent = nullptr;
  CuModuleLoadData load = nullptr;
  CuModuleUnload unload = nullptr;
  void* ctx = nullptr;
} driver;

bool compileOnce(int i, std::vector<char>* cubin) {
  const std::string src = source() + "// " + std::to_string(i) + "\n";
  nvrtcProgram p;
  if (nvrtcCreateProgram(&p, src.c_str(), "repro.cu", 0, nullptr, nullptr) != NVRTC_SUCCESS)
    return false;
  const char* opts[] = {"--gpu-architecture=sm_90", "--std=c++17"};
  const double start = ms();
  const bool inExit = exiting.load();
  nvrtcResult r = nvrtcCompileProgram(p, 2, opts);
  std::fprintf(stderr, "[%8.1f ms] compile %d: %.1f ms%s (%s)\n", ms(), i, ms() - start,
               inExit ? " (started in exit)" : (exiting.load() ? " (exit began during it)" : ""),
               nvrtcGetErrorString(r));
  size_t size = 0;
  if (r == NVRTC_SUCCESS && nvrtcGetCUBINSize(p, &size) == NVRTC_SUCCESS) {
    cubin->resize(size);
    nvrtcGetCUBIN(p, cubin->data());
  }
  nvrtcDestroyProgram(&p);
  return r == NVRTC_SUCCESS;
}

void stopWorker() {
  std::fprintf(stderr, "[%8.1f ms] exit handler: stopping the worker\n", ms());
  stop = true;
  if (worker.joinable())
    worker.join();
  std::fprintf(stderr, "[%8.1f ms] exit handler: joined\n", ms());
}

} // namespace

int main() {
  const char* delayText = std::getenv("REPRO_DELAY_MS");
  const int delay = delayText ? std::atoi(delayText) : 150;
  const bool cuda = std::getenv("REPRO_CUDA") && std::atoi(std::getenv("REPRO_CUDA")) != 0;
  if (cuda) {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) {
      std::fprintf(stderr, "no libcuda.so.1\n");
      return 2;
    }
    driver.init = (CuInit)dlsym(lib, "cuInit");
    driver.deviceGet = (CuDeviceGet)dlsym(lib, "cuDeviceGet");
    driver.retain = (CuRetain)dlsym(lib, "cuDevicePrimaryCtxRetain");
    driver.setCurrent = (CuSetCurrent)dlsym(lib, "cuCtxSetCurrent");
    driver.load = (CuModuleLoadData)dlsym(lib, "cuModuleLoadData");
    driver.unload = (CuModuleUnload)dlsym(lib, "cuModuleUnload");
    int dev = 0;
    if (driver.init(0) != 0 || driver.deviceGet(&dev, 0) != 0 || driver.retain(&driver.ctx, dev) != 0) {
      std::fprintf(stderr, "CUDA init failed\n");
      return 2;
    }
  }
  std::vector<char> cubin;
  compileOnce(-1, &cubin); // on the main thread, as bqjit's first compile is
  std::atexit(stopWorker);
  worker = std::thread([cuda] {
    if (cuda)
      driver.setCurrent(driver.ctx);
    std::vector<char> bytes;
    for (int i = 0; !stop.load(); ++i) {
      if (!compileOnce(i, &bytes))
        break;
      if (cuda && !bytes.empty()) {
        void* module = nullptr;
        if (driver.load(&module, bytes.data()) == 0)
          driver.unload(module);
      }
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(delay));
  std::fprintf(stderr, "[%8.1f ms] main: exit(0)\n", ms());
  exiting = true;
  std::exit(0);
}
