// The planner: which shapes a spec needs and which serves each regime; tuning
// records (stored, read once per process, ignored when unusable, reloaded on
// request); validation at the entry.
#include "planner/planner.hpp"

#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "core/fs_util.hpp"
#include "planner/launch_grid.hpp"
#include "planner/launch_heuristic.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

KernelSpec smallSpec(int hidden = 1024) {
  KernelSpec s;
  s.hidden = hidden;
  s.groupSize = 128;
  s.arch = "sm_90";
  return s;
}

// `s` with one change made by `change`.
template <class Change> KernelSpec changed(KernelSpec s, Change change) {
  change(s);
  return s;
}

// NVFP4 (G = 16) or MXFP4 (G = 32) with swizzled_128x4 scales for sm_90.
KernelSpec fp4(int hidden, bool mx) {
  KernelSpec s;
  s.hidden = hidden;
  s.groupSize = mx ? 32 : 16;
  s.ue8m0 = mx;
  s.outDtype = OutDtype::FP4E2M1;
  s.scaleLayout = ScaleLayout::Swizzled128x4;
  s.arch = "sm_90";
  return s;
}

class PlannerTest : public testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bqjit_planner_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { llvm::consumeError(fs::removeTree(dir_)); }

  Config config(const std::string& cacheDir) {
    Config c;
    c.cacheDir = cacheDir;
    c.logSink = [this](LogLevel level, const std::string& text) {
      std::lock_guard<std::mutex> lock(logMutex_);
      if (level == LogLevel::Warn)
        warnings_.push_back(text);
    };
    return c;
  }
  Planner planner(const std::string& code = "code v1") { return Planner(config(dir_), code); }
  LaunchShape shapeOf(const Planner& p, const KernelSpec& spec, Regime regime = kDefaultRegime) {
    auto r = p.resolve(spec, regime);
    if (!r) {
      ADD_FAILURE() << consumeToString(r.takeError());
      return {};
    }
    return *r->shape;
  }
  std::vector<std::string> records() const {
    return fs::listDirectory(dir_ + "/" + kCacheLayoutDir + "/tuned");
  }

  std::string dir_;
  std::mutex logMutex_;
  std::vector<std::string> warnings_;
};

TEST_F(PlannerTest, InvalidSpecIsRejectedAtTheEntry) {
  Planner p = planner();
  KernelSpec bad = smallSpec();
  bad.hidden = 300;
  std::string message;
  EXPECT_EQ(consumeError(p.plan(bad).takeError(), &message), ErrorCode::InvalidSpec);
  EXPECT_TRUE(contains(message, "'group_size' = 128"));
  EXPECT_EQ(consumeError(p.resolve(bad).takeError(), &message), ErrorCode::InvalidSpec);
  EXPECT_TRUE(contains(message, "'group_size' = 128"));
}

TEST_F(PlannerTest, TunedShapeIsUsed) {
  Planner p = planner();
  const KernelSpec spec = smallSpec(1024);
  const LaunchShape heuristic = chooseLaunchShape(spec);
  const LaunchShape tuned = withDerivedOccupancy(spec, LaunchShape{4, 8, 64});
  ASSERT_NE(tuned, heuristic);
  EXPECT_EQ(shapeOf(p, spec), heuristic);
  const uint64_t generation = p.tuning().generation();
  ASSERT_FALSE(bool(p.tuning().store(spec, LaunchShape{4, 8, 64}, kDefaultRegime)));
  // Stored in this process: seen at once, and the generation says so.
  EXPECT_NE(p.tuning().generation(), generation);
  EXPECT_EQ(shapeOf(p, spec), tuned);
  ASSERT_EQ(records().size(), 1u);
  EXPECT_TRUE(contains(records()[0], std::string(".") + regimeName(kDefaultRegime) + ".json"));

  // Another planner on the same directory (another process) sees the record.
  Planner other = planner();
  EXPECT_EQ(shapeOf(other, spec), tuned);
  // Other specs and other architectures are not affected.
  EXPECT_EQ(shapeOf(other, smallSpec(2048)), chooseLaunchShape(smallSpec(2048)));
  KernelSpec otherArch = spec;
  otherArch.arch = "sm_80";
  EXPECT_EQ(shapeOf(other, otherArch), heuristic);
  // Nor does other kernel code (another template or NVRTC).
  EXPECT_EQ(shapeOf(planner("code v2"), spec), heuristic);
  EXPECT_TRUE(warnings_.empty());
}

