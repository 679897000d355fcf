// bqjit kernel template: y = act(gate) * up, quantized per group of G columns
// with fp32 (or power-of-two) scales, or to fp4 (NVFP4, MXFP4) with scale
// bytes. docs/contract.md sections 1, 2, 6, 7 and 8 are the contract.
//
// Compiled by NVRTC for one specialization: the generated source defines a
// struct of named constants (kHidden, kGroupSize, kInDtype, kActivation,
// kAlpha, kMinScale, ...; see jit/source.cpp) and instantiates silu_mul_quant with it.
// Every choice is a compile-time constant: an activation is a specialization
// of Activation<S>, not a branch at run time.
//
// This file holds the kernel; the other headers of templates/, one concept
// each, hold its parts (common, loads, conversions, math, scales,
// activations, geometry, act_mul, quantize, swizzled_tasks, outputs). All are
// embedded in the library and handed to NVRTC from memory, as bqjit/<file>;
// none includes a header of the toolkit, so a cold compile stays fast.
#pragma once

#include "bqjit/common.cuh"
#include "bqjit/math.cuh"
#include "bqjit/activations.cuh"
#include "bqjit/geometry.cuh"
#include "bqjit/scales.cuh"
#include "bqjit/act_mul.cuh"
#include "bqjit/quantize.cuh"
#include "bqjit/outputs.cuh"

