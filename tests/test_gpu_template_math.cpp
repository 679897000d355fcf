// The kernel template's arithmetic shortcuts, checked on the GPU itself where
// the CPU can only bound an instruction (rcp.approx): a probe kernel that
// includes the template's headers as the library embeds them, run over every
// significand, compared with the IEEE operations the contract names. Without
// a GPU the probe is still compiled (NVRTC needs none) and the run skips.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "gpu_harness.hpp"
#include "jit/nvrtc_program.hpp"
#include "jit/template_source.hpp"

namespace bqjit::test {
namespace {

// nvfp4Reciprocal(s, gs) against __fdiv_rn(1, __fdiv_rn(s, gs)) for every
// positive finite E4M3 value s (the 126 bytes 0x01..0x7e, subnormals
// included) and gs = (1 + frac 2^-23) 2^gsExp, one thread a significand. The
// first mismatch's gs bits and byte are kept. mismatches[1] counts the
// same check of a wrong formula (the first quotient without its correction
// step), which must find differences: the probe can fail.
constexpr const char* kProbeSource = R"(
#include "bqjit/scales.cuh"
using namespace bqjit_kernel;
extern "C" __global__ void nvfp4_reciprocal(int gsExp, unsigned long long* mismatches, unsigned* first) {
  const unsigned frac = blockIdx.x * blockDim.x + threadIdx.x;
  if (frac >= (1u << 23))
    return;
  const float gs = __uint_as_float((static_cast<unsigned>(127 + gsExp) << 23) | frac);
  unsigned wrong = 0, firstByte = 0;
  for (unsigned byte = 1; byte < 0x7f; ++byte) {
    const float s = e4m3Value(byte);
    const float fast = nvfp4Reciprocal(s, gs);
    const float ieee = __fdiv_rn(1.0f, __fdiv_rn(s, gs));
    if (__float_as_uint(fast) != __float_as_uint(ieee) && wrong++ == 0)
      firstByte = byte;
    const float uncorrected = __fdiv_rn(1.0f, s * rcpRefined(gs));
    if (__float_as_uint(uncorrected) != __float_as_uint(ieee))
      atomicAdd(mismatches + 1, 1ull);
  }
  if (wrong != 0) {
    atomicAdd(mismatches, static_cast<unsigned long long>(wrong));
    if (atomicCAS(first, 0u, 1u) == 0u) {
      first[1] = __float_as_uint(gs);
      first[2] = firstByte;
    }
  }
}
)";

/// The probe's cubin for `arch`; fails the test with NVRTC's log if it does
/// not compile.
std::vector<char> compileProbe(const std::string& arch) {
  std::vector<NvrtcProgram::Header> headers;
  for (const TemplateHeader& h : templateHeaders())
    headers.emplace_back(h.name, h.text.str());
  auto program = NvrtcProgram::create(kProbeSource, "template_math_probe.cu", headers, {});
  if (!program) {
    ADD_FAILURE() << consumeToString(program.takeError());
    return {};
  }
  // The library's options for the kernel (jit/compiler.cpp): IEEE division,
  // no FMA contraction, no flush to zero.
  if (llvm::Error err = program->compile({"--gpu-architecture=" + arch, "--std=c++17", "--fmad=false",
                                          "--prec-div=true", "--prec-sqrt=true", "--ftz=false"})) {
    ADD_FAILURE() << "probe for " << arch << ": " << consumeToString(std::move(err));
    return {};
  }
  auto cubin = program->cubin();
  if (!cubin) {
    ADD_FAILURE() << consumeToString(cubin.takeError());
    return {};
  }
  return std::move(*cubin);
}

TEST(TemplateMathProbe, CompilesForEveryHopperAndBlackwellTarget) {
  for (const char* arch : {"sm_80", "sm_90", "sm_100", "sm_120"})
    EXPECT_FALSE(compileProbe(arch).empty()) << arch;
}

// gs in [2^-100, 2^100] takes the fast steps (exponents -100 and 99 are the
// ends of that range), gs above it the IEEE divisions (at 2^100 both).
TEST(TemplateMathOnGpu, Nvfp4ReciprocalIsIeeeForEveryGlobalScaleSignificandAndBlockScale) {
  BQJIT_REQUIRE_GPU_ENV();
  GpuEnv& env = GpuEnv::get();
  const CudaDriver& d = *env.driver;
  ScopedContext scoped(d, env.context);
  std::vector<char> cubin = compileProbe(env.arch);
  ASSERT_FALSE(cubin.empty());
  CUlibrary library = nullptr;
  checkCu(d, d.cuLibraryLoadData(&library, cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0),
          "cuLibraryLoadData");
  CUkernel kernel = nullptr;
  checkCu(d, d.cuLibraryGetKernel(&kernel, library, "nvfp4_reciprocal"), "cuLibraryGetKernel");
  CUfunction function = nullptr;
  checkCu(d, d.cuKernelGetFunction(&function, kernel), "cuKernelGetFunction");
  DeviceBuffer counters(d, 2 * sizeof(unsigned long long) + 3 * sizeof(unsigned));
  for (int gsExp : {-100, -64, -9, -1, 0, 1, 8, 64, 99, 100, 101}) {
    checkCu(d, d.cuMemsetD8(counters.get(), 0, counters.bytes()), "cuMemsetD8");
    CUdeviceptr mismatches = counters.get();
    CUdeviceptr first = counters.get() + 2 * sizeof(unsigned long long);
    void* args[] = {&gsExp, &mismatches, &first};
    checkCu(d, d.cuLaunchKernel(function, (1u << 23) / 256, 1, 1, 256, 1, 1, 0, nullptr, args, nullptr),
            "cuLaunchKernel");
    checkCu(d, d.cuCtxSynchronize(), "cuCtxSynchronize");
    unsigned long long wrong[2] = {0, 0};
    unsigned firstOf[3] = {0, 0, 0};
    checkCu(d, d.cuMemcpyDtoH(wrong, mismatches, sizeof(wrong)), "cuMemcpyDtoH");
    checkCu(d, d.cuMemcpyDtoH(firstOf, first, sizeof(firstOf)), "cuMemcpyDtoH");
    EXPECT_GT(wrong[1], 0u) << "the wrong formula at gs 2^" << gsExp << " went unnoticed";
    EXPECT_EQ(wrong[0], 0u) << "gs at 2^" << gsExp << " on " << env.arch << ": first at gs bits 0x" << std::hex
                         << firstOf[1] << ", E4M3 byte 0x" << firstOf[2];
  }
  checkCu(d, d.cuLibraryUnload(library), "cuLibraryUnload");
}

} // namespace
} // namespace bqjit::test