// A record holds for one GPU model: an H100's shape does not serve an H200,
// and planning for a model takes that model's records and heuristic.
TEST_F(PlannerTest, TuningRecordsAreKeyedByDeviceModel) {
  Planner p = planner();
  const KernelSpec spec = smallSpec(1024);
  const DeviceProfile h100 = *DeviceProfile::known("H100 80GB HBM3");
  const DeviceProfile h200 = *DeviceProfile::known("H200");
  const LaunchShape tuned = withDerivedOccupancy(spec, LaunchShape{2, 8, 64});
  ASSERT_FALSE(bool(p.tuning().store(spec, LaunchShape{2, 8, 64}, kDefaultRegime, h100)));
  auto onH100 = p.resolve(spec, kDefaultRegime, h100);
  auto onH200 = p.resolve(spec, kDefaultRegime, h200);
  auto byArch = p.resolve(spec, kDefaultRegime);
  ASSERT_TRUE(onH100 && onH200 && byArch);
  EXPECT_EQ(*onH100->shape, tuned);
  EXPECT_EQ(*onH200->shape, chooseLaunchShape(spec, kDefaultRegime, h200));
  EXPECT_EQ(*byArch->shape, chooseLaunchShape(spec));
  ASSERT_EQ(records().size(), 1u);
  EXPECT_TRUE(contains(records()[0], ".H100_80GB_HBM3." + std::string(regimeName(kDefaultRegime))))
      << records()[0];
  // plan() with a device: every regime from that device's heuristic.
  auto plan = p.plan(spec, h200);
  ASSERT_TRUE(bool(plan));
  for (Regime r : kRegimes)
    EXPECT_EQ(*plan->variantFor(r).shape, chooseLaunchShape(spec, r, h200)) << regimeName(r);
}

TEST_F(PlannerTest, RecordsAreReadOncePerProcessUntilReload) {
  const KernelSpec spec = smallSpec(1024);
  Planner reader = planner();
  EXPECT_EQ(shapeOf(reader, spec), chooseLaunchShape(spec)); // no record yet: remembered
  Planner writer = planner();
  ASSERT_FALSE(bool(writer.tuning().store(spec, LaunchShape{4, 8, 64}, kDefaultRegime)));
  // Another process's record is not seen until an explicit reload.
  EXPECT_EQ(shapeOf(reader, spec), chooseLaunchShape(spec));
  const uint64_t generation = reader.tuning().generation();
  reader.tuning().reload();
  EXPECT_NE(reader.tuning().generation(), generation);
  EXPECT_EQ(shapeOf(reader, spec).threadsPerGroup, 4);
  // Once read, the file is not read again: removing it changes nothing.
  for (const auto& name : records())
    ASSERT_EQ(::unlink((dir_ + "/" + kCacheLayoutDir + "/tuned/" + name).c_str()), 0);
  EXPECT_EQ(shapeOf(reader, spec).threadsPerGroup, 4);
}

TEST_F(PlannerTest, ExplicitShapeIgnoresTunedRecordAndGetsItsOccupancy) {
  Planner p = planner();
  const KernelSpec spec = smallSpec(1024);
  ASSERT_FALSE(bool(p.tuning().store(spec, LaunchShape{4, 8, 64}, kDefaultRegime)));
  KernelSpec explicitSpec = spec;
  explicitSpec.shape = LaunchShape{16, 8, 8};
  EXPECT_EQ(shapeOf(p, explicitSpec), withDerivedOccupancy(spec, LaunchShape{16, 8, 8}));
  explicitSpec.shape = LaunchShape{16, 8, 8, 5};
  EXPECT_EQ(shapeOf(p, explicitSpec).minBlocksPerSm, 5);
}

TEST_F(PlannerTest, InvalidTunedShapeIsRefused) {
  Planner p = planner();
  auto err = p.tuning().store(smallSpec(), LaunchShape{3, 8, 64}, kDefaultRegime);
  ASSERT_TRUE(bool(err));
  std::string message;
  EXPECT_EQ(consumeError(std::move(err), &message), ErrorCode::InvalidSpec);
  EXPECT_TRUE(contains(message, "threads_per_group"));
  EXPECT_TRUE(records().empty());
}

TEST_F(PlannerTest, NoCacheDirectoryMeansNoRecords) {
  Planner p(config(""), "code v1");
  auto err = p.tuning().store(smallSpec(), LaunchShape{4, 8, 64}, kDefaultRegime);
  ASSERT_TRUE(bool(err));
  EXPECT_EQ(consumeError(std::move(err), nullptr), ErrorCode::CacheError);
  EXPECT_EQ(shapeOf(p, smallSpec()), chooseLaunchShape(smallSpec()));
}

TEST_F(PlannerTest, UnreadableTunedRecordFallsBackWithWarning) {
  const KernelSpec spec = smallSpec(1024);
  ASSERT_FALSE(bool(planner().tuning().store(spec, LaunchShape{4, 8, 64}, kDefaultRegime)));
  ASSERT_EQ(records().size(), 1u);
  { std::ofstream(dir_ + "/" + kCacheLayoutDir + "/tuned/" + records()[0]) << "{ torn"; }
  Planner p = planner();
  EXPECT_EQ(shapeOf(p, spec), chooseLaunchShape(spec));
  EXPECT_EQ(shapeOf(p, spec), chooseLaunchShape(spec)); // read and warned once
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_TRUE(contains(warnings_[0], "tuning record"));
}

