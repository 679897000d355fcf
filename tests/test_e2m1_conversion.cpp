// The kernel's software e2m1 conversion of FP4 groups (templates/conversions.cuh
// e2m1CodeBitsOfProduct) rounds the exact product y * r once, inside the FMAs
// of its three candidate codes, and takes their minimum on the results' bits.
// These tests check, on the CPU with the template's formula FMA by FMA, what
// its comment claims: the code is the exact product's, rounded to nearest
// even and clamped to 6; it differs from the reference's code of the fp32
// product y * r only within 2^-24 relative of a code boundary; zeros, a
// zero y under MXFP4's r = 2^127, infinities, NaN and huge products give the
// codes the contract and the kernel's callers rely on.
#include <gtest/gtest.h>

#include "reference/reference.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace {

using bqjit::test::bitsOf;
using bqjit::test::fromBits;

// The template's e2m1Factors and e2m1CodeBitsOfProduct: the code of |y| * r
// (bit 3 clear), here as the low four bits of the winning candidate.
struct Factors {
  float twice, once, half;
};
Factors factorsOf(float r) {
  return {std::fmin(2.0f * r, std::numeric_limits<float>::max()), r, 0.5f * r};
}
uint32_t codeOfProduct(float y, const Factors& f) {
  constexpr float kMagic = 12582912.0f; // 1.5 * 2^23
  const float a = std::fabs(y);
  const uint32_t c =
      std::min({bitsOf(std::fma(a, f.twice, kMagic)), bitsOf(std::fma(a, f.once, kMagic + 2.0f)),
                bitsOf(std::fma(a, f.half, kMagic + 4.0f))});
  return std::min(c, bitsOf(kMagic + 7.0f)) & 0xfu;
}

