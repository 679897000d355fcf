// bqjit kernel template: where a thread's gate and up lie, and swiglu's
// clamps on the raw 16-bit inputs.
#pragma once

#include "bqjit/loads.cuh"
#include "bqjit/math.cuh"

namespace bqjit_kernel {

// A thread works in steps; a step loads kLoads vectors of VEC elements and
// computes kOutVec columns. Split: a gate vector and the up vector H further
// (kOutVec = VEC). Interleaved: one vector of VEC / 2 (gate, up) pairs, so
// that a team's loads stay contiguous; with VEC = 1 (odd G) two adjacent
// elements. Step c of lane l covers output vector c * TPG + l.
template <class S> struct Geometry {
  static constexpr int kInBytes = InBytes<S::kInDtype>::value;
  static constexpr int kVec = S::kVecWidth;
  static constexpr int kVecBytes = kVec * kInBytes;
  static constexpr bool kPairs = S::kGateUp == kInterleaved; // interleaved gate, up
  static constexpr int kLoads = !kPairs || kVec == 1 ? 2 : 1;
  static constexpr int kOutVec = kLoads * kVec / 2;
  static constexpr int kSteps = S::kGroupSize / kOutVec / S::kThreadsPerGroup;
  static_assert(S::kGroupSize % (kOutVec * S::kThreadsPerGroup) == 0, "steps must tile the group");
  static constexpr int kGroupInBytes = S::kGroupSize * (kPairs ? 2 : 1) * kInBytes;

  // Across groups ("transposed" teams). The L2 serves requests, one line
  // of 128 bytes each with any of its four 32-byte sectors, at a fixed rate.
  // A load instruction makes one request a line it touches: where a team's
  // step reads one sector and no other team reads that line in the same
  // instruction (teams of 2 at G = 32 on interleaved input: each group a line
  // of its own), every request carries one sector, and the L2's tag stage
  // limits the kernel (88% busy, 13% slower than G = 128; Nsight Compute,
  // H200). There a team of TPG * kAcrossGroups threads takes kAcrossGroups
  // consecutive groups of a row instead, kStepsPerGroup steps of every lane in
  // each, so that an instruction reads two or more sectors of each line it
  // touches. The team takes the fewest groups that make requests of two
  // sectors (2 for gpt-oss's teams of 2): teams of 4 groups, whole lines a
  // request, were about 0.7% slower on the H200 (more reductions and scales a
  // thread), and 2 divides more rows (gpt-oss's H = 2880 has 90 groups).
  // Where requests carry two sectors already (split input
  // at G = 32, G = 64) the mapping gains nothing and its per-group work (a
  // reduction and a scale a group for every thread) costs 1-2%, so it is not
  // taken. Same threads a block and the same groups a block, so the host's
  // grid is unchanged; the scale layout's task order must keep a team's
  // groups in one row (row and bytes; swizzled_128x4 up to 4), and in one
  // block.
  static constexpr int kSectorsPerRequest =
      S::kThreadsPerGroup * kVecBytes * (kGroupInBytes >= 128 ? 1 : 128 / kGroupInBytes) / 32;
  // Whether a team of TPG * P lanes may take P groups (swizzled_128x4's task
  // order keeps 4 consecutive groups in a row).
  __device__ static constexpr bool acrossFits(int p) {
    return p > 1 && kSteps % p == 0 && S::kThreadsPerGroup * p <= 32 &&
           ((S::kThreadsPerGroup * p) & (S::kThreadsPerGroup * p - 1)) == 0 &&
           S::kThreadsPerGroup * p * kVecBytes >= 64 && (S::kHidden / S::kGroupSize) % p == 0 &&
           S::kGroupsPerBlock % p == 0 && (S::kScaleLayout != kSwizzled128x4 || 4 % p == 0);
  }
  __device__ static constexpr int acrossGroups() {
    if (kSectorsPerRequest > 1 || TeamSlot<S::kThreadsPerGroup>::value != S::kThreadsPerGroup ||
        !(S::kScaleLayout == kRow || S::kScaleLayout == kBytes ||
          S::kScaleLayout == kSwizzled128x4))
      return 1;
    for (int p = 2; p <= kSteps; p *= 2)
      if (acrossFits(p))
        return p;
    return 1;
  }
  static constexpr int kAcrossGroups = acrossGroups();
  static constexpr bool kAcross = kAcrossGroups > 1;
  static constexpr int kStepsPerGroup = kSteps / kAcrossGroups;
  // Lanes of a team (a power of two, aligned in the warp; the lanes past TPG
  // of a team of any size only take part in its reductions), and the amax
  // values a thread keeps (one a group).
  static constexpr int kTeamLanes =
      kAcross ? S::kThreadsPerGroup * kAcrossGroups : TeamSlot<S::kThreadsPerGroup>::value;
  static constexpr int kGroupsPerTeam = kAcrossGroups;
  // A step of a team reads kTeamLanes vectors in a row of each input. Where
  // that is half a 128-byte line (G = 64 and 96 in teams of 4 on an H200,
  // gpt-oss's interleaved G = 32 in teams of 4 lanes across two groups),
  // asking the L2 to fetch 256 bytes a request was 0.3-2.4% faster at T >=
  // 1024; where a step reads a whole line (G = 128 in teams of 8) it was up
  // to 1.8% slower, a sector (split G = 32 in teams of 2) 1.2-1.6% slower,
  // and FP4's 16-byte steps 0.4-0.8% slower (NVIDIA H200, bench/NOTES.md,
  // ninth session).
  static constexpr bool kPrefetch256 =
      S::kOutDtype != kE2M1 && kTeamLanes * kVecBytes >= 64 && kTeamLanes * kVecBytes < 128;
  // Threads of two or more vectors an input (the many-token shapes on an
  // H200) read with an evict_first policy: the lines written before the
  // kernel (the producer's output, or a benchmark's flush) stay in the L2
  // instead of being written back while the kernel reads. 0.4-3% faster at T
  // >= 1024 (2048 x 8192 x 64: 25.04 -> 24.28 us); 1% slower in threads of
  // one vector (the few-token shapes, one wave or less) and for FP4, which
  // keep the default policy. Not for gelu_tanh and gelu either: ptxas then
  // took 48 registers for gelu_tanh instead of 40, and with fewer warps to
  // hide its math it ran 4-7% slower (NVIDIA H200, bench/NOTES.md, tenth
  // session).
  static constexpr bool kEvictFirst = S::kOutDtype != kE2M1 && kSteps >= 2 &&
                                      (S::kActivation == kSilu || S::kActivation == kSwiglu);
  // The team's group that step c of a lane is in.
  __device__ static __forceinline__ constexpr int groupOfStep(int c) {
    return kAcross ? c / kStepsPerGroup : 0;
  }

  // Load i of step c of lane l, from the first input of the team's (first) group.
  __device__ static __forceinline__ const unsigned char* at(const unsigned char* in, int c, int lane,
                                                           int i) {
    // The vector's index in its group, and the group's offset from `in`.
    const int v =
        kAcross ? (c % kStepsPerGroup) * kTeamLanes + lane : c * S::kThreadsPerGroup + lane;
    const unsigned char* group = kAcross ? in + groupOfStep(c) * kGroupInBytes : in;
    if constexpr (kPairs)
      return group + (v * kLoads + i) * kVecBytes;
    else // up lies H elements after gate
      return (i == 0 ? group : group + static_cast<i64>(S::kHidden) * kInBytes) + v * kVecBytes;
  }
  // Gate and up of a step's kOutVec columns from its loaded values.
  __device__ static __forceinline__ void split(const float (&v)[kLoads * kVec], float (&g)[kOutVec],
                                               float (&u)[kOutVec]) {
#pragma unroll
    for (int k = 0; k < kOutVec; ++k) {
      g[k] = kPairs ? v[2 * k] : v[k];
      u[k] = kPairs ? v[2 * k + 1] : v[kVec + k];
    }
  }
};

// swiglu's clamps on the raw 16-bit inputs, two values an instruction
// (min.NaN / max.NaN of packed pairs), where the limit is exactly a value
// of the input format (kLimitPair, from the host: 7 is, 7.1 is not in
// bf16): min(g, L) and clamp(u, -L, L) select one of their operands, so
// clamping before or after the widening to fp32 gives the same value, NaN
// kept. Split input clamps the gate vector's words with (L, L) and the up
// vector's with (L, L) then (-L, -L); interleaved words hold (gate, up)
// and take (L, L) then (-inf, -L). 1.5 instructions an element instead of 3
// (split), 2 instead of 3 (interleaved).
template <class S> struct PackedClamp {
  static constexpr bool kOn = S::kActivation == kSwiglu && S::kHasLimit && S::kInDtype != kFP32 &&
                              S::kLimitPair != 0u;
  static constexpr u32 kUpper = S::kLimitPair;              // (L, L)
  static constexpr u32 kLower = S::kLimitPair ^ 0x80008000u; // (-L, -L)
  // -inf in the low half (the gate's), -L in the high half (the up's)
  static constexpr u32 kLowerPairs =
      (kLower & 0xffff0000u) | (S::kInDtype == kBF16 ? 0xff80u : 0xfc00u);
  template <int BYTES, int LOADS>
  __device__ static __forceinline__ void apply(Raw<BYTES> (&r)[LOADS]) {
    constexpr int IN = S::kInDtype;
    if constexpr (LOADS == 1) {
#pragma unroll
      for (int i = 0; i < Raw<BYTES>::kWords; ++i)
        r[0].w[i] = maxNaNPair<IN>(minNaNPair<IN>(r[0].w[i], kUpper), kLowerPairs);
    } else {
      // A 2-byte vector (G odd) holds its value in the low half; the high
      // half's zero stays zero.
#pragma unroll
      for (int i = 0; i < Raw<BYTES>::kWords; ++i) {
        r[0].w[i] = minNaNPair<IN>(r[0].w[i], kUpper);
        r[1].w[i] = maxNaNPair<IN>(minNaNPair<IN>(r[1].w[i], kUpper), kLower);
      }
    }
  }
};

} // namespace bqjit_kernel
