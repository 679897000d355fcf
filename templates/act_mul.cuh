// bqjit kernel template: the per-thread steps, y = act(g, u) for a thread's
// elements of its group(s): the fast path and the exact (rare) path.
#pragma once

#include "bqjit/activations.cuh"
#include "bqjit/geometry.cuh"

namespace bqjit_kernel {

// floor(log2(x)) of a positive normal x, at compile time.
__device__ constexpr int floorLog2(float x) {
  int e = 0;
  for (; x >= 2.0f; x *= 0.5f)
    ++e;
  for (; x < 1.0f; x *= 2.0f)
    --e;
  return e;
}

// Whether gelu_tanh's fast division needs its 2^-64 scaling. Where 1 +
// exp(-z) lies in [2^126, FLT_MAX] (z in [-88.72, -87.34], gates in (-10.06,
// -10.003)), rcp.approx flushes its reciprocal to 0, while the reference's
// g / d is normal, |g / d| < 2^-122. Unscaled, that y becomes a zero of the
// same sign, which changes no code or scale where |y| lies below half the
// least code times the least scale:
// - bf16 holds no gate in the band (-10 gives d = 2^125.97, -10.0625 an
//   infinite d and y = +-0 either way; test_reference checks every bf16
//   gate), whatever the output;
// - fp16 ups lie below 2^16, so |y| < 2^-106, which no code reaches under
//   section 1's floor on the scale (s >= MIN_SCALE, or the spec's
//   min_scale) from 2^-96 (e4m3), 2^-89 (e5m2) or 2^-105 (int8) up. FP4
//   (NVFP4's r has no bound, MXFP4 no MIN_SCALE) and floor rounding have no
//   such floor;
// - fp32 ups have no bound.
template <class S> struct TailScaling {
  static constexpr int kHalfLeastCodeExp =
      S::kOutDtype == kE4M3 ? -10 : (S::kOutDtype == kE5M2 ? -17 : -1); // int8: 0.5
  static constexpr bool kFloored = S::kOutDtype != kE2M1 && S::kScaleRounding != kFloor;
  static constexpr bool kFp16Safe = kFloored && floorLog2(S::kMinScale) + kHalfLeastCodeExp >= -106;
  static constexpr bool kOn =
      Activation<S>::kScaledTail && S::kInDtype != kBF16 && !(S::kInDtype == kFP16 && kFp16Safe);
};

// Whether 1 + exp(-z) takes onePlusExpOfBf16 (kBf16): z is always a bf16
// value (a bf16 gate, or a limit that bf16 holds, times alpha = 1). A choice
// of the spec's numbers alone, never of the launch shape: every shape of a
// spec gives the same bytes (a row's output does not depend on T), which the
// autotuner checks before it times a shape.
template <class S> struct OnePlusExpForm {
  static constexpr bool kBf16 =
      S::kInDtype == kBF16 &&
      (S::kActivation == kSilu ||
       (S::kActivation == kSwiglu && S::kAlpha == 1.0f && (!S::kHasLimit || S::kLimitPair != 0u)));
};

// y = act(g, u) for this thread's steps of the team's group(s) at `in` (the
// first input element). Every load is issued before the first use. Gives the
// thread's amax of each group it works in, or, for the sigmoid family, NaN
// in every one where the fast division cannot be trusted for this thread (a
// NaN y, or a z at or below kFastGateMin): the caller then recomputes with
// actMulExact. zero must be 0 at run time in a way the compiler cannot see.
template <class S>
__device__ __forceinline__ void actMulFast(const unsigned char* in, int vecLane, u32 zero,
                                           float (&y)[Geometry<S>::kSteps][Geometry<S>::kOutVec],
                                           float (&amax)[Geometry<S>::kGroupsPerTeam]) {
  using Geo = Geometry<S>;
  using Act = Activation<S>;
  constexpr int IN = S::kInDtype;
  constexpr int VEC = Geo::kVec;
  constexpr int kSteps = Geo::kSteps;
  constexpr int kLoads = Geo::kLoads;
  constexpr int kOutVec = Geo::kOutVec;
  constexpr int kVecBytes = Geo::kVecBytes;
  // silu, and swiglu with alpha > 0 (z = alpha * g' rises with g), on split
  // 16-bit gates: the minimum gate in packed pairs, half the work.
  constexpr bool kPairMin =
      (S::kActivation == kSilu || (S::kActivation == kSwiglu && S::kAlpha > 0.0f)) &&
      !Geo::kPairs && IN != kFP32;
  using Clamp = PackedClamp<S>;
  Raw<kVecBytes> raw[kSteps][kLoads];
#pragma unroll
  for (int c = 0; c < kSteps; ++c)
#pragma unroll
    for (int i = 0; i < kLoads; ++i)
      raw[c][i] =
          loadRaw<kVecBytes, Geo::kPrefetch256, Geo::kEvictFirst>(Geo::at(in, c, vecLane, i));
  // ptxas sinks each load to just before its first use, which would issue the
  // later loads only after the math of the earlier ones, halving the bytes in
  // flight. A word that depends on every load, zero at run time, folded into
  // the first vector of each step keeps all loads at the top.
  u32 loaded = 0u;
#pragma unroll
  for (int c = 0; c < kSteps; ++c)
#pragma unroll
    for (int i = 0; i < kLoads; ++i)
      loaded ^= raw[c][i].w[0];
  const u32 dep = loaded & zero;
#pragma unroll
  for (int m = 0; m < Geo::kGroupsPerTeam; ++m)
    amax[m] = 0.0f;
  float zmin = 0.0f;
  u32 gminPair = 0u;
#pragma unroll
  for (int c = 0; c < kSteps; ++c) {
    if constexpr (Clamp::kOn)
      Clamp::apply(raw[c]);
    float v[kLoads * VEC];
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      float part[VEC];
      unpack<IN, VEC>(raw[c][i], part, i == 0 ? dep : 0u);
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        v[i * VEC + k] = part[k];
    }
    if constexpr (kPairMin) {
#pragma unroll
      for (int i = 0; i < Raw<kVecBytes>::kWords; ++i)
        gminPair = minPair<IN>(gminPair, raw[c][0].w[i]);
    }
    float g[kOutVec], u[kOutVec];
    Geo::split(v, g, u);
#pragma unroll
    for (int k = 0; k < kOutVec; ++k) {
      if constexpr (Act::kSigmoid) {
        float a, z, b;
        Act::template terms<Clamp::kOn>(g[k], u[k], a, z, b);
        // Silu and swiglu send z <= kFastGateMin (x = -z from 87 up) to the
        // exact path; gelu_tanh keeps it here, where 1 + exp(88.7 and up) is
        // infinite, so x is clamped at 128 (a NaN x becomes 128: its y is NaN
        // all the same, through a). Unclamped, onePlusExp's correction term
        // of a huge x can fall below -1 / ln 2 and make d -inf, and y a zero
        // of the wrong sign.
        float d;
        if constexpr (OnePlusExpForm<S>::kBf16)
          d = onePlusExpOfBf16(-z);
        else
          d = onePlusExp(Act::kScaledTail ? fminf(-z, 128.0f) : -z);
        if constexpr (TailScaling<S>::kOn) {
          // z <= kFastGateMin: 1 + exp(-z) >= 2^125.5, whose reciprocal
          // would flush; a and d scaled by 2^-64 (exactly: |a| is at least
          // 9.9 there) have the same quotient, a normal number (>= 9.9 /
          // 2^128). An infinite d (z below about -88.7) has the reciprocal
          // 0: a zero of a's sign (NaN for an infinite a), as a / inf.
          const float f = z <= kFastGateMin ? 0x1p-64f : 1.0f;
          y[c][k] = __fmul_rn(__fmul_rn(a * f, rcpApprox(d * f)), b);
        } else {
          y[c][k] = __fmul_rn(__fmul_rn(a, rcpApprox(d)), b);
          if constexpr (!kPairMin && !Act::kScaledTail)
            zmin = fminf(zmin, z);
        }
        amax[Geo::groupOfStep(c)] = maxNaN(amax[Geo::groupOfStep(c)], fabsf(y[c][k]));
      } else {
        // No division: this is the exact result, and amax ignores NaN already.
        y[c][k] = Act::y(g[k], u[k]);
        amax[Geo::groupOfStep(c)] = fmaxf(amax[Geo::groupOfStep(c)], fabsf(y[c][k]));
      }
    }
  }
  if constexpr (kPairMin) {
    Raw<4> pair;
    pair.w[0] = gminPair;
    float m[2];
    unpack<IN, 2>(pair, m);
    // swiglu: z's minimum is alpha times the least gate, rounded once as
    // every z is (rounding keeps the order); a gate above the limit gives
    // a z above 0 either way, clamped or not.
    zmin = S::kActivation == kSwiglu ? __fmul_rn(S::kAlpha, fminf(m[0], m[1])) : fminf(m[0], m[1]);
  }
  if (!(zmin > kFastGateMin)) {
#pragma unroll
    for (int m = 0; m < Geo::kGroupsPerTeam; ++m)
      amax[m] = __int_as_float(0x7fffffff);
  }
}

