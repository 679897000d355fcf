// bqjit kernel template: division with its range checks hoisted, NaN-keeping
// min and max, the team reduction, and 1 + exp(x).
#pragma once

#include "bqjit/common.cuh"

namespace bqjit_kernel {

// A correctly rounded a / b is what docs/contract.md asks for. The compiler's div.rn
// computes, per division: rc = rcp.approx(b); r = rc + rc * (1 - b * rc);
// q0 = a * r; q1 = q0 + r * (a - b * q0), each step one rounding (FMA), and
// checks (FCHK) per division whether a and b lie in the range where q1 is
// the correctly rounded quotient, calling a slow routine where they do not.
// Here r is computed once per divisor (once per group for y / s), the range
// check is made once per thread or team from bounds the kernel already has,
// and the slow routine (__fdiv_rn) runs for a whole team where a bound fails.
// Inside the range the result is bit-identical to __fdiv_rn: the same r, the
// same roundings. The residual's sign is flipped so that a zero dividend
// keeps its sign (-0 / b = -0), which the FMA with +0 would lose.
__device__ __forceinline__ float rcpRefined(float b) {
  float rc;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(rc) : "f"(b));
  return fmaf(rc, fmaf(-b, rc, 1.0f), rc);
}

__device__ __forceinline__ float divFast(float a, float b, float r) {
  const float q0 = a * r;
  const float negResidual = fmaf(b, q0, -a);
  return fmaf(-r, negResidual, q0);
}

// 1 / b within one ulp (rcp.approx; b must be a normal number below 2^126).
// The activation's sigma = 1 / (1 + exp(-z)) takes it: docs/contract.md
// allows the activation's device math an error as long as section 1's
// tolerance holds for every input, and y = a * (1 / d) * b is then within
// about 3.5 ulp (4.2e-7 relative) of the correctly rounded a / d * b (3.9,
// 4.6e-7, with onePlusExpOfBf16's d), below the 1e-6 the scales may differ
// by. Two instructions instead of the six of a correctly rounded division.
// y / s stays a correctly rounded division, as the contract asks.
__device__ __forceinline__ float rcpApprox(float b) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(b));
  return r;
}

// max and min that return NaN if either operand is NaN (fmaxf and fminf
// ignore a NaN).
__device__ __forceinline__ float maxNaN(float a, float b) {
  float m;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(m) : "f"(a), "f"(b));
  return m;
}
__device__ __forceinline__ float minNaN(float a, float b) {
  float m;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(m) : "f"(a), "f"(b));
  return m;
}

// The largest of a team's amax values, NaN (the fast path's signal) winning
// as with max.NaN. Non-negative floats and their NaNs order as unsigned
// integers do, so where the team is a whole warp redux.sync.max.u32 takes one
// instruction for the five dependent shuffle-max pairs, the chain a decode
// launch waits on; two halves of a warp take two (WARP_WIDE: every lane of
// the warp comes here or has exited). Other teams shuffle.
template <int TEAM, bool WARP_WIDE>
__device__ __forceinline__ float teamMaxNaN(float v, unsigned teamMask) {
  if constexpr (TEAM == 32) {
    u32 r;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(__float_as_uint(v)));
    return __uint_as_float(r);
  } else if constexpr (TEAM == 16 && WARP_WIDE) {
    const bool low = (threadIdx.x & 16u) == 0;
    const u32 b = __float_as_uint(v);
    u32 lo, hi;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(lo) : "r"(low ? b : 0u));
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(hi) : "r"(low ? 0u : b));
    return __uint_as_float(low ? lo : hi);
  } else {
#pragma unroll
    for (int off = TEAM / 2; off > 0; off /= 2)
      v = maxNaN(v, __shfl_xor_sync(teamMask, v, off, TEAM));
    return v;
  }
}

// 1 + exp(x) in six instructions (the toolkit's expf takes eight, and one
// more for the 1 +): x * log2(e) = t + c exactly, t the rounded product and c
// its remainder (an FMA, exact) plus x times log2(e)'s own remainder; exp(x)
// = 2^t * 2^c with 2^c = 1 + c * ln 2 to within 2^-35 (|c| <= 2^-17 where 2^t
// is finite and normal). Within about 2 ulp of 1 + exp(x) besides ex2's own
// error for x below 88.7 and above -2.3e38 (2^t flushed to 0 gives 1). Not
// for every x: an infinite x or one beyond -2.3e38 gives NaN, and an x from
// 88.7 up an infinity of either sign (c's sign is arbitrary there). Callers
// keep x below 88.7 (or clamp it there) and send a NaN y to the exact path,
// which takes onePlusExpExact.
inline constexpr float kLog2e = 0x1.715476p+0f;   // log2(e) rounded to fp32
inline constexpr float kLog2eLo = 0x1.4ae0cp-26f; // log2(e) - kLog2e
inline constexpr float kLn2 = 0x1.62e430p-1f;
__device__ __forceinline__ float onePlusExp(float x) {
  const float t = __fmul_rn(x, kLog2e);
  const float c = fmaf(x, kLog2eLo, fmaf(x, kLog2e, -t));
  float p;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(p) : "f"(t));
  return fmaf(p, fmaf(c, kLn2, 1.0f), 1.0f);
}

