// bqjit kernel template: where swizzled_128x4's tasks and zeroing blocks go.
// Index arithmetic alone, so that a host test (tests/test_swizzled_tasks.cpp)
// compiles it too, with BQJIT_HD defined as plain `inline`, and checks it
// against the host's grid (planner/launch_grid.cpp).
#pragma once

#include "bqjit/common.cuh"

#ifndef BQJIT_HD
#define BQJIT_HD __device__ __forceinline__
#endif

namespace bqjit_kernel {

// swizzled_128x4 (docs/contract.md section 8): rows padded to 128, groups to 4;
// byte of scale (t, j) in one expert's buffer.
template <int NG> BQJIT_HD i64 swizzledOffset(i64 t, int j) {
  constexpr int kTileCols = (NG + 3) / 4;
  return ((t >> 7) * kTileCols + (j >> 2)) * 512 + (t & 31) * 16 + ((t >> 5) & 3) * 4 + (j & 3);
}

// The row pairs of swizzled_128x4 (8 rows whose scale bytes fill one 32-byte
// sector of each of their band's tiles: rows 2p, 2p + 1 and the same 32, 64
// and 96 rows on) that hold a live row: 16 a full band, and of a partial band
// of r rows its first min(16, ceil(r / 2)) (0 where T is a multiple of 128).
BQJIT_HD int partialBandPairs(i64 rows) {
  const u32 half = (static_cast<u32>(rows & 127) + 1) >> 1;
  return static_cast<int>(half < 16 ? half : 16);
}

// A swizzled_128x4 launch (the host's gridBlocks counts it with these): first the
// blocks of the tasks of the live row pairs (one task a scale byte, padding
// rows and columns included), then blocks that zero the other row pairs of a
// partial band, one 16-byte store a thread: bytes [pairs * 32, 512) of each
// of the band's tiles. The grid padded to 128 rows gave each padding pair
// its own blocks, 32-64 bytes a block: at 14336 x 1 it took 2.92 us where the
// bytes layout's grid of live rows took 1.69 (H100, bench/NOTES.md,
// thirtieth session). The zeroing blocks come last so that a block of live
// tasks asks nothing more of its start.
// tileCols: the tiles of a band (groups padded to 4, over 4); the kernel
// passes constants.
// The tasks of the full bands: their scale bytes, one task each.
BQJIT_HD i64 swizzledFullBandTasks(i64 rows, int tileCols) {
  return (rows >> 7) * (tileCols * 512);
}
BQJIT_HD i64 swizzledLiveTasks(i64 rows, int tileCols) {
  return ((rows >> 7) * 16 + partialBandPairs(rows)) * (tileCols * 32);
}
BQJIT_HD i64 swizzledTaskBlocks(i64 rows, int tileCols, int groupsPerBlock) {
  return (swizzledLiveTasks(rows, tileCols) + groupsPerBlock - 1) / groupsPerBlock;
}
// The 16-byte zeroing chunks of a launch: those of a partial band's idle pairs.
BQJIT_HD u32 swizzledZeroChunks(i64 rows, int tileCols) {
  const int pairs = partialBandPairs(rows);
  return pairs == 0 ? 0u : static_cast<u32>(tileCols) * (32 - 2 * pairs);
}
// The zeroing blocks of a launch of blockThreads threads a block.
BQJIT_HD u32 swizzledZeroBlocks(i64 rows, int tileCols, int blockThreads) {
  return (swizzledZeroChunks(rows, tileCols) + blockThreads - 1) / blockThreads;
}
// Whether block `block` of a launch of `blocks` is a zeroing block (they are
// its last ones), and its number among them. The threads of padding pairs
// ask this before their block's barrier, three in four warps of a block of
// 8 rows at T <= 32, so it costs two instructions for all but the last
// blocks a launch can zero with (one live pair: 30 chunks a tile). Counting
// the task blocks in 64 bits there (25 instructions, two branches) made
// 14336 x 31 NVFP4 3.62 -> 3.87 us on an H100, and 32-bit arithmetic for
// every block (15 instructions) still 3.80 (bench/NOTES.md, thirty-second
// session).
template <int TILE_COLS, int BLOCK_THREADS>
BQJIT_HD bool zeroingBlock(u32 block, u32 blocks, i64 rows, u32& index) {
  constexpr u32 kMostZeroBlocks = (TILE_COLS * 30u + BLOCK_THREADS - 1) / BLOCK_THREADS;
  if (block + kMostZeroBlocks < blocks)
    return false;
  const u32 zeroBlocks = swizzledZeroBlocks(rows, TILE_COLS, BLOCK_THREADS);
  index = block - (blocks - zeroBlocks);
  return block + zeroBlocks >= blocks;
}
// Zeroing chunk c (16 bytes) of a partial band with 1..15 live pairs: whether
// there is one, and its byte offset.
template <int TILE_COLS> BQJIT_HD bool zeroChunk(i64 rows, u32 c, i64& offset) {
  const int pairs = partialBandPairs(rows);
  const u32 perTile = 32 - 2 * pairs; // 16-byte chunks a tile
  if (c >= TILE_COLS * perTile)
    return false;
  const u32 tile = c / perTile;
  offset = ((rows >> 7) * TILE_COLS + tile) * 512 + pairs * 32 + (c - tile * perTile) * 16;
  return true;
}

// The place of a live task of a swizzled_128x4 launch that is not in blocks
// of 8 rows (masked batches, teams across groups, other block sizes): the
// scale byte it writes, its row and its (first) group. In the full bands the
// task is the byte (the bytes' order, tile by tile: a warp's teams fill whole
// sectors, and the order the shapes were measured in; pair by pair, 4,8,32
// MXFP4 at 14336 x 8192 was 10% slower on an H100, bench/NOTES.md,
// thirty-first session). In a partial band, whose tasks cover its live row
// pairs alone, the pair's sector of every tile, pair after pair.
template <int TILE_COLS> struct SwizzledTaskPlace {
  i64 byte, t;
  int j;
  BQJIT_HD SwizzledTaskPlace(i64 task, i64 rows) {
    const i64 fullBandBytes = swizzledFullBandTasks(rows, TILE_COLS);
    byte = task;
    if (task >= fullBandBytes) {
      const u32 k = static_cast<u32>(task - fullBandBytes);
      const u32 pair = k / (TILE_COLS * 32);
      const u32 inPair = k - pair * (TILE_COLS * 32);
      byte = fullBandBytes + (inPair >> 5) * 512 + pair * 32 + (inPair & 31);
    }
    // 32 bits for the tiles: a scale buffer of 2^32 tiles would be 2 TiB.
    const u32 tile = static_cast<u32>(byte >> 9);
    const int p = static_cast<int>(byte & 511);
    const u32 band = tile / TILE_COLS;
    t = static_cast<i64>(band) * 128 + ((p >> 2) & 3) * 32 + (p >> 4);
    j = static_cast<int>(tile - band * TILE_COLS) * 4 + (p & 3);
  }
};

// Whether a task of a swizzled_128x4 launch is past the live ones (a zeroing
// block's thread): the full bands' test first, so that a task there (all of
// them but a partial band's) asks no more of its start than that.
template <int TILE_COLS> BQJIT_HD bool swizzledPastLive(i64 task, i64 rows) {
  return task >= swizzledFullBandTasks(rows, TILE_COLS) &&
         task >= swizzledLiveTasks(rows, TILE_COLS);
}

} // namespace bqjit_kernel
