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
// each), so that a NaN stays NaN (fminf would make it the limit). beta = 0
// adds nothing: u' + 0 would turn -0 into +0, and swiglu(1, 0) is silu
// exactly. kClamped: g and u are clamped already (PackedClamp).
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

// Q(x) = Phi(-x) = erfc(x / sqrt 2) / 2, the normal distribution's upper
// tail, for x = |g| (a NaN or above 14.25 gives Q(14.25), 0 in fp32): Q(x) =
// t * 2^(P(t) - x^2 kHalfLog2e), t = 1 / (1 + x / 4) in [0.2188, 1] over x in
// [0, 14.284], P of degree 9, fitted (minimax, in Chebyshev form on that
// interval) to log2(Q(x) / t) + x^2 kHalfLog2e to 4.5e-8, the rounding of
// kHalfLog2e included; its coefficients in t rounded to fp32 and Horner's
// rule in fp32 leave 2.9e-7 (relative 2e-7). x is the gate itself, not g /
// sqrt 2 rounded, so that a 16-bit gate gives x^2 and 1 + x / 4 exactly (8
// or 11 bits squared; a power of two): one Newton step corrects the
// reciprocal, and x^2's multiple n of 2 is taken out by one fused
// multiply-add, rounded once near 0. fp32 gates add the roundings of 1 + x /
// 4 and x^2 back as their exact remainders. n >= -126 keeps 2^n normal, and
// the last product rounds once into the subnormals, as the reference's
// float(erfc) does. Against 0.5 * erfc(-g / sqrt 2) in double, over every
// bf16 and fp16 gate and every fp32 gate of magnitude 2^-30 to 14.3, with
// rcp.approx and ex2.approx emulated 1 and 2 ulp off either way: see
// docs/contract.md section 6 (bench_erfc_bound repeats it from these
// constants). With Phi and y: 28 instructions a gate, where erfc of a
// rounded g / sqrt 2 took 38.
inline constexpr float kGeluP[10] = {
    -0x1.a9bad2p+1f, 0x1.7282e8p+0f, 0x1.323848p-1f,  0x1.af1a94p-2f, -0x1.8d9722p-4f,
    -0x1.fb8b5cp-5f, 0x1.877e46p-1f, -0x1.990792p+0f, 0x1.1dbb3cp+0f, -0x1.0eb43ap-2f};
inline constexpr float kGeluXMax = 0x1.c8p+3f;      // 14.25: Q = 0 in fp32 from about 14.1 up
inline constexpr float kHalfLog2e = 0x1.715476p-1f; // log2(e) / 2 rounded to fp32
template <int IN> __device__ __forceinline__ float normalTail(float g) {
  const float x = fminf(fabsf(g), kGeluXMax);
  const float d = fmaf(x, 0.25f, 1.0f);
  float t = rcpApprox(d);
  if constexpr (IN == kFP32) {
    const float dlo = fmaf(x, 0.25f, __fsub_rn(1.0f, d)); // (1 + x / 4) - d, exactly
    t = fmaf(t, fmaf(-t, dlo, fmaf(-d, t, 1.0f)), t);
  } else {
    t = fmaf(t, fmaf(-d, t, 1.0f), t);
  }
  float p = kGeluP[9];
#pragma unroll
  for (int i = 8; i >= 0; --i)
    p = fmaf(p, t, kGeluP[i]);
  const float hi = __fmul_rn(x, x);
  // m = 1.5 * 2^23 + n, n = rint(-x^2 kHalfLog2e) raised to -126 at least:
  // m's low bits hold n, so 2^n is m's bits shifted by 23 plus 127 << 23
  // (one LEA; the bits of 1.5 * 2^23 shift out).
  const float m = fmaxf(fmaf(hi, -kHalfLog2e, 0x1.8p23f), 0x1.8p23f - 126.0f);
  const float n = __fsub_rn(m, 0x1.8p23f);
  float r = fmaf(hi, -kHalfLog2e, -n); // |r| <= 0.5 unless n was raised to -126
  if constexpr (IN == kFP32)
    r = fmaf(fmaf(x, x, -hi), -kHalfLog2e, r);
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(__fadd_rn(r, p)));
  const float pow2n = __int_as_float((__float_as_int(m) << 23) + (127 << 23));
  return __fmul_rn(__fmul_rn(t, e), pow2n);
}

// 0.5 * g * (1 + erf(g / sqrt 2)) * u, as g * Phi(g) * u with Phi(g) = Q(-g)
// for g < 0 and 1 - Q(g) otherwise (the same function without the
// cancellation of 1 + erf for g << 0).
template <class S> struct Activation<S, kGelu> {
  static constexpr bool kSigmoid = false;
  __device__ static __forceinline__ float y(float g, float u) {
    const float q = normalTail<S::kInDtype>(g);
    const float phi = g < 0.0f ? q : __fsub_rn(1.0f, q);
    return __fmul_rn(__fmul_rn(g, phi), u);
  }
};

} // namespace bqjit_kernel