// 1 + exp(x) in four instructions for an x with at most 8 significant bits
// (a bf16 value): x * kLog2eHi is then exact (15 bits by 8), so ex2's
// argument carries no rounding, and exp(x) = 2^(x kLog2eHi) * 2^(x (log2(e)
// - kLog2eHi)) with the second factor 1 + x kLog2eHiRestLn2 to within 9.2e-8
// for |x| <= 88 (the rest is 7.05e-6). Within 2.32 ulp of 1 + exp(x)
// besides ex2's own error for every finite bf16 x below 88, where onePlusExp
// is within 2 with two instructions more (tests/test_reference checks both).
// x = -inf gives NaN (0 * -inf), and x from 88.7 up an infinity: both come
// from gates that the caller sends to its exact path.
inline constexpr float kLog2eHi = 0x1.7154p+0f;           // log2(e) to 15 significant bits
inline constexpr float kLog2eHiRestLn2 = 0x1.480fb6p-18f; // (log2(e) - kLog2eHi) ln 2
__device__ __forceinline__ float onePlusExpOfBf16(float x) {
  const float e = fmaf(x, kLog2eHiRestLn2, 1.0f);
  float p;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(p) : "f"(__fmul_rn(x, kLog2eHi)));
  return fmaf(p, e, 1.0f);
}

// 1 + exp(x) for every x (the exact path's), by the steps of the toolkit's
// expf (libdevice) with its last product and the addition fused: one
// rounding fewer than 1.0f + expf(x). The saturating first step keeps the
// exponent in range for infinite and huge x.
__device__ __forceinline__ float onePlusExpExact(float x) {
  float t, j, p;
  asm("fma.rn.sat.f32 %0, %1, 0f3BBB989D, 0f3F000000;" : "=f"(t) : "f"(x)); // x*log2(e)/252 + 1/2
  asm("fma.rm.f32 %0, %1, 0f437C0000, 0f4B400001;" : "=f"(j) : "f"(t));     // the exponent, biased
  float f = fmaf(x, kLog2e, -(j - __int_as_float(0x4B40007F)));
  f = fmaf(x, kLog2eLo, f); // x*log2(e) - exponent, to about 2^-48
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(p) : "f"(f));
  return fmaf(p, __int_as_float(__float_as_int(j) << 23), 1.0f);
}

// Lane-wise minimum of two packed pairs of 16-bit floats (minPair), and the
// minimum and maximum that keep a NaN (NaN in, NaN out, as torch.clamp; the
// contract's clamps in section 6).
#define BQJIT_PAIR_OP(NAME, OP)                                                                    \
  template <int IN> __device__ __forceinline__ u32 NAME(u32 a, u32 b) {                            \
    u32 m;                                                                                         \
    if constexpr (IN == kBF16)                                                                     \
      asm(OP ".bf16x2 %0, %1, %2;" : "=r"(m) : "r"(a), "r"(b));                                    \
    else                                                                                           \
      asm(OP ".f16x2 %0, %1, %2;" : "=r"(m) : "r"(a), "r"(b));                                     \
    return m;                                                                                      \
  }
BQJIT_PAIR_OP(minPair, "min")
BQJIT_PAIR_OP(minNaNPair, "min.NaN")
BQJIT_PAIR_OP(maxNaNPair, "max.NaN")
#undef BQJIT_PAIR_OP

// Gates at or below this make 1 + exp(-g) >= 2^126, whose approximate
// reciprocal flushes to zero: such a thread takes the exact division.
inline constexpr float kFastGateMin = -87.0f;
// y / s by the fast path needs s < 2^126 (a normal reciprocal) and quotients
// far from overflow; only a scale upper bound can break the second.
inline constexpr float kFastScaleMax = 8.507059173023461586e37f;    // 2^126
inline constexpr float kFastQuotientMax = 1.329227995784915873e36f; // 2^120

} // namespace bqjit_kernel
