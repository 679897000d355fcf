// bqjit kernel template: where a row's results go: q, and each scale layout
// (swizzled_128x4's tiles of 8 rows and zeroing blocks among them).
#pragma once

#include "bqjit/geometry.cuh"
#include "bqjit/scales.cuh"
#include "bqjit/swizzled_tasks.cuh"

namespace bqjit_kernel {

// A swizzled_128x4 launch's zeroing blocks (swizzled_tasks.cuh), found by a
// thread without a live task: in one, it stores its 16-byte chunk of zeros
// and says so (the whole block returns: no barrier waits for it).
template <class S>
__device__ __forceinline__ bool zeroesIdlePairs(unsigned char* scaleB, i64 rows) {
  constexpr int kTileCols = (S::kHidden / S::kGroupSize + 3) / 4;
  constexpr u32 kBlockThreads = kThreadsPerBlock<S>;
  u32 index;
  if (!zeroingBlock<kTileCols, kBlockThreads>(blockIdx.x, gridDim.x, rows, index))
    return false;
  i64 at;
  if (zeroChunk<kTileCols>(rows, index * kBlockThreads + threadIdx.x, at)) {
    unsigned char* dst = scaleB + at;
    if ((reinterpret_cast<unsigned long long>(scaleB) & 15u) == 0) {
      asm volatile("st.global.v4.u32 [%0], {%1, %1, %1, %1};" ::"l"(dst), "r"(0u));
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i)
        dst[i] = 0;
    }
  }
  return true;
}

// Blocks of 8 rows (version 16). A 32-byte sector of the layout holds 4
// groups of 8 rows: t and t + 1 (t even) and the same two 32, 64 and 96 rows
// on. In the task order of version 15 (the scale bytes' order) a warp's q
// stores touch 8 rows, 32 bytes each; in row order its 32 scale bytes go to
// 8 sectors, 4 bytes each: either way about three times the L2 write
// requests of the bytes layout, and about 8% of FP4's time (H200). Here a
// block of 256 threads takes those 8 rows (a "row pair" p: rows band * 128 +
// pair * 2 + {0, 1} + {0, 32, 64, 96}, p = band * 16 + pair), one warp a
// row, and kCols consecutive groups (a warp's teams, in row order: q stores
// of whole lines), and writes its scale bytes through shared memory, whole
// sectors, one 4-byte store a thread. Blocks take the columns of the row
// pairs one after another, L = p * kNGp + j, kCols of them a block: where
// kCols does not divide kNGp (gpt-oss's H = 2880) a block's quads continue
// in the next row pair, each quad in one. Where the warp is not one row of
// whole quads or the batch is masked (bytes of rows past an expert's count
// stay unwritten there), the tasks keep version 15's order.
template <class S> struct SwizzleTiles {
  static constexpr int kNG = S::kHidden / S::kGroupSize;
  static constexpr int kNGp = (kNG + 3) / 4 * 4;
  static constexpr int kSlot = TeamSlot<S::kThreadsPerGroup>::value;
  static constexpr int kCols = S::kGroupsPerBlock / 8; // groups of a row a block takes
  // The task blocks of the grid, ceil(pairs * kNGp / kCols) (swizzledTaskBlocks),
  // cover the live row pairs; where kCols does not divide pairs * kNGp the
  // last one's columns run on into the next pair of the same band, which is
  // padding (16 * kNGp is a multiple of kCols, which divides 64), and write
  // its zeros.
  static constexpr bool kOn = S::kScaleLayout == kSwizzled128x4 && !S::kMasked &&
                              !Geometry<S>::kAcross && kSlot == S::kThreadsPerGroup &&
                              kSlot * S::kGroupsPerBlock == 256 && kCols >= 4 && kCols % 4 == 0 &&
                              64 % kCols == 0;
  // The block's staged scale bytes: kCols / 4 sectors of 32.
  __device__ static __forceinline__ unsigned char* staged() {
    __shared__ __align__(16) unsigned char bytes[kOn ? S::kGroupsPerBlock : 4];
    return bytes;
  }
  // Where row t's scale of this thread's team goes in staged(): the team's
  // place in its warp is its column's place in the block (sector, byte).
  // FP4 under the promise of a full SM (32 registers) computes the place at
  // the store from a fresh read of threadIdx.x, which the kernel's mapping
  // allows (warp w holds row t with t & 1 = w & 1 and (t >> 5) & 3 = w >> 1):
  // kept from the top through the math, it spilled (NVFP4: 4 bytes). The
  // rest keep the form from t: ptxas fits FP4's other promises in 40
  // registers with it (from threadIdx.x alone it took 47), and 8-bit outputs
  // keep the kernels measured with it.
  __device__ static __forceinline__ int stagedAt(i64 t) {
    int team, tOdd, tQuarter;
    if constexpr (S::kOutDtype == kE2M1 && kRegisterCap32<S>) {
      u32 tid;
      asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
      team = static_cast<int>(tid % 32) / kSlot;
      tOdd = static_cast<int>(tid / 32) & 1;
      tQuarter = static_cast<int>(tid / 64) & 3;
    } else {
      team = static_cast<int>(threadIdx.x % 32) / kSlot;
      tOdd = static_cast<int>(t) & 1;
      tQuarter = static_cast<int>(t >> 5) & 3;
    }
    return team / 4 * 32 + tOdd * 16 + tQuarter * 4 + (team & 3);
  }
};

