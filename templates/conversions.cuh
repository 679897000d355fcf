// bqjit kernel template: the output formats (QuantTraits) and fp32 to
// fp8, e2m1 and int8 codes, in hardware where the target has the instruction.
#pragma once

#include "bqjit/common.cuh"

namespace bqjit_kernel {

// The output format's trait: kBits per value, QMAX (kMax) and its correctly
// rounded reciprocal, MIN_SCALE, and kEmax, the exponent of the largest
// normal (docs/contract.md section 7's EMAX).
template <int OUT> struct QuantTraits;
// kEmax: the exponent of the largest normal (docs/contract.md section 7's EMAX).
// MIN_SCALE is the specialization's kMinScale (the host's minScale(), or the
// spec's min_scale).
template <> struct QuantTraits<kE4M3> {
  static constexpr int kBits = 8;
  static constexpr int kEmax = 8;
  static constexpr float kMax = 448.0f;
  static constexpr float kInvMax = 0x1.24924ap-9f; // 1 / 448, correctly rounded
};
template <> struct QuantTraits<kE5M2> {
  static constexpr int kBits = 8;
  static constexpr int kEmax = 15;
  static constexpr float kMax = 57344.0f;
  static constexpr float kInvMax = 0x1.24924ap-16f; // 1 / 57344, correctly rounded
};
template <> struct QuantTraits<kInt8> {
  static constexpr int kBits = 8;
  static constexpr float kMax = 127.0f;
  static constexpr float kInvMax = 0x1.020408p-7f; // 1 / 127, correctly rounded
};
// e2m1 (docs/contract.md section 8): two values a byte. MIN_SCALE is the smallest
// E8M0 scale, 2^-127 (an fp32 subnormal); NVFP4's scales do not use it.
template <> struct QuantTraits<kE2M1> {
  static constexpr int kBits = 4;
  static constexpr int kEmax = 2;
  static constexpr float kMax = 6.0f;
  static constexpr float kInvMax = 0x1.555556p-3f; // 1 / 6, correctly rounded
  static constexpr float kMinScale = 0x1p-127f;
};

// PTX's conversions to e2m1x2 and ue8m0x2 exist only for the
// architecture-specific and family-specific targets of Blackwell (sm_100a/f,
// sm_103a/f, sm_110f, sm_120a/f, ...), for which NVRTC defines
// __CUDA_ARCH_FAMILY_SPECIFIC__ (1000, 1200, ...). Plain sm_100 and sm_120
// (and older GPUs) convert in software, to the same bits.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FAMILY_SPECIFIC__) && __CUDA_ARCH_FAMILY_SPECIFIC__ >= 1000
#define BQJIT_HW_FP4_CVT 1
#else
#define BQJIT_HW_FP4_CVT 0
#endif

// fp32 -> fp8 with saturation to the largest finite value and round to nearest
// even, NaN kept as NaN. In software for targets without the cvt instruction.
template <int OUT> __device__ __forceinline__ u32 fp8Soft(float f) {
  constexpr int kMantBits = OUT == kE4M3 ? 3 : 2;
  constexpr int kBias = OUT == kE4M3 ? 7 : 15;
  constexpr int kShift = 23 - kMantBits;
  // Smallest normal of the target format, and the subnormal step's inverse.
  constexpr float kMinNormal = OUT == kE4M3 ? 0.015625f : 6.103515625e-05f;
  constexpr float kSubInv = OUT == kE4M3 ? 512.0f : 65536.0f;
  const u32 bits = __float_as_uint(f);
  const u32 sign = (bits >> 24) & 0x80u;
  if (f != f)
    return sign | 0x7fu;
  const float a = fminf(fabsf(f), QuantTraits<OUT>::kMax);
  if (a < kMinNormal)
    return sign | static_cast<u32>(rintf(a * kSubInv)); // exact scaling, then RNE
  u32 ab = __float_as_uint(a);
  ab += ((1u << (kShift - 1)) - 1u) + ((ab >> kShift) & 1u);
  ab >>= kShift;
  return sign | (ab - (static_cast<u32>(127 - kBias) << kMantBits));
}

// Two values to two fp8 bytes: lo in bits 0..7, hi in bits 8..15.
template <int OUT> __device__ __forceinline__ u32 fp8Pair(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned short r;
  if constexpr (OUT == kE4M3)
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  else
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return fp8Soft<OUT>(lo) | (fp8Soft<OUT>(hi) << 8);
#endif
}

// e2m1 codes (docs/contract.md section 8: clamp to 6, round to nearest
// even) of products y * r with r > 0, straight from y. The code of a = |y| r
// is rint(2a) below 2 (steps of 0.5: codes 0..4), rint(a) + 2 from 2 to 4 and
// rint(a / 2) + 4 from 4 to 6; each of the three is at least the right one
// outside its range, so the code is their minimum with 7. Each rint is one
// FMA's rounding of |y| times 2r, r or r / 2 plus 1.5 * 2^23 + offset, whose
// low mantissa bits are then the code: FMA-pipe work where float-to-int
// conversions or bit arithmetic would take the ALU pipe, which runs at half
// the FMA pipe's rate.
// The product is thus rounded once, to the code, where y * r would first
// round to fp32: the two differ only within 2^-24 relative of a code boundary,
// the contract's allowance. 2r stops at FLT_MAX, so that a zero y under
// MXFP4's r = 2^127 makes 0, not NaN; r / 2 may round when r is subnormal, but
// then |y| * r < 4 and that term is never below the right code. The minimum
// is taken on the results' bits (positive floats order as their bits; a NaN's
// bits exceed 7's, so NaN gives 7): one three-way integer min (VIMNMX3 on
// sm_90 and sm_100) and one more. tests/test_reference (TemplateConversions)
// checks these claims on the CPU with this formula.
struct E2m1Factors {
  float twice, once, half;
};
__device__ __forceinline__ E2m1Factors e2m1Factors(float r) {
  return {fminf(__fmul_rn(2.0f, r), 0x1.fffffep127f), r, __fmul_rn(0.5f, r)};
}
// The float bits 1.5 * 2^23 + code of |y| * r: the low four bits are the code (bit 3 clear).
__device__ __forceinline__ u32 e2m1CodeBitsOfProduct(float y, const E2m1Factors& f) {
  constexpr float kMagic = 12582912.0f; // 1.5 * 2^23: its ulp is 1
  const float a = fabsf(y);
  const u32 c = __vimin3_u32(__float_as_uint(__fmaf_rn(a, f.twice, kMagic)),
                             __float_as_uint(__fmaf_rn(a, f.once, kMagic + 2.0f)),
                             __float_as_uint(__fmaf_rn(a, f.half, kMagic + 4.0f)));
  return min(c, __float_as_uint(kMagic + 7.0f));
}

// fp32 -> e2m1 code, sign in bit 3 (-0 gives 0x8; NaN, which the contract
// leaves unspecified, 0x7 with its sign).
__device__ __forceinline__ u32 e2m1Soft(float v) {
  return ((__float_as_uint(v) >> 28) & 0x8u) | (e2m1CodeBitsOfProduct(v, e2m1Factors(1.0f)) & 0xfu);
}

// The codes of N (4 or 8) products y * r in 4N bits, value k in bits 4k..4k+3
// (the packing of e2m1Pair, N / 2 times over). Codes and signs are shifted
// into place by funnel shifts, one each a value (a code's nibble in at the
// top, the earlier ones moving down; a y's top nibble, its sign in bit 3, in
// at the bottom; r > 0, so y * r has y's sign), and one bit select joins
// them: where e2m1Soft's sign, mask and packing take about four a value.
template <int N> __device__ __forceinline__ u32 e2m1NibblesOfProducts(const float* y, const E2m1Factors& f) {
  static_assert(N == 4 || N == 8, "a half word or a word");
  u32 codes = 0u, signs = 0u;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    codes = __funnelshift_r(codes, e2m1CodeBitsOfProduct(y[k], f), 4);
    signs = __funnelshift_l(__float_as_uint(y[N - 1 - k]), signs, 4);
  }
  if constexpr (N == 4)
    codes >>= 16;
  return (codes & 0x77777777u) | (signs & 0x88888888u & (N == 8 ? ~0u : 0xffffu));
}