TEST_F(PlannerTest, TunedRecordWithShapeInvalidForSpecIsIgnored) {
  // A record whose spec is valid on its own (bf16, 16-byte loads of 8
  // elements) but whose shape does not fit the spec asked for (fp32).
  KernelSpec spec = smallSpec(1024);
  spec.inDtype = InDtype::FP32;
  ASSERT_FALSE(bool(planner().tuning().store(spec, LaunchShape{8, 4, 32}, kDefaultRegime)));
  ASSERT_EQ(records().size(), 1u);
  KernelSpec foreign = smallSpec(1024);
  foreign.shape = LaunchShape{4, 8, 64};
  {
    std::ofstream(dir_ + "/" + kCacheLayoutDir + "/tuned/" + records()[0])
        << nlohmann::json({{"spec", foreign.toJson()}}).dump();
  }
  Planner p = planner();
  auto resolved = p.resolve(spec);
  ASSERT_TRUE(bool(resolved)) << consumeToString(resolved.takeError());
  EXPECT_EQ(*resolved->shape, chooseLaunchShape(spec));
  EXPECT_EQ(resolved->inDtype, InDtype::FP32);
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_TRUE(contains(warnings_[0], "tuning record"));
}

// A spec that leaves its shape to bqjit launches with one shape per regime
// (once where two agree); an explicit shape is the only one.
TEST_F(PlannerTest, HeuristicSpecsHaveAShapePerRegime) {
  Planner p = planner();
  KernelSpec spec;
  spec.hidden = 7168;
  spec.groupSize = 128;
  auto plan = p.plan(spec);
  ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
  ASSERT_EQ(plan->variants.size(), 4u);
  for (Regime r : kRegimes)
    EXPECT_EQ(*plan->variantFor(r).shape, chooseLaunchShape(spec, r)) << regimeName(r);
  EXPECT_EQ(plan->variantFor(Regime::FewTokens).shape->threadsPerGroup, 16); // one 16-byte vector
  EXPECT_EQ(plan->variantFor(Regime::VeryFewTokens).shape->threadsPerGroup, 32); // 8-byte
  EXPECT_EQ(plan->variantFor(Regime::VeryManyTokens).shape->groupsPerBlock, 64); // 8192 elements
  // Variants are in the size order of the regimes they first serve.
  for (int i = 0; i < kRegimeCount; ++i)
    EXPECT_EQ(plan->variantOf[i], i);
  // G = 64: the few-token, many-token and very-many-token shapes agree (8192
  // elements would take a block of 1024 threads); two distinct variants.
  KernelSpec g64 = spec;
  g64.groupSize = 64;
  auto twoOnly = p.plan(g64);
  ASSERT_TRUE(bool(twoOnly));
  EXPECT_EQ(twoOnly->variants.size(), 2u);
  EXPECT_EQ(twoOnly->variantOf[index(Regime::FewTokens)],
            twoOnly->variantOf[index(Regime::ManyTokens)]);
  EXPECT_EQ(twoOnly->variantOf[index(Regime::VeryManyTokens)],
            twoOnly->variantOf[index(Regime::ManyTokens)]);
  // G = 96 does not divide 8192: the very-many-token shape is the many-token one.
  KernelSpec g96 = spec;
  g96.groupSize = 96;
  g96.hidden = 96 * 74;
  auto g96Plan = p.plan(g96);
  ASSERT_TRUE(bool(g96Plan));
  EXPECT_EQ(g96Plan->variants.size(), 3u);

  KernelSpec explicitShape = spec;
  explicitShape.shape = LaunchShape{4, 8, 64};
  auto one = p.plan(explicitShape);
  ASSERT_TRUE(bool(one));
  ASSERT_EQ(one->variants.size(), 1u);
  EXPECT_EQ(*one->variants[0].shape, withDerivedOccupancy(spec, *explicitShape.shape));

  // Tuning records are per regime: each replaces its own regime's shape only.
  const LaunchShape a = withDerivedOccupancy(spec, LaunchShape{4, 8, 64});
  const LaunchShape b = withDerivedOccupancy(spec, LaunchShape{8, 8, 32});
  const LaunchShape c = withDerivedOccupancy(spec, LaunchShape{16, 8, 64});
  ASSERT_FALSE(bool(p.tuning().store(spec, a, Regime::ManyTokens)));
  auto tuned = p.plan(spec);
  ASSERT_TRUE(bool(tuned));
  ASSERT_EQ(tuned->variants.size(), 4u);
  EXPECT_EQ(*tuned->variantFor(Regime::ManyTokens).shape, a);
  for (Regime r : {Regime::VeryFewTokens, Regime::FewTokens, Regime::VeryManyTokens})
    EXPECT_EQ(*tuned->variantFor(r).shape, chooseLaunchShape(spec, r)) << regimeName(r);
  ASSERT_FALSE(bool(p.tuning().store(spec, b, Regime::FewTokens)));
  ASSERT_FALSE(bool(p.tuning().store(spec, c, Regime::VeryManyTokens)));
  auto three = p.plan(spec);
  ASSERT_TRUE(bool(three));
  ASSERT_EQ(three->variants.size(), 4u);
  EXPECT_EQ(*three->variantFor(Regime::FewTokens).shape, b);
  EXPECT_EQ(*three->variantFor(Regime::VeryManyTokens).shape, c);
  // Tuned to the same shape for every regime: one kernel serves every launch.
  for (Regime r : kRegimes)
    ASSERT_FALSE(bool(p.tuning().store(spec, a, r)));
  auto same = p.plan(spec);
  ASSERT_TRUE(bool(same));
  EXPECT_EQ(same->variants.size(), 1u);
  EXPECT_EQ(records().size(), 4u); // one file per regime
}

