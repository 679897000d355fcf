// gelu's tail in the kernel (templates/activations.cuh, normalTail), written
// again step by step from the template's own constants
// (bench/erfc_bound/gelu_tail_model.hpp), against the reference's Phi(g) =
// 0.5f * float(erfc(-g / sqrt 2)) in double: every bf16 and fp16 gate, and
// a sample of fp32 gates, with rcp.approx and ex2.approx 1 and 2 ulp off
// either way. bench_erfc_bound runs every fp32 gate (6 minutes).
#include <gtest/gtest.h>

#include "gelu_tail_model.hpp"

#include <cmath>
#include <limits>

namespace {

using namespace bqjit::gelu_tail;

// The bound docs/contract.md section 6 states, with room for the sample.
constexpr double kBound = 6.5e-7;

const Constants& templateConstants() {
  static const Constants c = readConstants(BQJIT_TEMPLATE_DIR);
  return c;
}

TEST(GeluTail, EverySixteenBitGateIsWithinTheBound) {
  for (const Gates gates : {Gates::Bf16, Gates::Fp16})
    for (const auto& k : kUlpCases) {
      const Worst w = measure(templateConstants(), gates, k[0], k[1]);
      const char* name = gates == Gates::Bf16 ? "bf16" : "fp16";
      EXPECT_LT(w.negative, kBound)
          << name << " rcp " << k[0] << " ex2 " << k[1] << " at " << w.atNegative;
      EXPECT_LT(w.positive, kBound)
          << name << " rcp " << k[0] << " ex2 " << k[1] << " at " << w.atPositive;
      // Below 2^-126 the last product rounds once into the subnormals.
      EXPECT_LE(w.subnormalUlps, 2) << name;
      EXPECT_GT(w.subnormal, 0) << name << ": the subnormal band was reached";
    }
}

TEST(GeluTail, SampledFp32GatesAreWithinTheBound) {
  for (const auto& k : kUlpCases) {
    // Every 101st fp32 value: about 2.8 million gates of each sign.
    const Worst w = measure(templateConstants(), Gates::Fp32, k[0], k[1], 101);
    EXPECT_LT(w.negative, kBound) << "rcp " << k[0] << " ex2 " << k[1] << " at " << w.atNegative;
    EXPECT_LT(w.positive, kBound) << "rcp " << k[0] << " ex2 " << k[1] << " at " << w.atPositive;
    EXPECT_LE(w.subnormalUlps, 5);
  }
}

// The measurement can fail: one coefficient moved by 1e-6 of itself (2e-6
// in log2 near g = 0) takes Phi past the bound.
TEST(GeluTail, ACoefficientOffByAMillionthBreaksTheBound) {
  Constants c = templateConstants();
  c.p[1] *= 1.0f + 1e-6f;
  const Worst w = measure(c, Gates::Bf16, 0, 0);
  EXPECT_GT(std::max(w.negative, w.positive), kBound);
}

// Beyond the clamp, and for infinities, the tail is 0 as the reference's.
TEST(GeluTail, TheTailIsZeroPastTheClampAndAtInfinity) {
  const Constants& c = templateConstants();
  for (const float g : {-c.xMax, -15.0f, -1e30f, -std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(tailModel(c, g, false, 0, 0), 0.0f) << g;
    EXPECT_EQ(tailModel(c, g, true, 0, 0), 0.0f) << g;
    EXPECT_EQ(static_cast<float>(std::erfc(-static_cast<double>(g) * M_SQRT1_2)), 0.0f) << g;
  }
  EXPECT_EQ(tailModel(c, 0.0f, false, 0, 0), 0.5f);
}

} // namespace