// Two values to one byte: lo in bits 0..3, hi in bits 4..7.
__device__ __forceinline__ u32 e2m1Pair(float lo, float hi) {
#if BQJIT_HW_FP4_CVT
  unsigned short r;
  asm("{\n\t.reg .b8 pair;\n\tcvt.rn.satfinite.e2m1x2.f32 pair, %1, %2;\n\tcvt.u16.u8 %0, pair;\n\t}"
      : "=h"(r)
      : "f"(hi), "f"(lo));
  return r;
#else
  return e2m1Soft(lo) | (e2m1Soft(hi) << 4);
#endif
}

// The value of a non-negative E4M3 code (0x00..0x7E), exactly: by the
// hardware's e4m3 -> f16 conversion where the target has it (both steps are
// exact), two instructions where the bit arithmetic takes about nine.
__device__ __forceinline__ float e4m3Value(u32 code) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  float v;
  asm("{\n\t.reg .b32 h2;\n\t.reg .b16 lo, hi;\n\tcvt.rn.f16x2.e4m3x2 h2, %1;\n\tmov.b32 {lo, hi}, h2;\n\t"
      "cvt.f32.f16 %0, lo;\n\t}"
      : "=f"(v)
      : "h"(static_cast<unsigned short>(code)));
  return v;
#else
  const float normal = __uint_as_float((code << 20) + (120u << 23));
  const float subnormal = static_cast<float>(code & 7u) * 0x1p-9f;
  return code < 8u ? subnormal : normal;
#endif
}

__device__ __forceinline__ u32 int8Sat(float v) {
  if (v != v)
    return 0u;
  const float r = fminf(fmaxf(rintf(v), -128.0f), 127.0f);
  return static_cast<u32>(static_cast<int>(r)) & 0xffu;
}

// Two values to their codes, lo in the low kBits bits, hi in the next kBits.
template <int OUT> __device__ __forceinline__ u32 quantPair(float lo, float hi) {
  if constexpr (OUT == kInt8)
    return int8Sat(lo) | (int8Sat(hi) << 8);
  else if constexpr (OUT == kE2M1)
    return e2m1Pair(lo, hi);
  else
    return fp8Pair<OUT>(lo, hi);
}

// Stores VEC output bytes (VEC is 1, 2, 4, 8 or 16).
template <int VEC> __device__ __forceinline__ void storeBytes(unsigned char* p, const u32 (&w)[(VEC + 3) / 4]) {
  if constexpr (VEC == 16)
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  else if constexpr (VEC == 8)
    *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
  else if constexpr (VEC == 4)
    *reinterpret_cast<u32*>(p) = w[0];
  else if constexpr (VEC == 2)
    *reinterpret_cast<unsigned short*>(p) = static_cast<unsigned short>(w[0]);
  else
    *p = static_cast<unsigned char>(w[0]);
}

} // namespace bqjit_kernel
