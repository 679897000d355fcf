// The launch heuristic: its shapes are always valid, its known choices per
// regime, the regimes' ranges, occupancy, and the tuning candidates.
#include "planner/launch_heuristic.hpp"

#include <algorithm>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"

namespace bqjit {
namespace {

KernelSpec baseSpec() {
  KernelSpec s;
  s.hidden = 7168;
  s.groupSize = 128;
  return s;
}

/// "" when the spec is valid, else the error's message.
std::string invalidMessage(const KernelSpec& spec) {
  llvm::Error err = spec.validate();
  return err ? consumeToString(std::move(err)) : "";
}

KernelSpec withShape(KernelSpec s, const LaunchShape& shape) {
  s.shape = shape;
  return s;
}

/// The shape's teams and block, without the occupancy the heuristic derives.
LaunchShape teams(LaunchShape s) {
  s.minBlocksPerSm = LaunchShape::kDerived;
  return s;
}

// ---- the launch heuristic always yields a valid shape ---------------------------

TEST(LaunchHeuristic, ShapeValidForEveryGroupAndDtype) {
  int checked = 0;
  for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32})
    for (int g = KernelSpec::kMinGroup; g <= KernelSpec::kMaxGroup; ++g) {
      KernelSpec s = baseSpec();
      s.inDtype = in;
      s.groupSize = g;
      s.hidden = g * (65536 / g);
      ASSERT_EQ(invalidMessage(s), "");
      for (Regime regime : kRegimes) {
        KernelSpec r = s;
        r.shape = chooseLaunchShape(s, regime);
        ASSERT_EQ(invalidMessage(r), "") << "G=" << g << " " << toString(in);
        EXPECT_EQ(r.shape->minBlocksPerSm, deriveMinBlocksPerSm(s, *r.shape));
      }
      ++checked;
    }
  EXPECT_EQ(checked, 3 * (1024 - 16 + 1));
}

TEST(LaunchHeuristic, KnownChoices) {
  KernelSpec s = baseSpec(); // bf16, G = 128
  EXPECT_EQ(teams(chooseLaunchShape(s)), (LaunchShape{8, 8, 32}));
  s.groupSize = 17;
  s.hidden = 17 * 8;
  EXPECT_EQ(chooseLaunchShape(s).vecWidth, 1);
  s.groupSize = 96;
  s.hidden = 96 * 8;
  s.inDtype = InDtype::FP32;
  EXPECT_EQ(chooseLaunchShape(s).vecWidth, 4);
}

TEST(LaunchHeuristic, ShapesPerRegime) {
  KernelSpec s = baseSpec(); // bf16, G = 128: 16 vectors of 16 bytes
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::ManyTokens)), (LaunchShape{8, 8, 32}));
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::FewTokens)), (LaunchShape{16, 8, 16}));
  s.groupSize = 64; // 8 vectors: a team of 8 either way
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::ManyTokens)), (LaunchShape{8, 8, 32}));
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::FewTokens)), (LaunchShape{8, 8, 32}));
  s.groupSize = 96; // 12 vectors: 4 x 3 in throughput, 12 in a slot of 16 in latency
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::ManyTokens)), (LaunchShape{4, 8, 64}));
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::FewTokens)), (LaunchShape{12, 8, 16}));
  s.groupSize = 192; // 24 vectors: 8 x 3, or 24 in a slot of 32
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::ManyTokens)), (LaunchShape{8, 8, 32}));
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::FewTokens)), (LaunchShape{24, 8, 8}));
  s.groupSize = 32; // 4 vectors: one each
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::ManyTokens)), (LaunchShape{4, 8, 64}));
}