// Where a row's results go.
struct GroupOut {
  i64 t;      // the row
  i64 expert; // masked batches: the expert (0 otherwise)
  i64 rows;   // T
  i64 rows4;  // T rounded up to 4 (padded layouts)
  unsigned char* q;
  float* scaleF;         // fp32 scale layouts
  unsigned char* scaleB; // byte scale layouts
};

// Writes group jg's scale of row o.t in the spec's layout.
template <class S> __device__ __forceinline__ void storeScale(const GroupScale& g, int jg, const GroupOut& o) {
  constexpr int NG = S::kHidden / S::kGroupSize;
  constexpr int LAYOUT = S::kScaleLayout;
  const i64 t = o.t;
  if constexpr (LAYOUT == kRow) {
    o.scaleF[t * NG + jg] = g.s;
  } else if constexpr (LAYOUT == kCol) {
    o.scaleF[static_cast<i64>(jg) * o.rows + t] = g.s;
  } else if constexpr (LAYOUT == kColTma) {
    o.scaleF[static_cast<i64>(jg) * o.rows4 + t] = g.s;
  } else if constexpr (LAYOUT == kBytes) {
    o.scaleB[t * NG + jg] = static_cast<unsigned char>(g.byte);
  } else if constexpr (LAYOUT == kSwizzled128x4) {
    if constexpr (SwizzleTiles<S>::kOn)
      SwizzleTiles<S>::staged()[SwizzleTiles<S>::stagedAt(t)] = static_cast<unsigned char>(g.byte);
    else
      o.scaleB[swizzledOffset<NG>(t, jg)] = static_cast<unsigned char>(g.byte);
  } else {
    const i64 word = static_cast<i64>(jg / 4) * o.rows4 + t;
    o.scaleB[word * 4 + jg % 4] = static_cast<unsigned char>(g.byte);
    if (jg == NG - 1)
      for (int b = jg % 4 + 1; b < 4; ++b)
        o.scaleB[word * 4 + b] = 0;
  }
}

// Where group jg's q starts.
template <class S> __device__ __forceinline__ unsigned char* groupQ(int jg, const GroupOut& o) {
  return o.q + ((o.expert * o.rows + o.t) * S::kHidden + static_cast<i64>(jg) * S::kGroupSize) *
                   QuantTraits<S::kOutDtype>::kBits / 8;
}

} // namespace bqjit_kernel