// The plan Service::getKernel loads from: each regime's shape, each once.
TEST_F(PlannerTest, PlanMapsEveryRegimeToItsShape) {
  Planner p(config(""), "code v1");
  for (int g : {64, 96, 128, 192}) {
    KernelSpec spec;
    spec.hidden = g * 56;
    spec.groupSize = g;
    auto plan = p.plan(spec);
    ASSERT_TRUE(bool(plan));
    for (Regime r : kRegimes) {
      ASSERT_LT(plan->variantOf[index(r)], static_cast<int>(plan->variants.size()));
      auto resolved = p.resolve(spec, r);
      ASSERT_TRUE(bool(resolved));
      EXPECT_EQ(plan->variantFor(r).shape, resolved->shape) << "G=" << g;
      EXPECT_EQ(plan->variantFor(r).shape->minBlocksPerSm,
                deriveMinBlocksPerSm(spec, *plan->variantFor(r).shape));
    }
    for (size_t i = 0; i < plan->variants.size(); ++i)
      for (size_t k = 0; k < i; ++k)
        EXPECT_NE(plan->variants[i].shape, plan->variants[k].shape) << "G=" << g;
  }
}

// What autotuning may improve: the regimes whose shape the heuristic chose,
// not those of a tuning record of the device's model or of the spec itself.
TEST_F(PlannerTest, PlanSaysWhichRegimesTheHeuristicChose) {
  Planner p = planner();
  const KernelSpec spec = smallSpec(1024);
  const DeviceProfile h100 = *DeviceProfile::known("H100 80GB HBM3");
  const DeviceProfile h200 = *DeviceProfile::known("H200");
  auto before = p.plan(spec, h200);
  ASSERT_TRUE(bool(before));
  for (Regime r : kRegimes)
    EXPECT_TRUE(before->fromHeuristic[index(r)]) << regimeName(r);

  ASSERT_FALSE(bool(p.tuning().store(spec, LaunchShape{2, 8, 64}, Regime::FewTokens, h200)));
  auto after = p.plan(spec, h200);
  ASSERT_TRUE(bool(after));
  for (Regime r : kRegimes)
    EXPECT_EQ(after->fromHeuristic[index(r)], r != Regime::FewTokens) << regimeName(r);
  // Another model's plan does not take the H200's record.
  auto other = p.plan(spec, h100);
  ASSERT_TRUE(bool(other));
  EXPECT_TRUE(other->fromHeuristic[index(Regime::FewTokens)]);

  KernelSpec fixed = spec;
  fixed.shape = LaunchShape{4, 8, 32};
  auto given = p.plan(fixed, h200);
  ASSERT_TRUE(bool(given));
  for (Regime r : kRegimes)
    EXPECT_FALSE(given->fromHeuristic[index(r)]) << regimeName(r);
}

// swizzled_128x4's launches: the tasks of the row pairs that hold a live row
// (8 rows a pair, 16 pairs a 128-row band; a partial band of r rows its
// first ceil(r / 2), from 31 rows all 16), then blocks that zero a partial
// band's other pairs, 16 bytes a thread. The planner's wave rules count the
// grid over whole bands, as they were fitted.
TEST_F(PlannerTest, SwizzledGridsCoverTheLiveRowPairsAndZeroTheRest) {
  const std::vector<std::pair<int64_t, int64_t>> pairs = {
      {0, 0},    {1, 1},    {2, 1},    {3, 2},    {16, 8},     {30, 15},   {31, 16},
      {127, 16}, {128, 16}, {129, 17}, {160, 32}, {4097, 513}, {4127, 528}};
  for (const auto& [tokens, expected] : pairs)
    EXPECT_EQ(swizzledLivePairs(tokens), expected) << "T=" << tokens;
  // 14336 / 16 = 896 groups a row, 224 tiles a band; 64 groups and 256
  // threads a block.
  KernelSpec spec;
  spec.hidden = 14336;
  spec.groupSize = 16;
  spec.outDtype = OutDtype::FP4E2M1;
  spec.scaleLayout = ScaleLayout::Swizzled128x4;
  spec.shape = LaunchShape{4, 4, 64};
  // T = 1: one pair's tasks (8 x 896 / 64 = 112 blocks), then 15 pairs of
  // 224 tiles to zero, 2 chunks of 16 bytes each (6720 chunks, 27 blocks).
  EXPECT_EQ(gridBlocks(spec, 1), 112 + 27);
  EXPECT_EQ(waveBlocks(spec, 1), 128 * 896 / 64); // 1792
  EXPECT_EQ(gridBlocks(spec, 31), 128 * 896 / 64); // every pair live: nothing to zero
  EXPECT_EQ(gridBlocks(spec, 256), 256 * 896 / 64);
  EXPECT_EQ(gridBlocks(spec, 129), 1792 + 112 + 27);
  // Padding columns: 2880 / 32 = 90 groups padded to 92 (23 tiles); a last
  // task block part full. T = 5: 3 pairs, ceil(3 x 8 x 92 / 64) = 35 blocks,
  // and 23 x 26 chunks to zero (3 blocks).
  spec.hidden = 2880;
  spec.groupSize = 32;
  spec.ue8m0 = true;
  spec.shape = LaunchShape{4, 8, 64};
  EXPECT_EQ(gridBlocks(spec, 5), 35 + 3);
  for (int64_t t = 1; t <= 1024; ++t) {
    // The planner's binary searches need a count that never shrinks as T
    // grows, and the launch never holds more blocks than the padded grid.
    ASSERT_GE(waveBlocks(spec, t), waveBlocks(spec, t - 1)) << "T=" << t;
    ASSERT_LE(gridBlocks(spec, t), waveBlocks(spec, t)) << "T=" << t;
  }
  // Other layouts: one task a (row, group), counted alike.
  spec.scaleLayout = ScaleLayout::Bytes;
  EXPECT_EQ(gridBlocks(spec, 5), (5 * 90 + 63) / 64);
  EXPECT_EQ(waveBlocks(spec, 5), gridBlocks(spec, 5));
}