TEST(LaunchHeuristic, BulkShapesAreThroughputTeamsInBlocksOf8192Elements) {
  KernelSpec s = baseSpec(); // bf16, G = 128: 64 teams of 8 (512 threads)
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::VeryManyTokens)), (LaunchShape{8, 8, 64}));
  s.groupSize = 256; // 32 teams of 16
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::VeryManyTokens)), (LaunchShape{16, 8, 32}));
  s.groupSize = 1024; // 8 teams of 32: the throughput shape already
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::VeryManyTokens)), (LaunchShape{32, 8, 8}));
  // G does not divide 8192: the throughput shape.
  for (int g : {96, 192}) {
    s.groupSize = g;
    EXPECT_EQ(chooseLaunchShape(s, Regime::VeryManyTokens),
              chooseLaunchShape(s, Regime::ManyTokens))
        << "G=" << g;
  }
  // 8192 elements would need more than 512 threads (a thread of a 1024-thread
  // block has 64 registers, where ptxas spilled): the throughput shape.
  for (int g : {4, 8, 16, 32, 64}) {
    s.groupSize = g;
    s.hidden = g * 64;
    EXPECT_EQ(chooseLaunchShape(s, Regime::VeryManyTokens),
              chooseLaunchShape(s, Regime::ManyTokens))
        << "G=" << g;
  }
  s.groupSize = 128; // 8-byte vectors: 64 teams of 16 would be 1024 threads
  s.hidden = 128 * 64;
  EXPECT_EQ(chooseLaunchShape(s, Regime::VeryManyTokens, 4),
            chooseLaunchShape(s, Regime::ManyTokens, 4));
  s.inDtype = InDtype::FP32; // teams of 16 of 16-byte vectors: 1024 threads
  EXPECT_EQ(chooseLaunchShape(s, Regime::VeryManyTokens), chooseLaunchShape(s, Regime::ManyTokens));
}

TEST(LaunchHeuristic, TinyShapesTakeVectorsOfEightBytesWhereTheTeamFits) {
  KernelSpec s = baseSpec(); // bf16, G = 128: 32 threads of 8 bytes
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::VeryFewTokens)), (LaunchShape{32, 4, 8}));
  s.groupSize = 64; // 16 threads of 8 bytes, no narrower
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::VeryFewTokens)), (LaunchShape{16, 4, 16}));
  s.groupSize = 96; // 24 threads of 8 bytes in slots of 32
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::VeryFewTokens)), (LaunchShape{24, 4, 8}));
  s.groupSize = 192; // 8-byte vectors would need 48 threads: 24 x 16 bytes
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::VeryFewTokens)), (LaunchShape{24, 8, 8}));
  s.groupSize = 128;
  s.inDtype = InDtype::FP32; // 32 threads of 16 bytes (4 floats) already
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::VeryFewTokens)), (LaunchShape{32, 4, 8}));
}

TEST(LaunchHeuristic, RegimeByElements) {
  EXPECT_EQ(regimeFor(1), Regime::VeryFewTokens);
  EXPECT_EQ(regimeFor(int64_t(1) << 20), Regime::VeryFewTokens);
  EXPECT_EQ(regimeFor((int64_t(1) << 20) + 1), Regime::FewTokens);
  EXPECT_EQ(regimeFor(int64_t(1) << 22), Regime::FewTokens);
  EXPECT_EQ(regimeFor((int64_t(1) << 22) + 1), Regime::ManyTokens);
  EXPECT_EQ(regimeFor(int64_t(1) << 25), Regime::ManyTokens);
  EXPECT_EQ(regimeFor((int64_t(1) << 25) + 1), Regime::VeryManyTokens);
  EXPECT_EQ(regimeFor(int64_t(8192) * 25600), Regime::VeryManyTokens);
  EXPECT_STREQ(regimeName(Regime::VeryFewTokens), "very-few-token");
  EXPECT_STREQ(regimeName(Regime::VeryManyTokens), "very-many-token");
  // The regimes' ranges tile the elements without gaps.
  for (Regime regime : kRegimes) {
    EXPECT_EQ(regimeFor(regimeMinElements(regime)), regime) << regimeName(regime);
    if (regimeMaxElements(regime) != INT64_MAX) {
      EXPECT_EQ(regimeFor(regimeMaxElements(regime)), regime) << regimeName(regime);
      EXPECT_NE(regimeFor(regimeMaxElements(regime) + 1), regime) << regimeName(regime);
    }
  }
}

TEST(LaunchHeuristic, OccupancyIsDerivedOnlyWhereNotGiven) {
  KernelSpec s = baseSpec();
  EXPECT_EQ(withDerivedOccupancy(s, LaunchShape{4, 2, 16}).minBlocksPerSm,
            deriveMinBlocksPerSm(s, LaunchShape{4, 2, 16}));
  EXPECT_EQ(withDerivedOccupancy(s, LaunchShape{4, 2, 16, 3}).minBlocksPerSm, 3);
  EXPECT_EQ(withDerivedOccupancy(s, LaunchShape{4, 2, 16, 0}).minBlocksPerSm, 0);
}

