// A host application using bqjit: ask the service for the kernel of a shape,
// launch it on our own stream, check the result against the CPU reference.
//
// Exit status: 0 when the result matches, 1 on a mismatch or error, 77 when
// there is no GPU (after showing that the kernel still compiles and caches).
#include <cstdio>
#include <vector>

#include "bqjit/error.hpp"
#include "bqjit/service.hpp"
#include "reference/reference.hpp"
#include "runtime/cuda_driver.hpp"

int main() {
  using namespace bqjit;
  auto config = Config::fromEnvironment();
  if (!config) {
    std::fprintf(stderr, "host_app: %s\n", consumeToString(config.takeError()).c_str());
    return 1;
  }
  auto service = Service::create(*config);
  if (!service) {
    std::fprintf(stderr, "host_app: %s\n", consumeToString(service.takeError()).c_str());
    return 1;
  }

  // DeepSeek-V3 expert MLP at tensor parallel 8: H = 2304, groups of 128.
  KernelSpec spec;
  spec.hidden = 2304;
  spec.groupSize = 128;
  spec.inDtype = InDtype::BF16;
  spec.outDtype = OutDtype::FP8E4M3;
  spec.scaleLayout = ScaleLayout::ColTma;

  auto driver = (*service)->driver();
  if (!driver) {
    auto compiled = (*service)->compile(spec); // still works without a GPU
    std::printf("host_app: no GPU (%s); compiled %s for %s: %d registers\n",
                consumeToString(driver.takeError()).c_str(), spec.label().c_str(),
                spec.arch.c_str(), compiled ? (*compiled)->resources.registers : -1);
    if (!compiled)
      std::fprintf(stderr, "host_app: %s\n", consumeToString(compiled.takeError()).c_str());
    return compiled ? 77 : 1;
  }
  const CudaDriver& d = **driver;
  CUcontext ctx = nullptr;
  if (d.cuDevicePrimaryCtxRetain(&ctx, 0) != CUDA_SUCCESS ||
      d.cuCtxSetCurrent(ctx) != CUDA_SUCCESS) {
    std::fprintf(stderr, "host_app: cannot make device 0 current\n");
    return 1;
  }
  auto forDevice = (*service)->forDevice(spec, 0);
  if (!forDevice) {
    std::fprintf(stderr, "host_app: %s\n", consumeToString(forDevice.takeError()).c_str());
    return 1;
  }
  auto kernel = (*service)->getKernel(*forDevice, 0);
  if (!kernel) {
    std::fprintf(stderr, "host_app: %s\n", consumeToString(kernel.takeError()).c_str());
    return 1;
  }

  const int64_t tokens = 333, ldx = 2 * spec.hidden;
  ref::Problem problem;
  problem.spec = kernel->spec();
  problem.tokens = tokens;
  problem.ldx = ldx;
  std::vector<uint8_t> x = ref::makeInput(problem.spec, tokens, ldx, 1, /*seed=*/2024);
  const size_t qBytes = ref::outputBytes(problem.spec, tokens);
  const size_t sBytes = ref::scaleBufferBytes(problem.spec, tokens);

  CUdeviceptr dx = 0, dq = 0, ds = 0;
  CUstream stream = nullptr;
  // Everything goes to our own stream, in order: a non-blocking stream does
  // not wait for the legacy default stream, so a plain cuMemsetD8 there may
  // land after the kernel's stores (it did, on an H200, while a variant
  // loaded in the background).
  bool ok = d.cuMemAlloc(&dx, x.size()) == CUDA_SUCCESS &&
            d.cuMemAlloc(&dq, qBytes) == CUDA_SUCCESS &&
            d.cuMemAlloc(&ds, sBytes) == CUDA_SUCCESS &&
            d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS &&
            d.cuMemcpyHtoDAsync(dx, x.data(), x.size(), stream) == CUDA_SUCCESS &&
            d.cuMemsetD8Async(dq, problem.poison, qBytes, stream) == CUDA_SUCCESS &&
            d.cuMemsetD8Async(ds, problem.poison, sBytes, stream) == CUDA_SUCCESS;
  if (!ok) {
    std::fprintf(stderr, "host_app: device allocation or copy failed\n");
    return 1;
  }
  LaunchArgs args;
  args.x = reinterpret_cast<const void*>(dx);
  args.ldx = ldx;
  args.tokens = tokens;
  args.q = reinterpret_cast<void*>(dq);
  args.scales = reinterpret_cast<void*>(ds);
  if (auto err = kernel->launch(args, stream)) {
    std::fprintf(stderr, "host_app: %s\n", consumeToString(std::move(err)).c_str());
    return 1;
  }
  std::vector<uint8_t> q(qBytes), s(sBytes);
  ok = d.cuStreamSynchronize(stream) == CUDA_SUCCESS &&
       d.cuMemcpyDtoH(q.data(), dq, qBytes) == CUDA_SUCCESS &&
       d.cuMemcpyDtoH(s.data(), ds, sBytes) == CUDA_SUCCESS;
  d.cuMemFree(dx);
  d.cuMemFree(dq);
  d.cuMemFree(ds);
  d.cuStreamDestroy(stream);
  if (!ok) {
    std::fprintf(stderr, "host_app: synchronize or copy back failed\n");
    return 1;
  }
  ref::CompareReport report =
      ref::compare(problem, ref::run(problem, x.data()), q.data(), s.data());
  std::printf("host_app: %s %s T=%lld: %s\n", report.ok() ? "PASS" : "FAIL",
              kernel->specFor(tokens).label().c_str(), static_cast<long long>(tokens),
              report.summary().c_str());
  return report.ok() ? 0 : 1;
}