// FP4 with swizzled scales on an H200: from the T where the few-token grid
// (T rounded up to 128 rows, six blocks an SM) reaches 1.4 waves, launches
// below the many-token regime take its two-vector teams; nowhere else.
TEST_F(PlannerTest, Fp4SwizzledLaunchesTakeTheManyTokenTeamsFromTheirWaves) {
  Planner p(config(""), "code v1");
  const DeviceProfile h200 = *DeviceProfile::known("H200");
  const DeviceProfile h100 = *DeviceProfile::known("H100 80GB HBM3");
  // The rows measured on the H200 (bench/NOTES.md, fourteenth session): the
  // one-vector teams won at 7168 x 160/256 and 2048 x 1024, the two-vector
  // teams at 7168 x 512, 18432 x 64, 14336 x 256 and 25600 x 16..512.
  const std::vector<std::pair<int, int64_t>> expected = {
      {2048, 1025}, {7168, 257}, {14336, 129}, {18432, 1}, {25600, 1}};
  for (bool mx : {false, true})
    for (const auto& [hidden, from] : expected) {
      const KernelSpec spec = fp4(hidden, mx);
      auto plan = p.plan(spec, h200);
      ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
      EXPECT_EQ(plan->manyTokensFrom, from) << "H=" << hidden << (mx ? " MXFP4" : " NVFP4");
      // The waves it stands for: below the threshold's tile fewer than 1.4,
      // from it at least 1.4.
      const LaunchShape few = *plan->variantFor(Regime::FewTokens).shape;
      auto waves = [&](int64_t tokens) {
        const int64_t rows = (tokens + 127) / 128 * 128;
        return double(rows * spec.numGroups() / few.groupsPerBlock) / (h200.smCount * 6);
      };
      EXPECT_GE(waves(from), 1.4) << hidden;
      if (from > 1)
        EXPECT_LT(waves(from - 1), 1.4) << hidden;
      // The many-token teams read twice a few-token thread's elements.
      const LaunchShape many = *plan->variantFor(Regime::ManyTokens).shape;
      EXPECT_EQ(few.threadsPerGroup, 2 * many.threadsPerGroup) << hidden;
      // The H100 takes FP4's two-vector teams too (seventeenth session), and
      // with its 132 SMs the same threshold and shapes.
      auto onH100 = p.plan(spec, h100);
      ASSERT_TRUE(bool(onH100)) << consumeToString(onH100.takeError());
      EXPECT_EQ(onH100->manyTokensFrom, from) << "H100 H=" << hidden;
      EXPECT_EQ(*onH100->variantFor(Regime::ManyTokens).shape, many) << "H100 H=" << hidden;
      EXPECT_EQ(*onH100->variantFor(Regime::FewTokens).shape, few) << "H100 H=" << hidden;
      // Very many tokens keep the two-vector teams' 256-thread blocks (the
      // shapes measured at 98-99% of a copy on an H100), not the bulk blocks.
      EXPECT_EQ(*onH100->variantFor(Regime::VeryManyTokens).shape, many) << "H100 H=" << hidden;
      EXPECT_EQ(many.threadsPerBlock(), 256) << hidden;
      EXPECT_EQ(many.threadsPerGroup * 2 * many.vecWidth, spec.groupSize) << hidden; // two vectors
      // No rule for Blackwell targets (one-vector teams there), the bytes
      // layout, masked batches, 8-bit outputs or a spec's own shape.
      auto none = [&](const KernelSpec& s, const DeviceProfile& d, const char* what) {
        auto other = p.plan(s, d);
        ASSERT_TRUE(bool(other)) << consumeToString(other.takeError());
        EXPECT_EQ(other->manyTokensFrom, INT64_MAX) << what << " H=" << hidden;
      };
      KernelSpec blackwell = spec;
      blackwell.arch = "sm_100";
      none(blackwell, DeviceProfile::forArch(Arch{100, 0}), "sm_100");
      KernelSpec bytes = spec;
      bytes.scaleLayout = ScaleLayout::Bytes;
      none(bytes, h200, "bytes");
      KernelSpec masked = spec;
      masked.masked = true;
      none(masked, h200, "masked");
      KernelSpec fp8 = spec;
      fp8.outDtype = OutDtype::FP8E4M3;
      fp8.scaleLayout = ScaleLayout::Row;
      fp8.groupSize = 128;
      fp8.ue8m0 = false;
      none(fp8, h200, "fp8");
      KernelSpec fixed = spec;
      fixed.shape = few;
      none(fixed, h200, "explicit shape");
    }
  // A tuning record of a regime below many tokens is not overruled.
  Planner tuned = planner();
  const KernelSpec spec = fp4(7168, false);
  ASSERT_FALSE(bool(tuned.tuning().store(spec, LaunchShape{2, 8, 64}, Regime::FewTokens, h200)));
  auto plan = tuned.plan(spec, h200);
  ASSERT_TRUE(bool(plan));
  EXPECT_EQ(plan->manyTokensFrom, INT64_MAX);
}

