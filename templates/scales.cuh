// bqjit kernel template: a group's scale from its amax (docs/contract.md
// sections 1, 7 and 8) and the power-of-two arithmetic it takes.
#pragma once

#include "bqjit/conversions.cuh"
#include "bqjit/math.cuh"

namespace bqjit_kernel {

// 2^ceil(log2(s)) for positive s, exactly, by bit manipulation.
__device__ __forceinline__ float pow2Ceil(float s) {
  u32 b = __float_as_uint(s);
  const u32 expBits = b & 0x7f800000u;
  if ((b & 0x007fffffu) != 0u && expBits != 0x7f800000u)
    b = expBits + 0x00800000u;
  return __uint_as_float(b);
}

// 1 / s for s = 2^e, e in -127..127, exactly (2^127 and 2^-127, a subnormal, included).
__device__ __forceinline__ float pow2Reciprocal(float s) {
  const u32 b = __float_as_uint(s);
  // 2^-127 (byte 0, the one subnormal s) has no exponent bits: its reciprocal is 2^127.
  if (b < 0x00800000u)
    return __uint_as_float(0x7f000000u);
  const u32 biased = b >> 23; // 1..254
  return biased == 254u ? __uint_as_float(0x00400000u) : __uint_as_float((254u - biased) << 23);
}

// The largest power-of-two scale: E8M0 byte 254. Byte 255 (NaN) is never written.
inline constexpr float kMaxPow2Scale = 1.7014118346046923173e38f; // 2^127

// The exponent of the OCP MX scale (docs/contract.md section 7, scale_rounding floor)
// of a group's amax (>= 0, not NaN): floor(log2(amax)) - EMAX, read from
// amax's fp32 bits (subnormals included) and clamped to -127..127; amax 0
// gives -127, an infinite amax 127.
template <int OUT> __device__ __forceinline__ int floorMxExponent(float amax) {
  const u32 b = __float_as_uint(amax);
  const int biased = static_cast<int>(b >> 23);
  int e;
  if (b == 0u)
    e = -127;
  else if (biased == 255)
    e = 127;
  else if (biased == 0)
    e = -118 - __clz(static_cast<int>(b)) - QuantTraits<OUT>::kEmax; // subnormal: 2^(-149 + msb)
  else
    e = biased - 127 - QuantTraits<OUT>::kEmax;
  return e < -127 ? -127 : (e > 127 ? 127 : e);
}

// 2^e for e in -127..127, exactly (2^-127 is an fp32 subnormal).
__device__ __forceinline__ float exp2Exact(int e) {
  return e == -127 ? __uint_as_float(0x00400000u) : __uint_as_float(static_cast<u32>(e + 127) << 23);
}

// How quantizeStore divides y by s: by the group's reciprocal r where the
// caller checked the range; by IEEE division; or y * r: for a power of two s
// whose reciprocal r is exact, the correctly rounded y / s (both round the
// same real number), and for NVFP4 the contract's own y * r.
enum : int { kDivFast = 0, kDivExact = 1, kMulExact = 2 };

// A group's scale: s, the factor or reciprocal quantizeStore takes (r), the
// byte of byte layouts (E8M0, or NVFP4's E4M3) and how y is divided by s.
struct GroupScale {
  float s;
  float r;
  u32 byte;
  int mode; // kDivFast, kDivExact or kMulExact
};

// The spec's scale rule, as the kernel and its per-group functions test it.
template <class S> struct ScaleKind {
  static constexpr bool kFp4 = S::kOutDtype == kE2M1;
  static constexpr bool kNvfp4 = kFp4 && !S::kPow2Scales; // E4M3 block scales under a global scale
  static constexpr bool kFloorRounding = S::kScaleRounding == kFloor;
  // Every group divides the same way (power-of-two and NVFP4 scales multiply
  // by r), so that the mode need not travel between lanes.
  static constexpr bool kFixedMode = S::kPow2Scales || kFp4;
};

// amax / QMAX by the fast division with the correctly rounded 1 / QMAX:
// exact for every finite amax (checked exhaustively over all fp32
// significands for each QMAX: tests/test_fast_division; for e2m1's 6 down to
// where MXFP4's clamp to 2^-127 takes over); an infinite amax stays infinite.
template <int OUT> __device__ __forceinline__ float amaxOverQmax(float amax) {
  return amax == __int_as_float(0x7f800000) ? amax
                                            : divFast(amax, QuantTraits<OUT>::kMax, QuantTraits<OUT>::kInvMax);
}

// NVFP4's global scale: one float in device memory that every group reads
// once it has its amax. Where the launch shape makes no occupancy promise,
// the kernel reads it at its start, beside the rows' loads: read after the
// amax, its L2 round trip (the first warps of an SM all miss L1 there at
// once) lay between each block's loads and its stores, 0.2 us of the 5.75
// that the H100 took at 2048 x 1024 (bench/NOTES.md, thirtieth session).
// Under a promise the register that holds it across the activation made
// ptxas spill the full-SM few-token variants and cost the two-vector teams
// 0.5%, so there it is read where it is used. A prefetch into L1 instead
// made every NVFP4 launch 2.2-2.9 times slower.
template <class S> struct GlobalScale {
  static constexpr bool kEarly = ScaleKind<S>::kNvfp4 && S::kMinBlocksPerSm == 0;
  float early = 0.0f;
  __device__ __forceinline__ explicit GlobalScale(const float* __restrict__ p) {
    if constexpr (kEarly)
      early = __ldg(p);
  }
  // The value where a group's scale needs it (0 without NVFP4, which reads
  // none), read from the kernel's own pointer where it is late: a copy of
  // the pointer kept across the activation, or __ldg's inline assembly in
  // place of a plain read, made ptxas spill the full-SM few-token variants.
  __device__ __forceinline__ float value(const float* __restrict__ p) const {
    if constexpr (kEarly)
      return early;
    else if constexpr (ScaleKind<S>::kNvfp4)
      return *p;
    else
      return 0.0f;
  }
};

// The scale of a group from the team's amax of it, by docs/contract.md
// sections 1, 7 and 8; `gs` is NVFP4's global scale (GlobalScale::value).
template <class S>
__device__ __forceinline__ GroupScale groupScale(float amaxG, const float* scaleUb, float gs) {
  using Kind = ScaleKind<S>;
  constexpr int OUT = S::kOutDtype;
  constexpr bool HAS_UB = S::kHasScaleUb;
  GroupScale g{0.0f, 0.0f, 0u, kMulExact};
  if constexpr (Kind::kNvfp4) {
    // Section 8, in its order: sf = e4m3(min(gs * amax / 6, 448)), r = 1 /
    // (sf / gs), q = e2m1(y * r); correctly rounded divisions, once a group.
    // gs * amax / 6 by the fast division: exact for every finite product
    // (tests/test_fast_division). An infinite product gives NaN there, which
    // fminf turns into 448, as it does infinity; a subnormal quotient rounds
    // to an E4M3 zero either way.
    const float pre = fminf(divFast(__fmul_rn(gs, amaxG), 6.0f, QuantTraits<kE2M1>::kInvMax), 448.0f);
    g.byte = fp8Pair<kE4M3>(pre, 0.0f) & 0xffu;
    g.s = e4m3Value(g.byte);
    g.r = g.s == 0.0f ? 0.0f : __fdiv_rn(1.0f, __fdiv_rn(g.s, gs));
    return g;
  } else if constexpr (Kind::kFloorRounding) {
    const int floorExp = floorMxExponent<OUT>(amaxG);
    g.s = exp2Exact(floorExp);
    // s = 2^e: y * 2^-e is y / s exactly, without a division's range limits.
    g.r = exp2Exact(-floorExp);
  } else if constexpr (Kind::kFp4) {
    // MXFP4 under ceil: 2^ceil(log2(amax / 6)) within 2^-127..2^127 (no
    // MIN_SCALE of its own); the E8M0 byte first, then s and its exact
    // reciprocal from it.
    float pre = amaxOverQmax<OUT>(amaxG);
    if constexpr (HAS_UB)
      pre = fminf(pre, *scaleUb);
    pre = fminf(fmaxf(pre, QuantTraits<OUT>::kMinScale), kMaxPow2Scale);
#if BQJIT_HW_FP4_CVT
    unsigned short e8;
    asm("cvt.rp.satfinite.ue8m0x2.f32 %0, %1, %2;" : "=h"(e8) : "f"(0.0f), "f"(pre));
    const u32 byte = e8 & 0xffu;
#else
    const u32 b = __float_as_uint(pre);
    // ceil(log2(pre)) + 127: the biased exponent, plus the carry of a
    // mantissa that is not zero. A subnormal pre lies in [2^-127, 2^-126)
    // and gets 1 the same way, but 2^-127 itself is byte 0.
    const u32 byte = ((b + 0x007fffffu) >> 23) - (b == 0x00400000u ? 1u : 0u);
#endif
    g.s = exp2Exact(static_cast<int>(byte) - 127);
    g.r = exp2Exact(127 - static_cast<int>(byte));
  } else {
    float s = amaxOverQmax<OUT>(amaxG);
    if constexpr (HAS_UB)
      s = fminf(s, *scaleUb);
    s = fmaxf(s, S::kMinScale); // MIN_SCALE, or the spec's min_scale
    if constexpr (S::kPow2Scales) {
      g.s = fminf(pow2Ceil(s), kMaxPow2Scale); // an infinite s is 2^127 (E8M0 byte 254)
      // s = 2^e, e in -127..127: y * 2^-e rounds the same real number as y / s.
      g.r = pow2Reciprocal(g.s);
    } else if constexpr (HAS_UB) {
      g.s = s;
      g.r = rcpRefined(s);
      // Quotients below 2^-100 that the fast path may round differently all
      // quantize to a zero of the right sign, so only the top needs a bound.
      g.mode = s < kFastScaleMax && amaxG * g.r < kFastQuotientMax ? kDivFast : kDivExact;
    } else if (s < kFastScaleMax) {
      // Without a bound every quotient is at most QMAX, and s is below
      // FLT_MAX / QMAX < 2^126 (the fast division's range) unless amax is
      // infinite or min_scale is at least 2^126.
      g.s = s;
      g.r = rcpRefined(s);
      g.mode = kDivFast;
    } else {
      // An infinite amax: y / inf is a zero of y's sign for finite y and NaN
      // for an infinite or NaN y, as y * 0 is.
      g.s = s;
      g.r = 0.0f;
      g.mode = S::kMinScale < kFastScaleMax ? kMulExact : kDivExact;
    }
  }
  g.byte = (__float_as_uint(g.s) >> 23) & 0xffu; // E8M0: 2^-127 (subnormal) is byte 0
  return g;
}

} // namespace bqjit_kernel