TEST(LaunchHeuristic, OccupancyPromisedWhereAThreadNeedsMoreThan64Registers) {
  // A thread of E elements: about E + E * bytes / 2 + 24 registers.
  KernelSpec s = baseSpec();                                    // bf16, G = 128
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{8, 8, 32}), 0); // 16 elements: 56 registers
  // 32 elements, 88 registers: 65536 / (256 x 88) = 2 blocks of 256 threads.
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{4, 8, 64}), 2);
  // Never past what a multiprocessor holds.
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{4, 8, 1}), LaunchShape::kMaxMinBlocksPerSm);
  s.groupSize = 1024;
  s.hidden = 8192;
  // 32 elements, 88 registers: 65536 / (256 x 88) = 2 blocks of 256 threads.
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{32, 8, 8}), 2);
  // 64 elements, 152 registers in blocks of 128: 3.
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{16, 8, 8}), 3);
  // Never under 1 once promised.
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{1, 8, 1024}), 1);
}

TEST(LaunchHeuristic, VeryFewTokenThreadsArePromisedAFullMultiprocessor) {
  KernelSpec s = baseSpec(); // bf16, G = 128
  // Four values a thread (one 8-byte vector of each input): 32 registers,
  // 2048 threads an SM.
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{32, 4, 8}), 8);
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{32, 4, 4}), 16);
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{32, 4, 1}), LaunchShape::kMaxMinBlocksPerSm);
  s.groupSize = 64;
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{16, 4, 16}), 8);
  // The very-few-token shapes of G = 64 and 128 are such threads.
  for (int g : {64, 128}) {
    s.groupSize = g;
    const LaunchShape v = chooseLaunchShape(s, Regime::VeryFewTokens);
    EXPECT_EQ(v.minBlocksPerSm, 2048 / v.threadsPerBlock()) << g;
  }
  s.groupSize = 128;
  // Eight values (a 16-byte vector of each input): no promise.
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{16, 8, 16}), 0);
  // fp32: four values are eight raw words, 36 registers: none.
  s.inDtype = InDtype::FP32;
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{32, 4, 8}), 0);
  // gelu's erfc needs more registers: none.
  s.inDtype = InDtype::BF16;
  s.activation = Activation::Gelu;
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{32, 4, 8}), 0);
}

TEST(LaunchHeuristic, Fp4ThreadsOfSixteenTwoByteValuesArePromised48Warps) {
  KernelSpec s = baseSpec();
  s.outDtype = OutDtype::FP4E2M1;
  s.hidden = 7168;
  s.groupSize = 16; // NVFP4
  s.scaleLayout = ScaleLayout::Swizzled128x4;
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{1, 8, 256}), 6); // 16 values, 256 threads
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{1, 8, 128}), 12);
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{2, 8, 128}), 0); // 8 values a thread
  s.groupSize = 32;                                              // MXFP4
  s.ue8m0 = true;
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{2, 8, 128}), 6);
  s.inDtype = InDtype::FP16;
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{2, 8, 128}), 6);
  // Sixteen fp32 values are 32 raw words: not this promise (40 registers
  // would spill) but the general one, 72 registers: 65536 / (256 x 72) = 3.
  s.inDtype = InDtype::FP32;
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{2, 4, 128}), 3);
  // The same shape with an 8-bit output: no promise.
  s.inDtype = InDtype::BF16;
  s.outDtype = OutDtype::FP8E4M3;
  EXPECT_EQ(deriveMinBlocksPerSm(s, LaunchShape{2, 8, 128}), 0);
}