namespace bqjit_kernel {

// Row t and group j of task `task` (one group of one row; the numbering is
// described below) where the scale layout is not swizzled_128x4: row by row,
// or column by column over taskRows rows (kColMajor). 32-bit division where
// the launch's tasks fit, a few instructions instead of dozens.
template <bool kColMajor, int NG>
__device__ __forceinline__ void taskPlace(i64 task, i64 taskRows, i64& t, int& j) {
  if (taskRows * NG <= 0x7fffffff) {
    const u32 task32 = static_cast<u32>(task);
    const u32 taskRows32 = static_cast<u32>(taskRows);
    t = kColMajor ? task32 % taskRows32 : task32 / NG;
    j = static_cast<int>(kColMajor ? task32 / taskRows32 : task32 % NG);
  } else {
    t = kColMajor ? task % taskRows : task / NG;
    j = static_cast<int>(kColMajor ? task / taskRows : task % NG);
  }
}

// Work item ("task"): one group j of one row t, done by a team of TPG threads.
// A team occupies a slot of Geometry::kTeamLanes lanes (TPG rounded up to a
// power of two) so that any TPG dividing the group's vectors works (12 for
// G = 96, say); the lanes past TPG only take part in the amax reduction.
// Row-major scale layouts (row, bytes) number tasks row by row; column
// layouts number them column by column, and swizzled_128x4 in the order of its
// scale bytes' sectors (4 groups of 8 rows a 32-byte sector), so that the
// scale stores of neighbouring teams fill whole sectors (a warp's 32 bytes one
// sector, not 4 bytes in each of 8; as fast as row order on an H200,
// bench/NOTES.md version 15), or in blocks of 8 rows (SwizzleTiles).
// Layouts with padded columns (col_tma, ue8m0_packed) have tasks for the
// padding rows T..T4-1 that only write zero scales. swizzled_128x4's tasks
// cover the row pairs that hold a live row (swizzled_tasks.cuh), their padding rows
// and columns NG..NGp-1 only writing zeros (of every row, live or not, when
// masked); blocks after them zero the other row pairs of a partial band.
//
// Output formats: QuantTraits<OUT> (8-bit codes, or e2m1 two a byte). NVFP4
// (e2m1 without power-of-two scales) takes its E4M3 block scale from the
// run-time global scale, in the contract's order of evaluation; MXFP4 (e2m1
// with power-of-two scales) is section 7's E8M0 scale with QMAX 6.
//
// Arguments:
//   x       [E][rows][ldx] input: split, gate in columns 0..H-1 and up in
//           H..2H-1; interleaved, gate i in column 2i and up i in 2i + 1
//   ldx     elements between rows of x (>= 2H)
//   rows    T (T_max for masked batches)
//   q       [E][rows][H * kBits / 8] output
//   scales  per docs/contract.md sections 2 and 8, per expert when masked
//   scaleUb device pointer to one float, used when HAS_UB
//   maskedM [E] live rows per expert, used when MASKED (gridDim.y = E)
//   globalScale device pointer to one float, used by NVFP4
//
// S is the specialization: every compile-time choice as a named constant, and
// the launch shape's occupancy promise (kMinBlocksPerSm), which the planner
// decides on the host.
template <class S>
__global__ void __launch_bounds__(kThreadsPerBlock<S>, S::kMinBlocksPerSm)
    silu_mul_quant(const void* __restrict__ x, i64 ldx, i64 rows, unsigned char* __restrict__ q,
                   void* __restrict__ scales, const float* __restrict__ scaleUb,
                   const int* __restrict__ maskedM, const float* __restrict__ globalScale) {
  constexpr int H = S::kHidden;
  constexpr int G = S::kGroupSize;
  constexpr int IN = S::kInDtype;
  constexpr int OUT = S::kOutDtype;
  constexpr int LAYOUT = S::kScaleLayout;
  constexpr bool POW2 = S::kPow2Scales;
  constexpr bool HAS_UB = S::kHasScaleUb;
  constexpr bool MASKED = S::kMasked;
  constexpr int TPG = S::kThreadsPerGroup;
  constexpr int VEC = S::kVecWidth;
  constexpr int GPB = S::kGroupsPerBlock;
  constexpr bool FLOOR = ScaleKind<S>::kFloorRounding;
  constexpr bool FP4 = ScaleKind<S>::kFp4;
  constexpr bool NVFP4 = ScaleKind<S>::kNvfp4;
  constexpr bool SWIZZLED = LAYOUT == kSwizzled128x4;
  constexpr bool BYTE_SCALES = LAYOUT == kUe8m0Packed || LAYOUT == kBytes || SWIZZLED;
  static_assert(!FLOOR || (POW2 && OUT != kInt8 && !HAS_UB),
                "floor rounds power-of-two scales of floating-point outputs, without a bound");
  static_assert(!(LAYOUT == kBytes || SWIZZLED) || POW2 || NVFP4,
                "scale bytes are E8M0 exponents, or NVFP4's E4M3");
  static_assert(!FP4 || (NVFP4 ? G == 16 && !HAS_UB && (LAYOUT == kBytes || SWIZZLED) : G == 32),
                "fp4 is NVFP4 (G 16, E4M3 bytes) or MXFP4 (G 32, ue8m0)");
  static_assert(H % G == 0, "G must divide H");
  static_assert(G % VEC == 0, "VEC must divide G");
  static_assert((G / VEC) % TPG == 0, "TPG must divide the group's vectors");
  static_assert(TPG >= 1 && TPG <= 32, "TPG: 1..32");
  constexpr int NG = H / G;
  constexpr int kInBytes = InBytes<IN>::value;
  using Geo = Geometry<S>;
  constexpr int kSteps = Geo::kSteps;
  constexpr int kOutVec = Geo::kOutVec;
  constexpr bool kColMajorTasks = LAYOUT != kRow && LAYOUT != kBytes && !SWIZZLED;
  constexpr bool kPadded = LAYOUT == kColTma || LAYOUT == kUe8m0Packed;
  constexpr int kPackedWords = (NG + 3) / 4;
  constexpr int kTileCols = (NG + 3) / 4; // swizzled_128x4: NGp / 4

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Programmatic dependent launch (sm_90+; the host opts in per launch with a
  // launch attribute, and without it both are no-ops): this grid may start
  // while the previous kernel on the stream still runs, so it waits for that
  // kernel's writes before reading or writing any memory (the previous kernel
  // may still read what this one overwrites); then it lets the next kernel
  // start early, which must itself wait before reading this grid's outputs.
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  const GlobalScale<S> globalScaleIn(globalScale);
  const i64 rows4 = (rows + 3) / 4 * 4;
  const i64 rows128 = (rows + 127) / 128 * 128;
  const i64 taskRows = kPadded ? rows4 : rows;
  const i64 expert = MASKED ? blockIdx.y : 0;

  // Lanes of a team and groups of a team (Geometry: several groups where a
  // team takes its steps across groups).
  constexpr int kTeam = Geo::kTeamLanes;
  constexpr int kTeamGroups = Geo::kGroupsPerTeam;
  const int lane = threadIdx.x % kTeam;
  const bool active = lane < TPG || Geo::kAcross;
  // The team's first group in the launch's numbering (row-major tasks when across).
  const i64 task = static_cast<i64>(blockIdx.x) * GPB + (threadIdx.x / kTeam) * kTeamGroups;

  // Scales of this expert.
  i64 scalesPerExpert;
  if constexpr (LAYOUT == kRow || LAYOUT == kCol)
    scalesPerExpert = rows * NG;
  else if constexpr (LAYOUT == kColTma)
    scalesPerExpert = rows4 * NG;
  else if constexpr (LAYOUT == kUe8m0Packed)
    scalesPerExpert = rows4 * kPackedWords * 4; // bytes
  else if constexpr (SWIZZLED)
    scalesPerExpert = rows128 * kTileCols * 4; // bytes
  else
    scalesPerExpert = rows * NG; // bytes
  float* scaleF = static_cast<float*>(scales) + (BYTE_SCALES ? 0 : expert * scalesPerExpert);
  unsigned char* scaleB = static_cast<unsigned char*>(scales) + (BYTE_SCALES ? expert * scalesPerExpert : 0);

  i64 t;
  int j;
  using Tiles = SwizzleTiles<S>;
  if constexpr (Tiles::kOn) {
    // Column L = blockIdx.x * kCols + the team's place in its warp, of row
    // pair p = L / kNGp; warp w takes the pair's row w.
    const u32 col = blockIdx.x * Tiles::kCols + (threadIdx.x % 32) / kTeam;
    const u32 pair = col / Tiles::kNGp;
    const int w = threadIdx.x / 32;
    t = static_cast<i64>(pair >> 4) * 128 + (w >> 1) * 32 + (pair & 15) * 2 + (w & 1);
    j = static_cast<int>(col - pair * Tiles::kNGp);
    if (t >= rows || j >= NG) {
      // Padding: a zeroing block's chunk, or a zero byte (no input), where
      // every thread of the block meets the barrier at flush.
      if (zeroesIdlePairs<S>(scaleB, rows))
        return;
      if (lane == 0)
        Tiles::staged()[Tiles::stagedAt(t)] = 0;
      goto flush;
    }
  } else if constexpr (SWIZZLED) {
    // Tasks cover the row pairs that hold a live row (swizzled_tasks.cuh),
    // then the zeroing blocks. The groups of a team (kTeamGroups, which
    // divides 4 and NG) are in one row and all live columns or all padding.
    if (swizzledPastLive<kTileCols>(task, rows)) {
      zeroesIdlePairs<S>(scaleB, rows);
      return;
    }
    const SwizzledTaskPlace<kTileCols> place(task, rows);
    t = place.t;
    j = place.j;
    if (t >= rows || j >= NG) {
      if (lane == 0)
#pragma unroll
        for (int m = 0; m < kTeamGroups; ++m)
          scaleB[place.byte + m] = 0;
      return;
    }
  } else if (task >= taskRows * NG) {
    return;
  } else {
    taskPlace<kColMajorTasks, NG>(task, taskRows, t, j);
  }
  {
  if (MASKED) {
    const i64 liveRows = static_cast<i64>(maskedM[expert]);
    if (t >= liveRows)
      return; // not computed (swizzled_128x4's padding is zero all the same)
  }

  if (kPadded && t >= rows) {
    if (lane == 0) {
      if constexpr (LAYOUT == kColTma) {
        scaleF[static_cast<i64>(j) * rows4 + t] = 0.0f;
      } else {
        const i64 word = static_cast<i64>(j / 4) * rows4 + t;
        scaleB[word * 4 + j % 4] = 0;
        if (j == NG - 1)
          for (int b = j % 4 + 1; b < 4; ++b)
            scaleB[word * 4 + b] = 0;
      }
    }
    return;
  }

  const unsigned char* row =
      static_cast<const unsigned char*>(x) + ((expert * rows + t) * ldx) * kInBytes;
  // The (first) group's first input: its first gate (split) or (gate, up) pair.
  const unsigned char* in = row + static_cast<i64>(j) * Geo::kGroupInBytes;

  const int vecLane = active ? lane : 0;
  float y[kSteps][kOutVec];
  // rows < 2^62 always: a zero the compiler cannot fold.
  const u32 zero = static_cast<u32>(rows >> 62);
  float amax[kTeamGroups];
  actMulFast<S>(in, vecLane, zero, y, amax);
#pragma unroll
  for (int m = 0; m < kTeamGroups; ++m)
    if (!active)
      amax[m] = 0.0f; // lanes past TPG hold a copy of lane 0's values
  // Team slots are kTeam consecutive lanes, aligned inside the warp.
  const unsigned teamMask =
      kTeam == 32 ? 0xffffffffu : (((1u << kTeam) - 1u) << ((threadIdx.x % 32) & ~(kTeam - 1)));
  bool anyNaN = false;
  // Padding threads of swizzled tiles wait at the block's barrier, not here;
  // a partial warp has no lanes to stand for.
  constexpr bool kWarpWide = !Tiles::kOn && (S::kGroupsPerBlock * kTeam) % 32 == 0;
#pragma unroll
  for (int m = 0; m < kTeamGroups; ++m) {
    amax[m] = teamMaxNaN<kTeam, kWarpWide>(amax[m], teamMask);
    anyNaN = anyNaN || amax[m] != amax[m];
  }
  if constexpr (Activation<S>::kSigmoid) {
    if (anyNaN) {
      // A NaN y, or a z outside the fast division's range, in the team (the
      // branch is uniform over the team): recompute with exact division, and
      // take amax as docs/contract.md does, NaN ignored.
      actMulExact<S>(in, vecLane, y, amax);
#pragma unroll
      for (int m = 0; m < kTeamGroups; ++m) {
        if (!active)
          amax[m] = 0.0f;
#pragma unroll
        for (int off = kTeam / 2; off > 0; off /= 2)
          amax[m] = fmaxf(amax[m], __shfl_xor_sync(teamMask, amax[m], off, kTeam));
      }
    }
  }
  if (!active)
    return;

  if constexpr (!Tiles::kOn && (SWIZZLED ? S::kMinBlocksPerSm > 0 : kRegisterCap32<S>)) {
    // Under an occupancy promise's register cap, the place again, from fresh
    // reads of the block and thread index: kept from the top through the
    // math it spilled (8-bit gelu_tanh with swizzled_128x4 scales under the
    // full-SM promise, 8 bytes; silu on bf16 with ue8m0_packed scales, 12).
    // Without a cap the registers are there, and the instructions are not:
    // 4,8,32 MXFP4 runs near its issue limit.
    u32 block, thread;
    asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(block));
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(thread));
    const i64 again = static_cast<i64>(block) * GPB + (thread / kTeam) * kTeamGroups;
    if constexpr (SWIZZLED) {
      const SwizzledTaskPlace<kTileCols> place(again, rows);
      t = place.t;
      j = place.j;
    } else if constexpr (kColMajorTasks) {
      t = again - static_cast<i64>(j) * taskRows; // j kept, not a second division
    } else {
      j = static_cast<int>(static_cast<u32>(again) - static_cast<u32>(t) * NG); // t kept
    }
  }
  const GroupOut out{t, expert, rows, rows4, q, scaleF, scaleB};
  if constexpr (Geo::kAcross) {
    // Lane m < kTeamGroups computes group m's scale, writes it, and the team
    // takes s and r from it: one scale a lane instead of every lane's
    // computing all of them. Steps m * kStepsPerGroup.. of every lane are in
    // group j + m: the team's lanes in order, chunk after chunk.
    constexpr int kSpg = Geo::kStepsPerGroup;
    const int mine = lane % kTeamGroups;
    float amaxMine = amax[0];
#pragma unroll
    for (int m = 1; m < kTeamGroups; ++m)
      amaxMine = mine == m ? amax[m] : amaxMine;
    const GroupScale own = groupScale<S>(amaxMine, scaleUb, globalScaleIn.value(globalScale));
    if (lane < kTeamGroups)
      storeScale<S>(own, j + lane, out);
#pragma unroll
    for (int m = 0; m < kTeamGroups; ++m) {
      GroupScale g = own;
      g.s = __shfl_sync(teamMask, own.s, m, kTeam);
      g.r = __shfl_sync(teamMask, own.r, m, kTeam);
      if constexpr (!ScaleKind<S>::kFixedMode)
        g.mode = __shfl_sync(teamMask, own.mode, m, kTeam);
      float ym[kSpg][kOutVec];
#pragma unroll
      for (int c = 0; c < kSpg; ++c)
#pragma unroll
        for (int k = 0; k < kOutVec; ++k)
          ym[c][k] = y[m * kSpg + c][k];
      quantizeGroup<S, kSpg, kTeam>(ym, g, groupQ<S>(j + m, out), lane);
    }
  } else {
    const GroupScale g = groupScale<S>(amax[0], scaleUb, globalScaleIn.value(globalScale));
    quantizeGroup<S, kSteps, TPG>(y, g, groupQ<S>(j, out), lane);
    if (lane == 0)
      storeScale<S>(g, j, out);
  }
  }
flush:
  if constexpr (Tiles::kOn) {
    // The block's scale bytes, staged by every team, to their sectors: one
    // 4-byte store a thread (bytes where the buffer is not 4-byte aligned).
    asm volatile("barrier.sync 0;" ::: "memory");
    if (threadIdx.x < S::kGroupsPerBlock / 4) {
      // Word threadIdx.x % 8 of the block's sector threadIdx.x / 8: quad
      // column `quad` of the layout, in row pair `pair`.
      const u32 quads = blockIdx.x * (Tiles::kCols / 4) + threadIdx.x / 8;
      const u32 pair = quads / (Tiles::kNGp / 4);
      const u32 quad = quads - pair * (Tiles::kNGp / 4);
      const i64 tile = static_cast<i64>(pair >> 4) * (Tiles::kNGp / 4) + quad;
      unsigned char* dst = scaleB + tile * 512 + (pair & 15) * 32 + (threadIdx.x % 8) * 4;
      const u32 word = reinterpret_cast<const u32*>(Tiles::staged())[threadIdx.x];
      if ((reinterpret_cast<unsigned long long>(scaleB) & 3u) == 0) {
        *reinterpret_cast<u32*>(dst) = word;
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i)
          dst[i] = static_cast<unsigned char>(word >> (8 * i));
      }
    }
  }
}

} // namespace bqjit_kernel