// The independent answer: |y| * r exactly (a float product fits a double),
// clamped to 6, to the nearest of e2m1's magnitudes, ties to the even code.
uint32_t exactCode(float y, float r) {
  static const double kValues[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  const double p = std::min(std::fabs(static_cast<double>(y)) * static_cast<double>(r), 6.0);
  uint32_t best = 0;
  for (uint32_t c = 1; c < 8; ++c) {
    const double d = std::fabs(kValues[c] - p), bestD = std::fabs(kValues[best] - p);
    if (d < bestD || (d == bestD && c % 2 == 0))
      best = c;
  }
  return best;
}

// Whether the fp32 product lies within 2^-24 relative of a code boundary
// (a midpoint between neighbouring magnitudes), where the contract allows a step.
bool nearBoundary(float product) {
  static const double kMidpoints[7] = {0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0};
  const double p = std::fabs(static_cast<double>(product));
  for (double m : kMidpoints)
    if (std::fabs(p - m) <= m * 0x1p-24)
      return true;
  return false;
}

// Every significand of y (stride > 1: every stride-th) whose product with r
// lies in [2^-4, 16): the binades where every code and every boundary lives,
// and one on either side.
template <class Check> void forProductsOf(float r, uint32_t stride, Check check) {
  const int lo = static_cast<int>(std::floor(std::log2(0.0625 / r)));
  const int hi = static_cast<int>(std::ceil(std::log2(16.0 / r))) - 1;
  for (int e = lo; e <= hi; ++e)
    for (uint32_t frac = 0; frac < (1u << 23); frac += stride) {
      const float y = std::ldexp(fromBits(0x3f800000u | frac), e);
      if (y == 0.0f || !std::isfinite(y))
        continue;
      check(y);
    }
}

// MXFP4's reciprocals are powers of two, NVFP4's anything (1 / (sf / gs)).
struct TestFactor {
  float r;
  bool powerOfTwo;
};
const TestFactor kFactors[] = {
    {1.0f, true},      {0x1p-3f, true},         {0x1p+5f, true},      {0x1p-100f, true},
    {0x1p+100f, true}, {0.7320508f, false},     {1.0f / 3.0f, false}, {9.870432e+02f, false},
    {3.0e-20f, false}, {0x1.fffffep+20f, false}};

// How many values a check failed, and the first of them.
struct Misses {
  long count = 0;
  float first = 0.0f;
  void add(float y) {
    if (count++ == 0)
      first = y;
  }
};

TEST(E2m1Conversion, RoundsTheExactProductOnceToNearestEven) {
  for (const TestFactor& c : kFactors) {
    const Factors f = factorsOf(c.r);
    long checked = 0;
    Misses wrong;
    // Every significand where r = 1 (the other powers of two scale it
    // exactly), every 31st elsewhere; both signs.
    forProductsOf(c.r, c.r == 1.0f ? 1 : 31, [&](float y) {
      ++checked;
      for (float v : {y, -y})
        if (codeOfProduct(v, f) != exactCode(v, c.r))
          wrong.add(v);
    });
    EXPECT_GT(checked, c.r == 1.0f ? 50'000'000L : 1'000'000L) << "r = " << c.r;
    EXPECT_EQ(wrong.count, 0) << "r = " << c.r << ", first at y = " << wrong.first;
  }
}

TEST(E2m1Conversion, DiffersFromTheReferenceOnlyAtBoundaries) {
  for (const TestFactor& c : kFactors) {
    const Factors f = factorsOf(c.r);
    long differ = 0;
    Misses outside;
    forProductsOf(c.r, 31, [&](float y) {
      const float product = y * c.r;
      if (codeOfProduct(y, f) == (bqjit::ref::floatToE2M1(product) & 0x7u))
        return;
      ++differ;
      if (!nearBoundary(product))
        outside.add(y);
    });
    EXPECT_EQ(outside.count, 0) << "r = " << c.r << ", first at y = " << outside.first;
    // A power-of-two r makes y * r exact: then the two never differ.
    if (c.powerOfTwo)
      EXPECT_EQ(differ, 0) << "r = " << c.r;
  }
}

TEST(E2m1Conversion, ZerosSaturationAndTheEdgesOfR) {
  // MXFP4's largest reciprocal: 2r would be infinite and 0 * inf NaN; the
  // factor stops at FLT_MAX, so a zero group gives code 0.
  const Factors big = factorsOf(0x1p+127f);
  EXPECT_EQ(codeOfProduct(0.0f, big), 0u);
  EXPECT_EQ(codeOfProduct(-0.0f, big), 0u);
  EXPECT_EQ(codeOfProduct(0x1p-128f, big), 1u);   // 0.5
  EXPECT_EQ(codeOfProduct(0x1p-125f, big), 6u);   // 4
  EXPECT_EQ(codeOfProduct(0x1.8p-125f, big), 7u); // 6
  EXPECT_EQ(codeOfProduct(0x1.4p-127f, big), 2u); // 1.25: the tie goes to 1's even code
  // NVFP4's r = 0 (a zero block scale): every finite y gives code 0.
  const Factors zero = factorsOf(0.0f);
  EXPECT_EQ(codeOfProduct(3.0e38f, zero), 0u);
  // Saturation: huge and infinite products are 6 (code 7); NaN too.
  const Factors one = factorsOf(1.0f);
  EXPECT_EQ(codeOfProduct(7.0f, one), 7u);
  EXPECT_EQ(codeOfProduct(std::numeric_limits<float>::max(), one), 7u);
  EXPECT_EQ(codeOfProduct(std::numeric_limits<float>::infinity(), one), 7u);
  EXPECT_EQ(codeOfProduct(-std::numeric_limits<float>::infinity(), one), 7u);
  EXPECT_EQ(codeOfProduct(std::numeric_limits<float>::quiet_NaN(), one), 7u);
  // A subnormal r: r / 2 rounds, yet no code comes out below the exact one.
  const float tinyR = fromBits(0x00000003u);
  const Factors tiny = factorsOf(tinyR);
  for (float y : {0x1p+126f, 0x1.8p+127f, std::numeric_limits<float>::max()})
    EXPECT_EQ(codeOfProduct(y, tiny), exactCode(y, tinyR)) << y;
}

} // namespace