TEST(LaunchHeuristic, CandidatesAreValidDistinctAndStartWithHeuristic) {
  for (int g : {16, 48, 128, 320, 1024}) {
    KernelSpec s = baseSpec();
    s.groupSize = g;
    s.hidden = g * 4;
    for (Regime regime : kRegimes) {
      auto shapes = candidateShapes(s, regime);
      ASSERT_FALSE(shapes.empty());
      EXPECT_EQ(shapes.front(), chooseLaunchShape(s, regime)) << regimeName(regime);
      for (size_t i = 0; i < shapes.size(); ++i) {
        EXPECT_EQ(invalidMessage(withShape(s, shapes[i])), "");
        EXPECT_EQ(shapes[i].minBlocksPerSm, deriveMinBlocksPerSm(s, shapes[i]));
        for (size_t k = 0; k < i; ++k)
          EXPECT_NE(shapes[i], shapes[k]);
      }
    }
  }
  // The throughput shape is among the bulk regime's candidates, and the
  // other way round (G = 128: 8 x 8 in blocks of 256 and 512 threads).
  KernelSpec s = baseSpec();
  auto bulk = candidateShapes(s, Regime::VeryManyTokens);
  auto many = candidateShapes(s, Regime::ManyTokens);
  EXPECT_NE(std::find(bulk.begin(), bulk.end(), chooseLaunchShape(s)), bulk.end());
  EXPECT_NE(std::find(many.begin(), many.end(), chooseLaunchShape(s, Regime::VeryManyTokens)),
            many.end());
}

// ---- launch shapes from the device's properties ---------------------------------

DeviceProfile model(const char* name) {
  auto p = DeviceProfile::known(name);
  EXPECT_TRUE(p.has_value()) << name;
  return p ? *p : DeviceProfile::reference();
}

TEST(DeviceProfile, NamesTableAndBandwidth) {
  EXPECT_EQ(DeviceProfile::modelName("NVIDIA H200"), "H200");
  EXPECT_EQ(DeviceProfile::modelName(" NVIDIA H100 80GB HBM3 "), "H100 80GB HBM3");
  EXPECT_EQ(DeviceProfile::modelName("Tesla T4"), "Tesla T4");
  EXPECT_EQ(model("NVIDIA H200").model, "H200");
  EXPECT_FALSE(DeviceProfile::known("H300").has_value());
  EXPECT_EQ(model("H100 80GB HBM3").slug(), "H100_80GB_HBM3");
  const DeviceProfile def = DeviceProfile::forArch(Arch{100, 'a'});
  EXPECT_EQ(def.slug(), "arch-sm_100a");
  EXPECT_TRUE(def.model.empty());
  // 2 x 2619 MHz x 640 bytes = 3.35 TB/s on 132 SMs: the reference itself.
  EXPECT_NEAR(model("H100 80GB HBM3").peakBandwidth() / 1e12, 3.352, 0.001);
  EXPECT_DOUBLE_EQ(model("H100 80GB HBM3").inFlightScale(), 1.0);
  EXPECT_NEAR(model("H200").inFlightScale(), 1.436, 0.001); // 4.81 TB/s on 132 SMs
  EXPECT_LT(model("A100-SXM4-80GB").inFlightScale(), 1.0);
  std::set<std::string> names;
  for (const DeviceProfile& p : DeviceProfile::knownModels()) {
    EXPECT_TRUE(names.insert(p.model).second) << p.model;
    EXPECT_GT(p.smCount, 0);
    EXPECT_GT(p.peakBandwidth(), 0);
  }
  // Properties the driver could not give (zero) plan as the reference.
  DeviceProfile blank;
  EXPECT_DOUBLE_EQ(blank.inFlightScale(), 1.0);
}

// The H100 keeps the shapes it was measured with, every G and regime; an
// architecture's default device is that class too.
TEST(LaunchHeuristic, ReferenceClassDevicesKeepTheH100Shapes) {
  for (const char* name :
       {"H100 80GB HBM3", "H100 PCIe", "A100-SXM4-80GB", "A100-SXM4-40GB", "L40S"}) {
    const DeviceProfile device = model(name);
    ASSERT_EQ(inFlightMultiple(device), 1) << name;
    for (int g : {16, 32, 48, 64, 96, 128, 192, 256, 1024})
      for (Regime r : kRegimes) {
        KernelSpec s = baseSpec();
        s.groupSize = g;
        s.hidden = g * 16;
        EXPECT_EQ(chooseLaunchShape(s, r, device), chooseLaunchShape(s, r))
            << name << " G=" << g << " " << regimeName(r);
      }
  }
  EXPECT_EQ(inFlightMultiple(DeviceProfile::forArch(Arch{90, 0})), 1);
}

