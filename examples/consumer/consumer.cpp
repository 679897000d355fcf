// A host application that uses an installed bqjit (the README's C++ example):
// it asks the service for the kernel of a spec, which compiles it (no GPU
// needed), and on a GPU launches it on its own CUDA stream and checks the
// result against a CPU reference of docs/contract.md.
//
// Exit status: 0 checked on a GPU; 77 no GPU (the kernel compiled); 1 error
// or mismatch.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "bqjit/error.hpp"
#include "bqjit/service.hpp"

namespace {

int fail(llvm::Error err) {
  std::fprintf(stderr, "consumer: %s\n", bqjit::consumeToString(std::move(err)).c_str());
  return 1;
}

int fail(const char* what, cudaError_t status) {
  std::fprintf(stderr, "consumer: %s: %s\n", what, cudaGetErrorString(status));
  return 1;
}

float fromBf16(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t toBf16(float f) { // round to nearest even (no NaN here)
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return uint16_t((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

float fromE4m3(uint8_t b) { // OCP e4m3fn: bias 7, no infinities, 0x7f/0xff NaN
  const int e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7)
    return NAN;
  const float v = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(1.0f + m / 8.0f, e - 7);
  return (b & 0x80) ? -v : v;
}

/// Checks q and the scales (layout row, bf16 -> fp8_e4m3) against the CPU:
/// y = silu(gate) * up in fp32, s = max(amax / 448, 1 / (448 * 512)); each
/// scale within 1e-6 relative, each q the e4m3 value nearest y / s (up to
/// 1e-5 relative, for the device's expf). Returns the number of mismatches.
long check(const std::vector<uint16_t>& x, int64_t tokens, int hidden, int group,
           const std::vector<uint8_t>& q, const std::vector<float>& scales) {
  std::vector<float> grid; // the non-negative e4m3 values, 0 to 448
  for (int b = 0; b < 0x7f; ++b)
    grid.push_back(fromE4m3(uint8_t(b)));
  long bad = 0;
  std::vector<float> y(group);
  for (int64_t t = 0; t < tokens; ++t)
    for (int j = 0; j < hidden / group; ++j) {
      float amax = 0.0f;
      for (int k = 0; k < group; ++k) {
        const int i = j * group + k;
        const float g = fromBf16(x[t * 2 * hidden + i]),
                    u = fromBf16(x[t * 2 * hidden + hidden + i]);
        y[k] = g / (1.0f + std::exp(-g)) * u;
        amax = std::fmax(amax, std::fabs(y[k]));
      }
      const float s = std::fmax(amax / 448.0f, 1.0f / (448.0f * 512.0f));
      const float deviceScale = scales[t * (hidden / group) + j];
      if (std::fabs(deviceScale - s) > 1e-6f * s) {
        if (bad++ < 5)
          std::fprintf(stderr, "consumer: scale (t=%lld, group %d) %g, expected %g\n",
                       static_cast<long long>(t), j, deviceScale, s);
        continue;
      }
      for (int k = 0; k < group; ++k) {
        const float v = std::fmax(std::fmin(y[k] / deviceScale, 448.0f), -448.0f);
        float nearest = grid[0];
        for (float c : grid)
          if (std::fabs(c - std::fabs(v)) < std::fabs(nearest - std::fabs(v)))
            nearest = c;
        nearest = std::copysign(nearest, v);
        const float got = fromE4m3(q[t * hidden + j * group + k]);
        const float allowed = std::fabs(nearest - v) + 1e-5f * std::fabs(v);
        if (!(std::fabs(got - v) <= allowed) && bad++ < 5)
          std::fprintf(stderr, "consumer: q (t=%lld, column %d) %g, expected %g\n",
                       static_cast<long long>(t), j * group + k, got, nearest);
      }
    }
  return bad;
}

/// Device memory for one launch and a stream of this program's own.
struct DeviceBuffers {
  void* x = nullptr;
  void* q = nullptr;
  void* scales = nullptr;
  cudaStream_t stream = nullptr;

  /// Allocates, and copies `input` to x.
  cudaError_t allocate(const std::vector<uint16_t>& input, size_t qBytes, size_t scaleBytes) {
    cudaError_t status = cudaMalloc(&x, input.size() * sizeof input[0]);
    if (status == cudaSuccess)
      status = cudaMalloc(&q, qBytes);
    if (status == cudaSuccess)
      status = cudaMalloc(&scales, scaleBytes);
    if (status == cudaSuccess)
      status = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    if (status == cudaSuccess)
      // On our stream: a plain cudaMemcpy from pageable memory may return
      // before its DMA is done, and a non-blocking stream does not wait for it.
      status = cudaMemcpyAsync(x, input.data(), input.size() * sizeof input[0],
                               cudaMemcpyHostToDevice, stream);
    return status;
  }
  ~DeviceBuffers() {
    cudaFree(x);
    cudaFree(q);
    cudaFree(scales);
    if (stream)
      cudaStreamDestroy(stream);
  }
};

/// `count` bf16 values in [-4, 4), the same on every run.
std::vector<uint16_t> makeInput(size_t count) {
  std::vector<uint16_t> x(count);
  uint32_t state = 2024;
  for (uint16_t& v : x) {
    state = state * 1664525u + 1013904223u;
    v = toBf16((state >> 8) * (8.0f / 16777216.0f) - 4.0f);
  }
  return x;
}

} // namespace

int main() {
  // [readme-begin]
  auto config = bqjit::Config::fromEnvironment(); // BQJIT_CACHE_DIR, BQJIT_LOG_LEVEL, ...
  if (!config)
    return fail(config.takeError());
  auto service = bqjit::Service::create(*config);
  if (!service)
    return fail(service.takeError());

  bqjit::KernelSpec spec; // bf16 -> fp8_e4m3, fp32 scales, layout row
  spec.hidden = 2048;     // H: a DeepSeek-V3 expert
  spec.groupSize = 128;   // G

  // Compiling needs no GPU: NVRTC, then the disk cache.
  auto compiled = (*service)->compile(spec);
  if (!compiled)
    return fail(compiled.takeError());
  std::printf("consumer: compiled %s: key %s, %d registers\n", spec.label().c_str(),
              (*compiled)->key.c_str(), (*compiled)->resources.registers);

  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("consumer: no GPU, nothing launched\n");
    return 77;
  }
  if (cudaError_t status = cudaSetDevice(0); status != cudaSuccess)
    return fail("cudaSetDevice", status);
  auto onDevice = (*service)->forDevice(spec, 0); // the device's architecture
  if (!onDevice)
    return fail(onDevice.takeError());
  auto kernel = (*service)->getKernel(*onDevice, 0);
  if (!kernel)
    return fail(kernel.takeError());

  const int64_t tokens = 200, ldx = 2 * spec.hidden, groups = spec.hidden / spec.groupSize;
  std::vector<uint16_t> x = makeInput(tokens * ldx); // per row: gate, then up
  DeviceBuffers d;
  if (cudaError_t status = d.allocate(x, tokens * spec.hidden, tokens * groups * sizeof(float));
      status != cudaSuccess)
    return fail("allocation", status);

  bqjit::LaunchArgs args;
  args.x = d.x;
  args.ldx = ldx;
  args.tokens = tokens;
  args.q = d.q;
  args.scales = d.scales;
  if (llvm::Error err = kernel->launch(args, d.stream)) // graph-capturable
    return fail(std::move(err));
  // [readme-end]

  std::vector<uint8_t> q(tokens * spec.hidden);
  std::vector<float> scales(tokens * groups);
  cudaError_t status = cudaStreamSynchronize(d.stream);
  if (status == cudaSuccess)
    status = cudaMemcpy(q.data(), d.q, q.size(), cudaMemcpyDeviceToHost);
  if (status == cudaSuccess)
    status =
        cudaMemcpy(scales.data(), d.scales, scales.size() * sizeof(float), cudaMemcpyDeviceToHost);
  if (status != cudaSuccess)
    return fail("launch or copy back", status);
  const long bad = check(x, tokens, spec.hidden, spec.groupSize, q, scales);
  std::printf("consumer: %s %s T=%lld: %lld values, %lld scales, %ld mismatches\n",
              bad == 0 ? "PASS" : "FAIL", kernel->specFor(tokens).label().c_str(),
              static_cast<long long>(tokens), static_cast<long long>(tokens * spec.hidden),
              static_cast<long long>(tokens * groups), bad);
  return bad == 0 ? 0 : 1;
}