// 8-bit float outputs of 16-bit inputs on an H200: few-token launches whose
// grid of the few-token shape reaches 1.2 waves of six blocks an SM take that
// shape promised a full SM (eight blocks); below it, the shape ptxas is left
// to; nowhere else but FP4's swizzled grids (the test after this one).
TEST_F(PlannerTest, EightBitFewTokenLaunchesTakeTheFullSmPromiseFromTheirWaves) {
  Planner p(config(""), "code v1");
  const DeviceProfile h200 = *DeviceProfile::known("H200");
  const DeviceProfile h100 = *DeviceProfile::known("H100 80GB HBM3");
  // Blocks of 2048 elements (G = 128: 16 teams of 16 threads); 1.2 x 132 x 6
  // = 950.4, so the first T of 951 blocks or more. The rows measured on the
  // H200 (bench/NOTES.md, fourteenth session): the promise lost 7% at 3072 x
  // 384 and won 1-7% at 3072 x 768 and 1024 and at 7168 x 384.
  const std::vector<std::pair<int, int64_t>> expected = {
      {2048, 951}, {3072, 634}, {7168, 272}, {14336, 136}};
  for (const auto& [hidden, from] : expected) {
    const KernelSpec spec = smallSpec(hidden);
    auto plan = p.plan(spec, h200);
    ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
    EXPECT_EQ(plan->fullSmFrom, from) << "H=" << hidden;
    ASSERT_GE(plan->fullSmVariant, 0) << "H=" << hidden;
    const LaunchShape few = *plan->variantFor(Regime::FewTokens).shape;
    EXPECT_EQ(few.minBlocksPerSm, 0) << hidden;
    LaunchShape promised = few;
    promised.minBlocksPerSm = 8;
    EXPECT_EQ(*plan->variants[plan->fullSmVariant].shape, promised) << hidden;
    // The waves the threshold stands for, counted as the launch does.
    KernelSpec resolved = spec;
    resolved.shape = few;
    EXPECT_GE(gridBlocks(resolved, from), 951) << hidden;
    EXPECT_LT(gridBlocks(resolved, from - 1), 951) << hidden;
    // Inside the few-token regime, which it splits: below it and from it.
    EXPECT_EQ(regimeFor((from - 1) * hidden), Regime::FewTokens) << hidden;
    EXPECT_EQ(*plan->variantForTokens(from - 1).shape, few) << hidden;
    EXPECT_EQ(*plan->variantForTokens(from).shape, promised) << hidden;
    const int64_t lastFew = regimeMaxElements(Regime::FewTokens) / hidden;
    EXPECT_EQ(*plan->variantForTokens(lastFew).shape, promised) << hidden;
    EXPECT_EQ(*plan->variantForTokens(lastFew + 1).shape,
              *plan->variantFor(Regime::ManyTokens).shape)
        << hidden;
    EXPECT_EQ(*plan->variantForTokens(1).shape, *plan->variantFor(Regime::VeryFewTokens).shape);
    // The promised variant is one more variant, after the few-token one.
    EXPECT_GT(plan->fullSmVariant, plan->variantOf[index(Regime::FewTokens)]) << hidden;
    EXPECT_EQ(plan->manyTokensFrom, INT64_MAX) << hidden;

    auto none = [&](const KernelSpec& s, const DeviceProfile& d, const char* what) {
      auto other = p.plan(s, d);
      ASSERT_TRUE(bool(other)) << consumeToString(other.takeError());
      EXPECT_EQ(other->fullSmFrom, INT64_MAX) << what << " H=" << hidden;
      EXPECT_EQ(other->fullSmVariant, -1) << what << " H=" << hidden;
      for (const KernelSpec& v : other->variants)
        EXPECT_FALSE(v.shape->threadsPerGroup == few.threadsPerGroup &&
                     v.shape->vecWidth == few.vecWidth && v.shape->minBlocksPerSm == 8)
            << what << " H=" << hidden << ": " << v.shape->label();
    };
    // Not on an H100 (not measured there), nor where the promise's 32
    // registers spill (int8, col_tma, masked batches), nor for gelu (32
    // registers unasked), fp32 inputs (other teams) or a spec's own shape.
    none(spec, h100, "H100");
    none(changed(spec, [](KernelSpec& s) { s.outDtype = OutDtype::INT8; }), h200, "int8");
    none(changed(spec, [](KernelSpec& s) { s.scaleLayout = ScaleLayout::ColTma; }), h200,
         "col_tma");
    none(changed(spec, [](KernelSpec& s) { s.masked = true; }), h200, "masked");
    none(changed(spec, [](KernelSpec& s) { s.activation = Activation::Gelu; }), h200, "gelu");
    none(changed(spec, [](KernelSpec& s) { s.inDtype = InDtype::FP32; }), h200, "fp32");
    none(changed(spec, [&](KernelSpec& s) { s.shape = few; }), h200, "explicit shape");
    // The other 8-bit float specs take it: fp16, e5m2, the other layouts,
    // swiglu and gelu_tanh, interleaved gate/up, a scale bound.
    KernelSpec other = spec;
    other.inDtype = InDtype::FP16;
    other.outDtype = OutDtype::FP8E5M2;
    other.scaleLayout = ScaleLayout::Ue8m0Packed;
    other.ue8m0 = true;
    other.hasScaleUb = true;
    other.activation = Activation::GeluTanh;
    other.gateUp = GateUp::Interleaved;
    auto otherPlan = p.plan(other, h200);
    ASSERT_TRUE(bool(otherPlan)) << consumeToString(otherPlan.takeError());
    EXPECT_LT(otherPlan->fullSmFrom, INT64_MAX) << hidden;
  }
  // Where the few-token grid passes 1.2 waves from the regime's first T
  // (MXFP8's swizzled scales cover 128 rows a tile: at H = 25600, 1600 blocks
  // from T = 1), the split is at that T: every few-token launch takes the
  // promise, the few-token variant standing by for a promise that spills.
  KernelSpec mx = smallSpec(25600);
  mx.groupSize = 32;
  mx.ue8m0 = true;
  mx.scaleLayout = ScaleLayout::Swizzled128x4;
  auto whole = p.plan(mx, h200);
  ASSERT_TRUE(bool(whole)) << consumeToString(whole.takeError());
  const int64_t firstFew = regimeMaxElements(Regime::VeryFewTokens) / 25600 + 1;
  EXPECT_EQ(firstFew, 41);
  EXPECT_EQ(whole->fullSmFrom, firstFew);
  ASSERT_GE(whole->fullSmVariant, 0);
  EXPECT_EQ(whole->variantForTokens(firstFew).shape->minBlocksPerSm, 8);
  EXPECT_EQ(whole->variantForTokens(firstFew).shape->threadsPerGroup, 4);
  EXPECT_EQ(whole->variantFor(Regime::FewTokens).shape->minBlocksPerSm, 0);
  // A tuning record of the few-token regime is not overruled.
  Planner tuned = planner();
  const KernelSpec spec = smallSpec(3072);
  ASSERT_FALSE(bool(tuned.tuning().store(spec, LaunchShape{16, 8, 8}, Regime::FewTokens, h200)));
  auto plan = tuned.plan(spec, h200);
  ASSERT_TRUE(bool(plan));
  EXPECT_EQ(plan->fullSmFrom, INT64_MAX);
  EXPECT_EQ(plan->fullSmVariant, -1);
  EXPECT_EQ(*plan->variantForTokens(1000).shape, withDerivedOccupancy(spec, LaunchShape{16, 8, 8}));
  // A record that kept the heuristic's shape (an autotuning that found
  // nothing faster) keeps the split too.
  const LaunchShape heuristicFew = chooseLaunchShape(spec, Regime::FewTokens, h200);
  ASSERT_FALSE(bool(tuned.tuning().store(spec, heuristicFew, Regime::FewTokens, h200)));
  auto kept = tuned.plan(spec, h200);
  ASSERT_TRUE(bool(kept));
  EXPECT_FALSE(kept->fromHeuristic[index(Regime::FewTokens)]); // tuned: not asked again
  EXPECT_EQ(kept->fullSmFrom, 634);
  EXPECT_GE(kept->fullSmVariant, 0);
  // And one that kept the full-SM shape (tuned at a T above the split).
  LaunchShape promisedFew = heuristicFew;
  promisedFew.minBlocksPerSm = 8;
  ASSERT_FALSE(bool(tuned.tuning().store(spec, promisedFew, Regime::FewTokens, h200)));
  auto keptPromise = tuned.plan(spec, h200);
  ASSERT_TRUE(bool(keptPromise));
  EXPECT_EQ(keptPromise->fullSmFrom, 634);
  EXPECT_EQ(*keptPromise->variantForTokens(633).shape, heuristicFew);
  EXPECT_EQ(*keptPromise->variantForTokens(634).shape, promisedFew);
}

