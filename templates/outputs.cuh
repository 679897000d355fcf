// bqjit kernel template: where a row's results go: q, and each scale layout
// (swizzled_128x4's tiles of 8 rows among them).
#pragma once

#include "bqjit/geometry.cuh"
#include "bqjit/scales.cuh"

namespace bqjit_kernel {

// swizzled_128x4 (docs/contract.md section 8): rows padded to 128, groups to 4;
// byte of scale (t, j) in one expert's buffer.
template <int NG> __device__ __forceinline__ i64 swizzledOffset(i64 t, int j) {
  constexpr int kTileCols = (NG + 3) / 4;
  return ((t >> 7) * kTileCols + (j >> 2)) * 512 + (t & 31) * 16 + ((t >> 5) & 3) * 4 + (j & 3);
}

// The row pairs of swizzled_128x4 (8 rows whose scale bytes fill one 32-byte
// sector of each of their band's tiles: rows 2p, 2p + 1 and the same 32, 64
// and 96 rows on) that hold a live row: 16 a full band, and of a partial band
// of r rows its first min(16, ceil(r / 2)) (0 where T is a multiple of 128).
__device__ __forceinline__ int partialBandPairs(i64 rows) {
  const int r = static_cast<int>(rows & 127);
  return r == 0 ? 0 : r >= 31 ? 16 : (r + 1) / 2;
}

// The place of task `task` of a swizzled_128x4 launch that is not in blocks
// of 8 rows (masked batches, teams across groups, other block sizes): the
// scale byte it writes, its row and its (first) group. In the full bands the
// task is the byte (the bytes' order, tile by tile: a warp's teams fill whole
// sectors, and the order the shapes were measured in; pair by pair, 4,8,32
// MXFP4 at 14336 x 8192 was 10% slower on an H100, bench/NOTES.md,
// thirty-first session). In a partial band, whose tasks cover its live row
// pairs alone (partialBandPairs), the pair's sector of every tile, pair after
// pair. The caller has checked that the task is live.
template <class S> struct SwizzledTaskPlace {
  static constexpr int kTileCols = (S::kHidden / S::kGroupSize + 3) / 4;
  i64 byte, t;
  int j;
  __device__ __forceinline__ SwizzledTaskPlace(i64 task, i64 rows) {
    const i64 fullBandBytes = (rows >> 7) * (kTileCols * 512);
    byte = task;
    if (task >= fullBandBytes) {
      const u32 k = static_cast<u32>(task - fullBandBytes);
      const u32 pair = k / (kTileCols * 32);
      const u32 inPair = k - pair * (kTileCols * 32);
      byte = fullBandBytes + (inPair >> 5) * 512 + pair * 32 + (inPair & 31);
    }
    const i64 tile = byte >> 9;
    const int p = static_cast<int>(byte & 511);
    const i64 band = tile / kTileCols;
    t = band * 128 + ((p >> 2) & 3) * 32 + (p >> 4);
    j = static_cast<int>(tile - band * kTileCols) * 4 + (p & 3);
  }
};

// A swizzled_128x4 launch (the host's gridBlocks mirrors it): first the
// blocks of the tasks of the live row pairs, then blocks that zero the other
// row pairs of a partial band, one 16-byte store a thread: bytes [pairs * 32,
// 512) of each of the band's tiles. The grid padded to 128 rows gave each
// padding pair its own blocks, 32-64 bytes a block: at 14336 x 1 it took 2.92
// us where the bytes layout's grid of live rows took 1.69 (H100,
// bench/NOTES.md, thirtieth session). The zeroing blocks come last so that a
// block of live tasks asks nothing more of its start.
template <class S> struct SwizzledGrid {
  static constexpr int kTileCols = (S::kHidden / S::kGroupSize + 3) / 4;
  static constexpr u32 kBlockThreads = TeamSlot<S::kThreadsPerGroup>::value * S::kGroupsPerBlock;
  // Called by a thread without a live task: in a zeroing block, stores its
  // chunk and says so (the whole block returns: no barrier waits for it).
  __device__ static __forceinline__ bool zeroes(unsigned char* scaleB, i64 rows) {
    const int pairs = partialBandPairs(rows);
    const i64 livePairs = (rows >> 7) * 16 + pairs;
    const i64 taskBlocks =
        (livePairs * (8 * 4 * kTileCols) + S::kGroupsPerBlock - 1) / S::kGroupsPerBlock;
    if (blockIdx.x < taskBlocks)
      return false;
    const u32 perTile = 32 - 2 * pairs; // 16-byte chunks a tile
    const u32 c = static_cast<u32>(blockIdx.x - taskBlocks) * kBlockThreads + threadIdx.x;
    if (c < kTileCols * perTile) {
      const u32 tile = c / perTile;
      unsigned char* dst = scaleB + ((rows >> 7) * kTileCols + tile) * 512 + pairs * 32 +
                           (c - tile * perTile) * 16;
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
};

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
  // The task blocks of the grid, ceil(pairs * kNGp / kCols) (SwizzledGrid),
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
    if constexpr (S::kOutDtype == kE2M1 && S::kMinBlocksPerSm * 256 >= 2048) {
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
