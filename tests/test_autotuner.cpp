// The autotuner's rules, without a GPU: the rows a tuning takes (the
// launch's, within a memory budget, inside the regime), the buffer sets it
// rotates, the shapes it times (the incumbent first, none wider than the
// handle's callers align for) and the winner (only by more than the margin).
// The tuning itself runs in test_gpu_runtime.
#include "runtime/autotuner.hpp"

#include <algorithm>

#include <gtest/gtest.h>

#include "planner/launch_heuristic.hpp"

namespace bqjit {
namespace {

KernelSpec spec(int hidden, int group = 128, InDtype in = InDtype::BF16) {
  KernelSpec s;
  s.hidden = hidden;
  s.groupSize = group;
  s.inDtype = in;
  s.arch = "sm_90";
  return s;
}

TEST(Autotuner, BuffersHoldInputOutputAndTheLargestScaleLayout) {
  const KernelSpec s = spec(7168);
  const TuneBuffers b = tuneBuffers(s, 100);
  EXPECT_EQ(b.xBytes, 100 * 2 * 7168 * 2);
  EXPECT_EQ(b.qBytes, 100 * 7168);
  // 56 groups: swizzled_128x4 pads 100 rows to 128 and 56 columns to 56, of
  // 4-byte words, more than every other layout's (col_tma: 100 x 56 x 4).
  EXPECT_EQ(b.scaleBytes, 128 * 56 * 4);
  KernelSpec fp4 = s;
  fp4.outDtype = OutDtype::FP4E2M1;
  fp4.groupSize = 16;
  EXPECT_EQ(tuneBuffers(fp4, 100).qBytes, 100 * 7168 / 2);
  EXPECT_EQ(tuneBuffers(fp4, 100).scaleBytes, 128 * 448 * 4);
}

TEST(Autotuner, TuningKeepsTheLaunchsRowsWhereTheyFit) {
  const KernelSpec s = spec(7168);
  for (int64_t t : {1, 7, 146, 585, 4000}) {
    const Regime r = regimeFor(t * 7168);
    auto tokens = tuneTokens(s, r, t);
    ASSERT_TRUE(tokens.has_value()) << t;
    EXPECT_EQ(*tokens, t);
  }
}

TEST(Autotuner, TuningShrinksToTheBudgetButStaysInTheRegime) {
  for (InDtype in : {InDtype::BF16, InDtype::FP32}) {
    const KernelSpec s = spec(7168, 128, in);
    const int64_t asked = 16384;
    ASSERT_EQ(regimeFor(asked * 7168), Regime::VeryManyTokens);
    ASSERT_GT(tuneBuffers(s, asked).setBytes(), kTuneBudgetBytes);
    auto tokens = tuneTokens(s, Regime::VeryManyTokens, asked);
    ASSERT_TRUE(tokens.has_value());
    EXPECT_LT(*tokens, asked);
    EXPECT_EQ(regimeFor(*tokens * 7168), Regime::VeryManyTokens) << *tokens;
    EXPECT_LE(tuneBuffers(s, *tokens).setBytes(), kTuneBudgetBytes);
    // As many rows as fit.
    EXPECT_GT(tuneBuffers(s, *tokens + 1).setBytes(), kTuneBudgetBytes) << *tokens;
  }
}

TEST(Autotuner, NoTuningWhereTheRegimesSmallestProblemDoesNotFit) {
  const KernelSpec s = spec(7168);
  // The very-many-token regime starts past 2^25 elements: 128 MiB of bf16 input.
  EXPECT_FALSE(tuneTokens(s, Regime::VeryManyTokens, 8192, int64_t(64) << 20).has_value());
  auto few = tuneTokens(s, Regime::FewTokens, 400, int64_t(64) << 20);
  ASSERT_TRUE(few.has_value());
  EXPECT_EQ(*few, 400);
}

TEST(Autotuner, SetsCoverTwiceTheL2WithinTheBudget) {
  DeviceProfile h200 = *DeviceProfile::known("H200");
  ASSERT_GT(h200.l2Bytes, 0);
  TuneBuffers small;
  small.xBytes = 1 << 20;
  EXPECT_EQ(tuneSets(small, h200), kTuneMaxSets);
  TuneBuffers half;
  half.xBytes = h200.l2Bytes;
  EXPECT_EQ(tuneSets(half, h200), 2);
  TuneBuffers huge;
  huge.xBytes = int64_t(300) << 20;
  EXPECT_EQ(tuneSets(huge, h200), 1);
  // The budget bounds the sets before the L2 does.
  EXPECT_EQ(tuneSets(half, h200, h200.l2Bytes + 1), 1);
}

TEST(Autotuner, CandidatesStartWithTheIncumbentAndFitTheHandlesAlignment) {
  const DeviceProfile h200 = *DeviceProfile::known("H200");
  for (int g : {64, 128}) {
    const KernelSpec s = spec(7168, g);
    for (Regime r : kRegimes) {
      const LaunchShape incumbent = chooseLaunchShape(s, r, h200);
      const std::vector<LaunchShape> all = candidateShapes(s, r, h200);
      const std::vector<LaunchShape> wide = tuneCandidates(s, r, h200, incumbent, 16);
      ASSERT_FALSE(wide.empty());
      EXPECT_EQ(wide.front(), incumbent);
      EXPECT_EQ(wide.size(), all.size()) << regimeName(r); // the incumbent is all's first
      for (const LaunchShape& c : all)
        EXPECT_NE(std::find(wide.begin(), wide.end(), c), wide.end());

      const std::vector<LaunchShape> narrow = tuneCandidates(s, r, h200, incumbent, 4);
      EXPECT_EQ(narrow.front(), incumbent);
      EXPECT_GT(narrow.size(), 1u);
      for (size_t i = 1; i < narrow.size(); ++i) {
        EXPECT_LE(narrow[i].vecWidth, 4);
        EXPECT_EQ(std::count(narrow.begin(), narrow.end(), narrow[i]), 1);
      }
    }
  }
}

TEST(Autotuner, WinnerMustBeatTheIncumbentByTheMargin) {
  EXPECT_EQ(pickWinner({10.0}), 0u);
  EXPECT_EQ(pickWinner({10.0, 9.9}), 0u);        // 1%: noise
  EXPECT_EQ(pickWinner({10.0, 9.7}), 1u);        // 3%
  EXPECT_EQ(pickWinner({10.0, 9.7, 9.0}), 2u);   // the fastest
  EXPECT_EQ(pickWinner({10.0, 11.0, 12.0}), 0u); // none faster
  EXPECT_EQ(pickWinner({10.0, 0.0, 9.0}), 2u);   // an untimed candidate never wins
  EXPECT_EQ(pickWinner({0.0, 5.0, 6.0}), 1u);    // nor an untimed incumbent
  EXPECT_EQ(pickWinner({10.0, 9.7}, 0.05), 0u);
}

} // namespace
} // namespace bqjit