// FP4 with swizzled_128x4 scales on an H200: few-token launches from 1.2
// waves of the one-vector grid (six blocks an SM) take that shape promised a
// full SM, up to the T from which the two-vector teams take them (1.4
// waves); with the grid's 128-row tiles that is one tile of T at most H, and
// none where one tile jumps past 1.4 waves (7168).
TEST_F(PlannerTest, Fp4SwizzledFewTokenLaunchesTakeTheFullSmPromiseBelowTheManyTokenTeams) {
  Planner p(config(""), "code v1");
  const DeviceProfile h200 = *DeviceProfile::known("H200");
  const DeviceProfile h100 = *DeviceProfile::known("H100 80GB HBM3");
  // {H, first T of the promise, first T of the many-token teams}. The row
  // measured (bench/NOTES.md, twenty-first session): 2048 x 1024, 1.29 waves.
  struct Expected {
    int hidden;
    int64_t from, manyFrom;
  };
  const Expected expected[] = {
      {2048, 897, 1025}, {2880, 641, 769}, {4096, 385, 513}, {5120, 257, 385}};
  for (bool mx : {false, true})
    for (const Expected& e : expected) {
      const KernelSpec spec = fp4(e.hidden, mx);
      const std::string what = "H=" + std::to_string(e.hidden) + (mx ? " MXFP4" : " NVFP4");
      auto plan = p.plan(spec, h200);
      ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
      EXPECT_EQ(plan->fullSmFrom, e.from) << what;
      EXPECT_EQ(plan->manyTokensFrom, e.manyFrom) << what;
      ASSERT_GE(plan->fullSmVariant, 0) << what;
      const LaunchShape few = *plan->variantFor(Regime::FewTokens).shape;
      EXPECT_EQ(few.minBlocksPerSm, 0) << what;
      EXPECT_EQ(spec.groupSize / few.threadsPerGroup, 8) << what; // one vector a thread
      LaunchShape promised = few;
      promised.minBlocksPerSm = 8;
      EXPECT_EQ(*plan->variants[plan->fullSmVariant].shape, promised) << what;
      // The waves, counted as the planner's rules count blocks (128-row tiles).
      KernelSpec resolved = spec;
      resolved.shape = few;
      const double wave = h200.smCount * 6.0;
      EXPECT_GE(waveBlocks(resolved, e.from) / wave, 1.2) << what;
      EXPECT_LT(waveBlocks(resolved, e.from - 1) / wave, 1.2) << what;
      EXPECT_LT(waveBlocks(resolved, e.manyFrom - 1) / wave, 1.4) << what;
      const LaunchShape many = *plan->variantFor(Regime::ManyTokens).shape;
      EXPECT_EQ(*plan->variantForTokens(e.from - 1).shape, few) << what;
      EXPECT_EQ(*plan->variantForTokens(e.from).shape, promised) << what;
      EXPECT_EQ(*plan->variantForTokens(e.manyFrom - 1).shape, promised) << what;
      EXPECT_EQ(*plan->variantForTokens(e.manyFrom).shape, many) << what;
      // Not on an H100, nor for the bytes layout, masked batches, gelu or a
      // spec's own shape.
      auto none = [&](const KernelSpec& s, const DeviceProfile& d, const char* why) {
        auto other = p.plan(s, d);
        ASSERT_TRUE(bool(other)) << consumeToString(other.takeError());
        EXPECT_EQ(other->fullSmFrom, INT64_MAX) << why << " " << what;
        EXPECT_EQ(other->fullSmVariant, -1) << why << " " << what;
      };
      none(spec, h100, "H100");
      none(changed(spec, [](KernelSpec& s) { s.scaleLayout = ScaleLayout::Bytes; }), h200, "bytes");
      none(changed(spec, [](KernelSpec& s) { s.masked = true; }), h200, "masked");
      none(changed(spec, [](KernelSpec& s) { s.activation = Activation::Gelu; }), h200, "gelu");
      none(changed(spec, [&](KernelSpec& s) { s.shape = few; }), h200, "explicit shape");
    }
  // Where one tile of T takes the grid from under 1.2 waves to 1.4 or more,
  // the promise would serve no launch: no variant is planned for it.
  for (bool mx : {false, true}) {
    auto plan = p.plan(fp4(7168, mx), h200);
    ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
    EXPECT_EQ(plan->manyTokensFrom, 257);
    EXPECT_EQ(plan->fullSmFrom, INT64_MAX);
    EXPECT_EQ(plan->fullSmVariant, -1);
  }
  // A tuning record that kept the promised shape for the few-token regime
  // gives the regime both shapes again and keeps the many-token rule.
  Planner tuned = planner();
  const KernelSpec spec = fp4(2048, true);
  auto base = tuned.plan(spec, h200);
  ASSERT_TRUE(bool(base)) << consumeToString(base.takeError());
  const LaunchShape promised = *base->variants[base->fullSmVariant].shape;
  ASSERT_FALSE(bool(tuned.tuning().store(spec, promised, Regime::FewTokens, h200)));
  auto kept = tuned.plan(spec, h200);
  ASSERT_TRUE(bool(kept)) << consumeToString(kept.takeError());
  EXPECT_EQ(kept->fullSmFrom, 897);
  EXPECT_EQ(kept->manyTokensFrom, 1025);
  EXPECT_EQ(*kept->variantForTokens(896).shape, *base->variantFor(Regime::FewTokens).shape);
  EXPECT_EQ(*kept->variantForTokens(897).shape, promised);
}

} // namespace
} // namespace bqjit
