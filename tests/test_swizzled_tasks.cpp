// swizzled_128x4's task arithmetic (templates/swizzled_tasks.cuh, compiled
// here for the host) against the host's grid (planner/launch_grid.cpp): the
// launch gridBlocks gives, run thread by thread as the kernel's task order
// runs it, writes every scale byte of the padded layout exactly once (a
// live task's scale, a padding task's zero, or a zeroing block's chunk),
// does every live (row, group) exactly once, and writes nothing past the
// buffer. The GPU suites check the same through the kernel's outputs; this
// checks the index arithmetic on every CI machine, at every T of a band.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "planner/launch_grid.hpp"

#define BQJIT_HD inline
#include "bqjit/swizzled_tasks.cuh"

namespace bqjit {
namespace {

using bqjit_kernel::i64;
using bqjit_kernel::u32;

// One launch shape of the task order: NG groups a row, GPB groups a block,
// SLOT lanes a team's slot (TPG rounded up), TEAM_GROUPS groups a team
// (teams across groups: their lanes are SLOT x TEAM_GROUPS).
template <int NG, int GPB, int SLOT, int TEAM_GROUPS> struct TaskOrder {
  static constexpr int kTileCols = (NG + 3) / 4;
  static constexpr int kBlockThreads = SLOT * GPB;
  static constexpr int kTeamLanes = SLOT * TEAM_GROUPS;

  // The kernel's zeroing branch (templates/outputs.cuh zeroesIdlePairs).
  static bool zeroes(u32 block, u32 blocks, u32 thread, i64 rows, std::vector<int>& writes) {
    u32 index = 0;
    if (!bqjit_kernel::zeroingBlock<kTileCols, kBlockThreads>(block, blocks, rows, index))
      return false;
    i64 at = 0;
    if (bqjit_kernel::zeroChunk<kTileCols>(rows, index * kBlockThreads + thread, at)) {
      for (int i = 0; i < 16; ++i) {
        if (at + i >= static_cast<i64>(writes.size()))
          return ADD_FAILURE() << "zeroing chunk past the buffer at " << at, true;
        ++writes[at + i];
      }
    }
    return true;
  }

  // Runs the grid of `blocks` blocks; counts each scale byte's writes and
  // each (row, group)'s computations.
  static void run(i64 rows, int64_t blocks, std::vector<int>& writes, std::vector<int>& done) {
    for (int64_t b = 0; b < blocks; ++b)
      for (int th = 0; th < kBlockThreads; ++th) {
        const int lane = th % kTeamLanes;
        const i64 task = b * GPB + (th / kTeamLanes) * TEAM_GROUPS;
        if (bqjit_kernel::swizzledPastLive<kTileCols>(task, rows)) {
          zeroes(static_cast<u32>(b), static_cast<u32>(blocks), static_cast<u32>(th), rows, writes);
          continue;
        }
        const bqjit_kernel::SwizzledTaskPlace<kTileCols> place(task, rows);
        ASSERT_EQ(place.byte, bqjit_kernel::swizzledOffset<NG>(place.t, place.j))
            << "task " << task << " T=" << rows;
        if (lane != 0)
          continue;
        for (int m = 0; m < TEAM_GROUPS; ++m) {
          ASSERT_LT(place.byte + m, static_cast<i64>(writes.size())) << "task " << task;
          ++writes[place.byte + m];
          if (place.t < rows && place.j < NG) {
            ASSERT_LT(place.j + m, NG) << "a team's groups run past the row, task " << task;
            ASSERT_EQ(bqjit_kernel::swizzledOffset<NG>(place.t, place.j + m), place.byte + m);
            ++done[place.t * NG + place.j + m];
          }
        }
      }
  }

  static void check(int hidden, int group, const LaunchShape& shape) {
    ASSERT_EQ(hidden / group, NG);
    ASSERT_EQ(shape.groupsPerBlock, GPB);
    ASSERT_EQ(shape.teamSlot(), SLOT);
    KernelSpec spec;
    spec.hidden = hidden;
    spec.groupSize = group;
    spec.outDtype = OutDtype::FP4E2M1;
    spec.ue8m0 = group == 32;
    spec.scaleLayout = ScaleLayout::Swizzled128x4;
    spec.shape = shape;
    for (i64 rows = 1; rows <= 300; ++rows) {
      const int64_t blocks = gridBlocks(spec, rows);
      const i64 bytes = (rows + 127) / 128 * 128 * kTileCols * 4;
      std::vector<int> writes(bytes, 0), done(rows * NG, 0);
      run(rows, blocks, writes, done);
      if (testing::Test::HasFatalFailure())
        return;
      int wrong = 0;
      for (i64 i = 0; i < bytes; ++i)
        if (writes[i] != 1 && wrong++ < 3)
          ADD_FAILURE() << "NG=" << NG << " GPB=" << GPB << " T=" << rows << ": scale byte " << i
                        << " written " << writes[i] << " times";
      for (i64 i = 0; i < rows * NG; ++i)
        if (done[i] != 1 && wrong++ < 6)
          ADD_FAILURE() << "NG=" << NG << " GPB=" << GPB << " T=" << rows << ": (" << i / NG << ", "
                        << i % NG << ") computed " << done[i] << " times";
      if (wrong)
        return;
      // The grid holds no block past the zeroing blocks' last chunk.
      const int pairs = bqjit_kernel::partialBandPairs(rows);
      const int64_t taskBlocks = bqjit_kernel::swizzledTaskBlocks(rows, kTileCols, GPB);
      const int64_t zeroBlocks =
          pairs > 0 && pairs < 16
              ? (kTileCols * (32 - 2 * pairs) + kBlockThreads - 1) / kBlockThreads
              : 0;
      EXPECT_EQ(blocks, taskBlocks + zeroBlocks) << "T=" << rows;
    }
  }
};

TEST(SwizzledTasks, TheHostsGridWritesEveryScaleByteOnceInTheTaskOrder) {
  // 90 groups (padding columns), 128-thread blocks.
  TaskOrder<90, 32, 4, 1>::check(2880, 32, LaunchShape{4, 8, 32});
  // Teams across two groups (gpt-oss's teams of 2 lanes at G = 32).
  TaskOrder<90, 128, 2, 2>::check(2880, 32, LaunchShape{2, 8, 128});
  // One thread a group across four groups; 448 groups a row.
  TaskOrder<448, 256, 1, 4>::check(7168, 16, LaunchShape{1, 8, 256});
  // Six groups a row (fewer than a block's), an odd block of 12 groups.
  TaskOrder<6, 12, 8, 1>::check(96, 16, LaunchShape{8, 2, 12});
  // 8-bit's few-token teams of 16 threads, 16 groups a block.
  TaskOrder<24, 16, 16, 1>::check(3072, 128, LaunchShape{16, 8, 16});
}

// swizzled_128x4 in blocks of 8 rows (SwizzleTiles: kCols = GPB / 8 groups
// of a row pair a block): the task blocks the template counts cover the live
// row pairs' columns, and the last one's overflow stays inside the band.
TEST(SwizzledTasks, TaskBlocksInBlocksOfEightRowsStayInsideTheBand) {
  auto check = [](auto tileCols, auto gpb) {
    constexpr int kTileCols = decltype(tileCols)::value, GPB = decltype(gpb)::value;
    constexpr int kNGp = kTileCols * 4, kCols = GPB / 8;
    for (i64 rows = 1; rows <= 600; ++rows) {
      const i64 pairs = (rows >> 7) * 16 + bqjit_kernel::partialBandPairs(rows);
      const i64 columns = bqjit_kernel::swizzledTaskBlocks(rows, kTileCols, GPB) * kCols;
      EXPECT_GE(columns, pairs * kNGp) << "T=" << rows;
      // The last column's pair lies in the last band the layout holds.
      EXPECT_LT((columns - 1) / kNGp, (rows + 127) / 128 * 16) << "T=" << rows;
    }
  };
  check(std::integral_constant<int, 23>{}, std::integral_constant<int, 64>{});  // 2880 / 32
  check(std::integral_constant<int, 45>{}, std::integral_constant<int, 256>{}); // 2880 / 16
  check(std::integral_constant<int, 2>{}, std::integral_constant<int, 256>{});  // 96 / 16
  check(std::integral_constant<int, 224>{}, std::integral_constant<int, 32>{}); // 14336 / 16
}

} // namespace
} // namespace bqjit
