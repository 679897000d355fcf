// bqjit kernel template: the activations (docs/contract.md section 6), one
// specialization of Activation<S> each.
#pragma once

#include "bqjit/math.cuh"

namespace bqjit_kernel {

// Activation<S> for the spec's kActivation. The sigmoid family (silu, swiglu,
// gelu_tanh) computes y = a / (1 + exp(-z)) * b and gives a, z and b
// (kSigmoid); the kernel divides by the fast or the exact path, and the fast
// one needs z > kFastGateMin. gelu gives y itself. Intermediate products are
// written with __fmul_rn / __fadd_rn so that no contraction can change a
// rounding: the CPU reference (reference/) rounds each step the same way.

template <class S, int ACT = S::kActivation> struct Activation;

template <class S> struct Activation<S, kSilu> {
  static constexpr bool kSigmoid = true;
  static constexpr bool kScaledTail = false; // gates <= -87 are the rare path
  template <bool kClamped = false>
  __device__ static __forceinline__ void terms(float g, float u, float& a, float& z, float& b) {
    a = g;
    z = g;
    b = u;
  }
};

// g' * sigma(alpha * g') * (u' + beta) with g' = min(g, limit) and u' =
// clamp(u, -limit, limit) by the NaN-propagating min and max (one instruction
// each), so that a NaN stays NaN (fminf would make it the limit). beta = 0 adds nothing: u' + 0 would turn -0 into
// +0, and swiglu(1, 0) is silu exactly. kClamped: g and u are clamped
// already (PackedClamp).
template <class S> struct Activation<S, kSwiglu> {
  static constexpr bool kSigmoid = true;
  static constexpr bool kScaledTail = false; // alpha * g <= -87 is the rare path
  template <bool kClamped = false>
  __device__ static __forceinline__ void terms(float g, float u, float& a, float& z, float& b) {
    if constexpr (S::kHasLimit && !kClamped) {
      g = minNaN(g, S::kLimit);
      u = maxNaN(minNaN(u, S::kLimit), -S::kLimit);
    }
    a = g;
    z = __fmul_rn(S::kAlpha, g);
    if constexpr (S::kBeta != 0.0f)
      b = __fadd_rn(u, S::kBeta);
    else
      b = u;
  }
};

// 0.5 * g * (1 + tanh(w)) * u with w = sqrt(2/pi) * (g + 0.044715 * g^3),
// computed as g / (1 + exp(-2w)) * u: the same function (0.5 * (1 + tanh(w))
// = sigma(2w)) without the cancellation of 1 + tanh(w) for w << 0, where a
// one-ulp difference of tanhf would change y by a large relative amount.
// z = 2w is multiplied out as g * (k1 + k3 * g^2): three operations and
// three roundings where the written order takes six of each (the reference
// rounds the same three steps).
inline constexpr float kGeluTanhK1 = 0x1.988454p+0f; // 2 sqrt(2 / pi)
inline constexpr float kGeluTanhK3 = 0x1.2444f2p-4f; // 2 sqrt(2 / pi) 0.044715
template <class S> struct Activation<S, kGeluTanh> {
  static constexpr bool kSigmoid = true;
  // z = 2w <= -87 from gates of about -10 down, in many groups of wide
  // inputs: the fast path keeps such groups (actMulFast), scaling its
  // division there where the input type and the scale's floor need it
  // (TailScaling), instead of sending the group to the exact path.
  static constexpr bool kScaledTail = true;
  template <bool kClamped = false>
  __device__ static __forceinline__ void terms(float g, float u, float& a, float& z, float& b) {
    a = g;
    z = __fmul_rn(g, __fmaf_rn(kGeluTanhK3, __fmul_rn(g, g), kGeluTanhK1));
    b = u;
  }
};

// erfc(a) for a >= 0 (a NaN or above 10.1 gives erfc(10.1), 0 in fp32), in
// about 28 instructions where the toolkit's erfcf takes about 45: erfc(a) =
// t * 2^(-a^2 log2(e) + P(s)), t = 1 / (1 + a / 2), P a degree-9 polynomial
// in s = kErfcS1 * t + kErfcS0 (t mapped onto [-1, 1] over a in [0, 10.1]),
// fitted (minimax) to log2(erfc(a) / t) + a^2 log2(e) to 6.6e-8. t carries
// the rounding of 1 + a / 2 and the reciprocal's error into the result about
// twice over, so both are corrected (the dlo term and one Newton step). a^2 is
// split exactly (hi + lo) and hi's multiple n of ln 2 taken out by Cody and
// Waite's two constants, so that ex2 sees a small argument; n >= -126 keeps
// 2^n normal, and the last product rounds once into the subnormals, as the
// reference's float(erfc) does. Checked on the CPU against erfc in double over
// every fp32 a in [2^-30, 10.2] with the approximate instructions emulated 1
// (rcp) and 2 (ex2) ulp off either way: 0.5 * erfc within 6.1e-7 relative
// (3.7e-7 with them exact) where it is normal; the toolkit's erfcf promises 4
// ulp (4.8e-7).
inline constexpr float kErfcS1 = 0x1.32b16cp+1f;
inline constexpr float kErfcS0 = -0x1.6562dap+0f;
inline constexpr float kErfcP[10] = {-0x1.9d4ee8p-1f, 0x1.a5ebaap-1f,  0x1.78ea7ap-6f,  -0x1.5df012p-5f,
                                     -0x1.a063c6p-10f, 0x1.6186fcp-8f, -0x1.507cccp-12f, -0x1.9841d8p-11f,
                                     0x1.ba3ca2p-14f,  0x1.4c528ap-14f};
inline constexpr float kLn2Hi = 0x1.62e400p-1f; // ln 2 to 15 bits: n * kLn2Hi is exact
inline constexpr float kLn2Lo = 0x1.7f7d1cp-20f;
__device__ __forceinline__ float erfcFast(float a) {
  a = fminf(a, 10.1f);
  const float d = fmaf(0.5f, a, 1.0f);
  const float dlo = fmaf(0.5f, a, __fsub_rn(1.0f, d)); // (1 + a / 2) - d, exactly
  float t = rcpApprox(d);
  t = fmaf(t, fmaf(-t, dlo, fmaf(-d, t, 1.0f)), t);
  const float s = fmaf(t, kErfcS1, kErfcS0);
  float p = kErfcP[9];
#pragma unroll
  for (int i = 8; i >= 0; --i)
    p = fmaf(p, s, kErfcP[i]);
  const float hi = __fmul_rn(a, a);
  const float lo = fmaf(a, a, -hi);
  const float n = fmaxf(__fsub_rn(fmaf(hi, -kLog2e, 0x1.8p23f), 0x1.8p23f), -126.0f);
  const float r = fmaf(n, -kLn2Lo, fmaf(n, -kLn2Hi, -hi)); // -hi - n ln 2, |r| <= 0.35
  const float x2 = fmaf(r, kLog2e, fmaf(lo, -kLog2e, p));
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x2));
  // 2^n from the bits of n + 1.5 * 2^23 + 127 (an FADD and a shift, no conversion).
  const float pow2n = __int_as_float(__float_as_int(__fadd_rn(n, 0x1.8p23f + 127.0f)) << 23);
  return __fmul_rn(__fmul_rn(t, e), pow2n);
}

// 0.5 * g * (1 + erf(g / sqrt 2)) * u, as g * (0.5 * erfc(-g / sqrt 2)) * u
// (the same function without the cancellation of 1 + erf for g << 0), with
// erfc(-x) = 2 - erfc(x) for x > 0.
inline constexpr float kInvSqrt2 = 0x1.6a09e6p-1f; // 1 / sqrt(2)
template <class S> struct Activation<S, kGelu> {
  static constexpr bool kSigmoid = false;
  __device__ static __forceinline__ float y(float g, float u) {
    const float x = __fmul_rn(g, kInvSqrt2);
    const float e = erfcFast(fabsf(x));
    const float phi = x < 0.0f ? __fmul_rn(0.5f, e) : fmaf(-0.5f, e, 1.0f);
    return __fmul_rn(__fmul_rn(g, phi), u);
  }
};

} // namespace bqjit_kernel
