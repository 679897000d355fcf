// bqjit kernel template: q = saturate_round(y / s) for a thread's steps of a
// group, stored as packed codes.
#pragma once

#include "bqjit/geometry.cuh"
#include "bqjit/scales.cuh"

namespace bqjit_kernel {

// y / s in the way MODE names.
template <int MODE> __device__ __forceinline__ float quotient(float y, float s, float r) {
  if constexpr (MODE == kMulExact)
    return y * r;
  else if constexpr (MODE == kDivFast)
    return divFast(y, s, r);
  else
    return __fdiv_rn(y, s);
}

// q = saturate_round(y / s) for this thread's steps, stored to qRow (the
// group's first byte): VEC values make VEC * kBits / 8 bytes.
template <int OUT, int VEC, int TPG, int kChunks, int MODE>
__device__ __forceinline__ void quantizeStore(const float (&y)[kChunks][VEC], float s, float r,
                                              unsigned char* qRow, int lane) {
  constexpr int BITS = QuantTraits<OUT>::kBits;
  constexpr int kBytes = VEC * BITS / 8;
  static_assert(BITS == 8 || VEC % 2 == 0, "fp4 steps make whole bytes");
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    u32 w[(kBytes + 3) / 4];
#if !BQJIT_HW_FP4_CVT
    if constexpr (OUT == kE2M1 && (VEC == 4 || VEC % 8 == 0)) {
      // Whole words of eight values, and a half word of four at the end, from
      // the products y * r (FP4 groups always multiply), rounded once.
      static_assert(MODE == kMulExact, "FP4 groups multiply by r");
      constexpr int N = VEC == 4 ? 4 : 8;
      const E2m1Factors f = e2m1Factors(r);
#pragma unroll
      for (int i = 0; i < (VEC + 7) / 8; ++i)
        w[i] = e2m1NibblesOfProducts<N>(&y[c][N * i], f);
      storeBytes<kBytes>(qRow + (c * TPG + lane) * kBytes, w);
      continue;
    }
#endif
#pragma unroll
    for (int i = 0; i < (kBytes + 3) / 4; ++i)
      w[i] = 0;
#pragma unroll
    for (int k = 0; k < VEC; k += 2) {
      const float lo = quotient<MODE>(y[c][k], s, r);
      const float hi = k + 1 < VEC ? quotient<MODE>(y[c][k + 1], s, r) : 0.0f;
      const u32 pair = quantPair<OUT>(lo, hi) & (k + 1 < VEC ? (1u << 2 * BITS) - 1u : (1u << BITS) - 1u);
      w[k * BITS / 32] |= pair << (k * BITS % 32);
    }
    storeBytes<kBytes>(qRow + (c * TPG + lane) * kBytes, w);
  }
}

// q of a group from the thread's kChunks steps in it (all its steps, or one
// step across groups); kStride: lanes whose chunks interleave in the group.
template <class S, int kChunks, int kStride>
__device__ __forceinline__ void quantizeGroup(const float (&yg)[kChunks][Geometry<S>::kOutVec], const GroupScale& g,
                                              unsigned char* qRow, int lane) {
  constexpr int OUT = S::kOutDtype;
  constexpr int V = Geometry<S>::kOutVec;
  // Only the modes groupScale can give this spec (each is unrolled code).
  constexpr bool kFixed = ScaleKind<S>::kFixedMode;
  constexpr bool kMayMulExact = kFixed || (!S::kHasScaleUb && S::kMinScale < kFastScaleMax);
  constexpr bool kMayDivExact = !kFixed && (S::kHasScaleUb || !(S::kMinScale < kFastScaleMax));
  if constexpr (kFixed) {
    quantizeStore<OUT, V, kStride, kChunks, kMulExact>(yg, g.s, g.r, qRow, lane);
  } else {
    if (g.mode == kDivFast) {
      quantizeStore<OUT, V, kStride, kChunks, kDivFast>(yg, g.s, g.r, qRow, lane);
    } else {
      if constexpr (kMayMulExact)
        quantizeStore<OUT, V, kStride, kChunks, kMulExact>(yg, g.s, g.r, qRow, lane);
      if constexpr (kMayDivExact)
        quantizeStore<OUT, V, kStride, kChunks, kDivExact>(yg, g.s, g.r, qRow, lane);
    }
  }
}

} // namespace bqjit_kernel