// The same with IEEE division throughout (the rare path); amax ignores NaN.
// One element an iteration of a loop that is not unrolled, each result moved
// into its register of y by predicated moves: one copy of the activation and
// of the IEEE division instead of one an element. A new spec's first launch
// waits for the kernel's compile, which this shortened by a fifth to a
// quarter, and the fast path's registers fell from 48 to 40 at G = 128 (more
// warps resident). Only groups with a NaN or infinite y, or a gate at or
// below kFastGateMin where the activation does not scale its division, come
// here.
template <class S>
__device__ __forceinline__ void actMulExact(const unsigned char* in, int vecLane,
                                            float (&y)[Geometry<S>::kSteps][Geometry<S>::kOutVec],
                                            float (&amax)[Geometry<S>::kGroupsPerTeam]) {
  using Geo = Geometry<S>;
  using Act = Activation<S>;
  constexpr int kOutVec = Geo::kOutVec;
  constexpr int kInBytes = Geo::kInBytes;
#pragma unroll
  for (int m = 0; m < Geo::kGroupsPerTeam; ++m)
    amax[m] = 0.0f;
#pragma unroll 1
  for (int e = 0; e < Geo::kSteps * kOutVec; ++e) {
    const int c = e / kOutVec, k = e % kOutVec;
    // Gate and up of column k of step c, in Geometry::split's order.
    const unsigned char* gate;
    const unsigned char* up;
    if constexpr (!Geo::kPairs) {
      gate = Geo::at(in, c, vecLane, 0) + k * kInBytes;
      up = Geo::at(in, c, vecLane, 1) + k * kInBytes;
    } else if constexpr (Geo::kLoads == 1) {
      gate = Geo::at(in, c, vecLane, 0) + 2 * k * kInBytes;
      up = gate + kInBytes;
    } else {
      gate = Geo::at(in, c, vecLane, 0);
      up = Geo::at(in, c, vecLane, 1);
    }
    const float g = loadScalar<S::kInDtype>(gate), u = loadScalar<S::kInDtype>(up);
    float v;
    if constexpr (Act::kSigmoid) {
      float a, z, b;
      Act::terms(g, u, a, z, b);
      v = __fdiv_rn(a, onePlusExpExact(-z)) * b;
    } else {
      v = Act::y(g, u);
    }
#pragma unroll
    for (int m = 0; m < Geo::kGroupsPerTeam; ++m)
      if (m == Geo::groupOfStep(c))
        amax[m] = fmaxf(amax[m], fabsf(v));
#pragma unroll
    for (int cc = 0; cc < Geo::kSteps; ++cc)
#pragma unroll
      for (int kk = 0; kk < kOutVec; ++kk)
        if (cc * kOutVec + kk == e)
          y[cc][kk] = v;
  }
}

} // namespace bqjit_kernel