// An H200 needs about 1.44x the bytes in flight per SM: the many-token teams
// halve their smallest size (G = 64 reads two vectors a thread), blocks hold
// 128 threads, and very many tokens take the same shape (the H100's blocks of
// 8192 elements are slower there); groups of 16 and 32 read two vectors a
// thread in 256-thread blocks. bench/NOTES.md, issues 16 and 18.
TEST(LaunchHeuristic, HighBandwidthDevicesKeepMoreBytesInFlight) {
  const DeviceProfile h200 = model("H200");
  ASSERT_EQ(inFlightMultiple(h200), 2);
  struct Want {
    int g, tpg, vec, gpb;
  };
  for (const Want& w : {Want{64, 4, 8, 32}, Want{96, 4, 8, 32}, Want{128, 8, 8, 16},
                        Want{192, 8, 8, 16}, Want{32, 2, 8, 128}, Want{16, 1, 8, 256}}) {
    KernelSpec s = baseSpec();
    s.groupSize = w.g;
    s.hidden = w.g * 112;
    for (Regime r : {Regime::ManyTokens, Regime::VeryManyTokens}) {
      const LaunchShape shape = chooseLaunchShape(s, r, h200);
      EXPECT_EQ(teams(shape), (LaunchShape{w.tpg, w.vec, w.gpb}))
          << "G=" << w.g << " " << regimeName(r);
      EXPECT_EQ(invalidMessage(withShape(s, shape)), "");
    }
    // The decode regimes are latency-bound: the same shapes as on an H100.
    for (Regime r : {Regime::VeryFewTokens, Regime::FewTokens})
      EXPECT_EQ(chooseLaunchShape(s, r, h200), chooseLaunchShape(s, r)) << "G=" << w.g;
  }
  // A GPU the table does not know, planned from what its driver says: twice
  // the H100's bandwidth per SM is the high-bandwidth class.
  DeviceProfile unknown = model("H100 80GB HBM3");
  unknown.model = "Some Future GPU";
  unknown.memoryClockKHz *= 2;
  EXPECT_EQ(inFlightMultiple(unknown), 2);
  // Valid shapes for every G on the high-bandwidth class too.
  for (int g = KernelSpec::kMinGroup; g <= KernelSpec::kMaxGroup; ++g) {
    KernelSpec s = baseSpec();
    s.groupSize = g;
    s.hidden = g * (65536 / g);
    for (Regime r : kRegimes)
      ASSERT_EQ(invalidMessage(withShape(s, chooseLaunchShape(s, r, h200))), "") << "G=" << g;
  }
}

// Where G has few factors of two, a power-of-two team would leave a thread
// many vectors (G = 112: 7 of them, 245 registers): teams of any size keep a
// thread at four vectors or fewer wherever a team of up to 32 allows it.
TEST(LaunchHeuristic, ThroughputThreadsReadAtMostFourVectorsWhereATeamAllows) {
  for (const char* name : {"H100 80GB HBM3", "H200"}) {
    const DeviceProfile device = model(name);
    int checked = 0;
    for (int g = KernelSpec::kMinGroup; g <= KernelSpec::kMaxGroup; ++g) {
      KernelSpec s = baseSpec();
      s.groupSize = g;
      s.hidden = g * (65536 / g);
      const LaunchShape shape = chooseLaunchShape(s, Regime::ManyTokens, device);
      const int vectors = g / shape.vecWidth;
      bool possible = false;
      for (int t = 1; t <= 32; ++t)
        possible = possible || (vectors % t == 0 && vectors / t <= 4);
      if (possible) {
        EXPECT_LE(vectors / shape.threadsPerGroup, 4) << name << " G=" << g;
        ++checked;
      }
    }
    EXPECT_GT(checked, 100) << name;
  }
  KernelSpec s = baseSpec();
  s.groupSize = 112; // 14 vectors: 7 threads of 2 in slots of 8
  s.hidden = 7168;
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::ManyTokens)), (LaunchShape{7, 8, 32}));
  s.groupSize = 80; // 10 vectors: 5 of 2 or 10 of 1 leave the same share idle; 5 of 2
  s.hidden = 80 * 64;
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::ManyTokens)).threadsPerGroup, 5);
  s.groupSize = 144; // 18 vectors: 6 of 3 leave 2 of 8 idle, 9 of 2 leave 7 of 16
  s.hidden = 144 * 64;
  EXPECT_EQ(teams(chooseLaunchShape(s, Regime::ManyTokens)).threadsPerGroup, 6);
}

} // namespace
} // namespace bqjit
