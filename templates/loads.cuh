// bqjit kernel template: reading the input (a vector of VEC elements as raw
// 32-bit words, widened to fp32; one element alone on the rare path).
#pragma once

#include "bqjit/common.cuh"

namespace bqjit_kernel {

template <int BYTES> struct Raw {
  static constexpr int kWords = BYTES >= 4 ? BYTES / 4 : 1;
  u32 w[kWords];
};

// Inputs are read exactly once: the non-coherent path, no L1 allocation.
// PREFETCH256: the L2 fetches the 256 bytes around each request from memory
// (Geometry::kPrefetch256 says where that pays). EVICT_FIRST: the lines the
// loads bring into the L2 are the first it evicts (an L2::evict_first cache
// policy), so that streaming through the input pushes out its own lines
// before the lines written ahead of the kernel (Geometry::kEvictFirst). The
// policy lives in a register of the asm block (NVVM takes no named operands).
#define BQJIT_LOAD_RAW(PRE, QUAL, POL)                                                             \
  if constexpr (BYTES == 16) {                                                                     \
    asm volatile(PRE "ld.global.nc.L1::no_allocate" QUAL ".v4.u32 {%0,%1,%2,%3}, [%4]" POL         \
                 : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3])                          \
                 : "l"(p));                                                                        \
  } else if constexpr (BYTES == 8) {                                                               \
    asm volatile(PRE "ld.global.nc.L1::no_allocate" QUAL ".v2.u32 {%0,%1}, [%2]" POL               \
                 : "=r"(r.w[0]), "=r"(r.w[1])                                                      \
                 : "l"(p));                                                                        \
  } else if constexpr (BYTES == 4) {                                                               \
    asm volatile(PRE "ld.global.nc.L1::no_allocate" QUAL ".u32 %0, [%1]" POL                       \
                 : "=r"(r.w[0])                                                                    \
                 : "l"(p));                                                                        \
  } else {                                                                                         \
    unsigned short h;                                                                              \
    asm volatile(PRE "ld.global.nc.L1::no_allocate" QUAL ".u16 %0, [%1]" POL : "=h"(h) : "l"(p));  \
    r.w[0] = h;                                                                                    \
  }
#define BQJIT_EVICT_FIRST_POLICY                                                                   \
  "{\n.reg .b64 pol;\ncreatepolicy.fractional.L2::evict_first.b64 pol, 1.0;\n"
template <int BYTES, bool PREFETCH256 = false, bool EVICT_FIRST = false>
__device__ __forceinline__ Raw<BYTES> loadRaw(const void* p) {
  Raw<BYTES> r;
  if constexpr (EVICT_FIRST && PREFETCH256) {
    BQJIT_LOAD_RAW(BQJIT_EVICT_FIRST_POLICY, ".L2::cache_hint.L2::256B", ", pol;\n}")
  } else if constexpr (EVICT_FIRST) {
    BQJIT_LOAD_RAW(BQJIT_EVICT_FIRST_POLICY, ".L2::cache_hint", ", pol;\n}")
  } else if constexpr (PREFETCH256) {
    BQJIT_LOAD_RAW("", ".L2::256B", ";")
  } else {
    BQJIT_LOAD_RAW("", "", ";")
  }
  return r;
}
#undef BQJIT_EVICT_FIRST_POLICY
#undef BQJIT_LOAD_RAW

// The VEC values of a raw vector as floats. Every word is ORed with dep, which
// is zero at run time (see siluMulFast); for bf16 that costs no instruction:
// the shift becomes a byte permute and the mask a three-input LOP.
template <int IN, int VEC, int BYTES>
__device__ __forceinline__ void unpack(const Raw<BYTES>& r, float (&out)[VEC], u32 dep = 0u) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const u32 w = r.w[k / (IN == kFP32 ? 1 : 2)];
    if constexpr (IN == kFP32) {
      out[k] = __uint_as_float(w | dep);
    } else if constexpr (IN == kBF16) {
      out[k] = __uint_as_float(k % 2 == 0 ? __byte_perm(w, dep, 0x1054) : (w & 0xffff0000u) | dep);
    } else {
      const unsigned short h = static_cast<unsigned short>(((w | dep) >> (16 * (k % 2))) & 0xffffu);
      asm("cvt.f32.f16 %0, %1;" : "=f"(out[k]) : "h"(h));
    }
  }
}

// One input element as a float, read alone (the rare path; it allocates in
// L1, so that the next elements of the same sector are hits).
template <int IN> __device__ __forceinline__ float loadScalar(const unsigned char* p) {
  if constexpr (IN == kFP32) {
    u32 w;
    asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(w) : "l"(p));
    return __uint_as_float(w);
  } else {
    unsigned short h;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(h) : "l"(p));
    Raw<2> r;
    r.w[0] = h;
    float v[1];
    unpack<IN, 1>(r, v);
    return v[0];
  }
}

} // namespace bqjit_kernel
