// Unit tests of the CPU reference (reference/reference.hpp) on hand-picked values.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <stdexcept>

#include <gtest/gtest.h>

#include "test_util.hpp"

#include "reference/reference.hpp"

namespace bqjit::ref {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- number formats -------------------------------------------------------------

TEST(Formats, EveryFiniteE4M3CodeRoundTrips) {
  int checked = 0;
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F)
      continue;
    const float v = e4m3ToFloat(static_cast<uint8_t>(c));
    ASSERT_FALSE(std::isnan(v)) << c;
    EXPECT_EQ(floatToE4M3(v), c) << "code " << c << " value " << v;
    ++checked;
  }
  EXPECT_EQ(checked, 254);
}

TEST(Formats, EveryFiniteE5M2CodeRoundTrips) {
  int checked = 0;
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) >= 0x7C)
      continue;
    EXPECT_EQ(floatToE5M2(e5m2ToFloat(static_cast<uint8_t>(c))), c) << "code " << c;
    ++checked;
  }
  EXPECT_EQ(checked, 248);
}

TEST(Formats, E4M3DecodesKnownCodes) {
  EXPECT_EQ(e4m3ToFloat(0x38), 1.0f);
  EXPECT_EQ(e4m3ToFloat(0x39), 1.125f);
  EXPECT_EQ(e4m3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(e4m3ToFloat(0xFE), -448.0f);
  EXPECT_EQ(e4m3ToFloat(0x08), std::ldexp(1.0f, -6)); // smallest normal
  EXPECT_EQ(e4m3ToFloat(0x01), std::ldexp(1.0f, -9)); // smallest subnormal
  EXPECT_EQ(e4m3ToFloat(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::signbit(e4m3ToFloat(0x80)));
  EXPECT_TRUE(std::isnan(e4m3ToFloat(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3ToFloat(0xFF)));
}

TEST(Formats, E5M2DecodesKnownCodes) {
  EXPECT_EQ(e5m2ToFloat(0x3C), 1.0f);
  EXPECT_EQ(e5m2ToFloat(0x7B), 57344.0f);
  EXPECT_EQ(e5m2ToFloat(0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(e5m2ToFloat(0x7C), kInf);
  EXPECT_EQ(e5m2ToFloat(0xFC), -kInf);
  EXPECT_TRUE(std::isnan(e5m2ToFloat(0x7D)));
  EXPECT_TRUE(std::isnan(e5m2ToFloat(0xFF)));
}

TEST(Formats, E4M3TiesRoundToEven) {
  EXPECT_EQ(floatToE4M3(1.0625f), 0x38);                       // between 1.0 and 1.125 -> 1.0
  EXPECT_EQ(floatToE4M3(1.1875f), 0x3A);                       // between 1.125 and 1.25 -> 1.25
  EXPECT_EQ(floatToE4M3(std::nextafter(1.0625f, 2.0f)), 0x39); // just above the tie
  EXPECT_EQ(floatToE4M3(std::nextafter(1.1875f, 0.0f)), 0x39); // just below the tie
  EXPECT_EQ(floatToE4M3(-1.0625f), 0xB8);
  EXPECT_EQ(floatToE4M3(432.0f), 0x7E); // between 416 and 448 -> 448 (even mantissa)
  EXPECT_EQ(floatToE4M3(3 * std::ldexp(1.0f, -10)), 0x02); // 1.5 smallest subnormals -> 2
}

TEST(Formats, E5M2TiesRoundToEven) {
  EXPECT_EQ(floatToE5M2(1.125f), 0x3C); // between 1.0 and 1.25 -> 1.0
  EXPECT_EQ(floatToE5M2(1.375f), 0x3E); // between 1.25 and 1.5 -> 1.5
  EXPECT_EQ(floatToE5M2(std::ldexp(1.0f, -17)), 0x00);
}

TEST(Formats, Fp8Saturates) {
  EXPECT_EQ(floatToE4M3(500.0f), 0x7E);
  EXPECT_EQ(floatToE4M3(464.0f), 0x7E);
  EXPECT_EQ(floatToE4M3(-1e9f), 0xFE);
  EXPECT_EQ(floatToE4M3(kInf), 0x7E);
  EXPECT_EQ(floatToE4M3(-kInf), 0xFE);
  EXPECT_EQ(floatToE5M2(60000.0f), 0x7B);
  EXPECT_EQ(floatToE5M2(1e30f), 0x7B);
  EXPECT_EQ(floatToE5M2(kInf), 0x7B);
  EXPECT_EQ(floatToE5M2(-kInf), 0xFB);
}

TEST(Formats, E4M3Subnormals) {
  const float smallest = std::ldexp(1.0f, -9);
  EXPECT_EQ(floatToE4M3(smallest), 0x01);
  EXPECT_EQ(floatToE4M3(smallest / 2), 0x00); // tie with zero -> even (zero)
  EXPECT_EQ(floatToE4M3(std::nextafter(smallest / 2, 1.0f)), 0x01);
  EXPECT_EQ(floatToE4M3(0.75f * smallest), 0x01);
  EXPECT_EQ(floatToE4M3(0.25f * smallest), 0x00);
  EXPECT_EQ(floatToE4M3(std::numeric_limits<float>::denorm_min()), 0x00);
}

TEST(Formats, Fp8KeepsNaNAndSignedZero) {
  EXPECT_EQ(floatToE4M3(kNaN), 0x7F);
  EXPECT_EQ(floatToE4M3(-kNaN), 0xFF);
  EXPECT_EQ(floatToE5M2(kNaN), 0x7F);
  EXPECT_EQ(floatToE5M2(-kNaN), 0xFF);
  EXPECT_TRUE(isNaNCode(OutDtype::FP8E4M3, floatToE4M3(kNaN)));
  EXPECT_FALSE(isNaNCode(OutDtype::FP8E4M3, 0x7E));
  EXPECT_FALSE(isNaNCode(OutDtype::INT8, 0x7F));
  EXPECT_EQ(floatToE4M3(0.0f), 0x00);
  EXPECT_EQ(floatToE4M3(-0.0f), 0x80);
  EXPECT_EQ(floatToE4M3(-1e-6f), 0x80);
  EXPECT_EQ(floatToE5M2(-1e-9f), 0x80);
}

TEST(Formats, Int8RoundsHalfToEvenAndSaturates) {
  EXPECT_EQ(floatToInt8(2.5f), 2);
  EXPECT_EQ(floatToInt8(3.5f), 4);
  EXPECT_EQ(floatToInt8(-2.5f), -2);
  EXPECT_EQ(floatToInt8(-3.5f), -4);
  EXPECT_EQ(floatToInt8(0.5f), 0);
  EXPECT_EQ(floatToInt8(std::nextafter(2.5f, 3.0f)), 3);
  EXPECT_EQ(floatToInt8(std::nextafter(2.5f, 0.0f)), 2);
  EXPECT_EQ(floatToInt8(126.5f), 126);
  EXPECT_EQ(floatToInt8(127.5f), 127);
  EXPECT_EQ(floatToInt8(200.0f), 127);
  EXPECT_EQ(floatToInt8(-128.5f), -128);
  EXPECT_EQ(floatToInt8(-200.0f), -128);
  EXPECT_EQ(floatToInt8(kInf), 127);
  EXPECT_EQ(floatToInt8(-kInf), -128);
  EXPECT_EQ(floatToInt8(kNaN), 0);
  EXPECT_EQ(quantize(OutDtype::INT8, -1.0f), 0xFF);
  EXPECT_EQ(dequantize(OutDtype::INT8, 0x80), -128.0f);
}

TEST(Formats, Bf16RoundTripsAndRoundsToEven) {
  for (uint32_t c = 0; c < 0x10000; ++c) {
    const float v = bf16ToFloat(static_cast<uint16_t>(c));
    if (std::isnan(v))
      continue;
    ASSERT_EQ(floatToBf16(v), c) << "code " << c;
  }
  EXPECT_EQ(floatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(floatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);       // tie -> even
  EXPECT_EQ(floatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);   // tie -> even
  EXPECT_EQ(floatToBf16(std::numeric_limits<float>::max()), 0x7F80); // overflows to Inf
  EXPECT_EQ(floatToBf16(-kInf), 0xFF80);
  EXPECT_TRUE(std::isnan(bf16ToFloat(floatToBf16(kNaN))));
}

TEST(Formats, Fp16RoundTripsAndRoundsToEven) {
  for (uint32_t c = 0; c < 0x10000; ++c) {
    const float v = fp16ToFloat(static_cast<uint16_t>(c));
    if (std::isnan(v))
      continue;
    ASSERT_EQ(floatToFp16(v), c) << "code " << c;
  }
  EXPECT_EQ(floatToFp16(1.0f), 0x3C00);
  EXPECT_EQ(floatToFp16(65504.0f), 0x7BFF);
  EXPECT_EQ(floatToFp16(65519.0f), 0x7BFF);
  EXPECT_EQ(floatToFp16(65520.0f), 0x7C00); // tie with the next power of two -> Inf
  EXPECT_EQ(floatToFp16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(floatToFp16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(floatToFp16(0.75f * std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(floatToFp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(floatToFp16(-0.0f), 0x8000);
  EXPECT_EQ(fp16ToFloat(0x7C00), kInf);
  EXPECT_TRUE(std::isnan(fp16ToFloat(floatToFp16(kNaN))));
}

TEST(Formats, Pow2Ceil) {
  EXPECT_EQ(pow2Ceil(1.0f), 1.0f);
  EXPECT_EQ(pow2Ceil(std::nextafter(1.0f, 2.0f)), 2.0f);
  EXPECT_EQ(pow2Ceil(1.0000001f), 2.0f);
  EXPECT_EQ(pow2Ceil(0.75f), 1.0f);
  EXPECT_EQ(pow2Ceil(0.5f), 0.5f);
  EXPECT_EQ(pow2Ceil(3.0f), 4.0f);
  EXPECT_EQ(pow2Ceil(std::ldexp(1.0f, -140)), std::ldexp(1.0f, -140));
  EXPECT_EQ(pow2Ceil(3 * std::ldexp(1.0f, -140)), std::ldexp(1.0f, -138));
  EXPECT_EQ(pow2Ceil(3e38f), kInf);
  EXPECT_EQ(pow2Ceil(kInf), kInf);
}

// ---- the reference ------------------------------------------------------------------

KernelSpec smallSpec(OutDtype out = OutDtype::FP8E4M3, ScaleLayout layout = ScaleLayout::Row) {
  KernelSpec spec;
  spec.hidden = 64;
  spec.groupSize = 16;
  spec.inDtype = InDtype::FP32;
  spec.outDtype = out;
  spec.scaleLayout = layout;
  spec.ue8m0 = layout == ScaleLayout::Ue8m0Packed || layout == ScaleLayout::Bytes;
  return spec;
}

Problem problemFor(const KernelSpec& spec, int64_t tokens) {
  Problem p;
  p.spec = spec;
  p.tokens = tokens;
  p.ldx = 2 * spec.hidden;
  return p;
}

// fp32 input whose products y are exactly `y[t][i]`: gate = 64 makes
// 1 + exp(-64) round to 1, so silu(64) = 64 exactly and y = 64 * (y / 64).
std::vector<uint8_t> exactInput(const KernelSpec& spec, const std::vector<std::vector<float>>& y) {
  const int64_t h = spec.hidden;
  std::vector<uint8_t> x(y.size() * 2 * h * 4);
  for (size_t t = 0; t < y.size(); ++t)
    for (int64_t i = 0; i < h; ++i) {
      storeInput(InDtype::FP32, x.data(), t * 2 * h + i, 64.0f);
      storeInput(InDtype::FP32, x.data(), t * 2 * h + h + i, y[t][i] / 64.0f);
    }
  return x;
}

float scaleAt(const Result& r, int64_t offset) {
  float s;
  std::memcpy(&s, r.scales.data() + offset, 4);
  return s;
}

TEST(Reference, ComputesSiluTimesUpInFp32) {
  const KernelSpec spec = smallSpec();
  std::vector<uint8_t> x(2 * spec.hidden * 4);
  const float gates[] = {1.0f, -2.5f, 0.125f, 7.0f};
  const float ups[] = {2.0f, 3.0f, -1.5f, 0.5f};
  for (int i = 0; i < 4; ++i) {
    storeInput(InDtype::FP32, x.data(), i, gates[i]);
    storeInput(InDtype::FP32, x.data(), spec.hidden + i, ups[i]);
  }
  const Result r = run(problemFor(spec, 1), x.data());
  for (int i = 0; i < 4; ++i) {
    const double g = gates[i];
    const double expected = g / (1.0 + std::exp(-g)) * ups[i];
    const double y = static_cast<double>(r.preRound[i]) * r.scaleValue[0];
    EXPECT_NEAR(y, expected, 1e-6 * std::fabs(expected)) << i;
  }
  // amax is |y| of column 3: 7 / (1 + e^-7) * 0.5.
  const double amax = 7.0 / (1.0 + std::exp(-7.0)) * 0.5;
  EXPECT_NEAR(r.scaleValue[0], amax / 448.0, 1e-6 * amax / 448.0);
  EXPECT_EQ(r.q[3], 0x7E); // the group's largest value maps to QMAX
}

TEST(Reference, ScaleIsAmaxOverQmaxWithTrueDivision) {
  const KernelSpec spec = smallSpec();
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 1.0f));
  y[0][5] = -224.0f; // group 0: amax 224 -> s = 0.5
  y[0][20] = 3.0f;   // group 1: amax 3 -> s = 3 / 448
  const auto x = exactInput(spec, y);
  const Result r = run(problemFor(spec, 1), x.data());
  EXPECT_EQ(r.scaleValue[0], 0.5f);
  EXPECT_EQ(r.scaleValue[1], 3.0f / 448.0f);
  EXPECT_EQ(r.q[5], 0xFE);              // -448
  EXPECT_EQ(r.q[0], floatToE4M3(2.0f)); // 1 / 0.5
  EXPECT_EQ(r.q[20], 0x7E);
  EXPECT_EQ(r.preRound[16], 1.0f / (3.0f / 448.0f));
}

TEST(Reference, NaNDoesNotWinAmax) {
  const KernelSpec spec = smallSpec();
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 1.0f));
  y[0][3] = kNaN;
  y[0][4] = 224.0f;
  const auto x = exactInput(spec, y);
  const Result r = run(problemFor(spec, 1), x.data());
  EXPECT_EQ(r.scaleValue[0], 0.5f);
  EXPECT_TRUE(isNaNCode(spec.outDtype, r.q[3]));
  EXPECT_EQ(r.q[4], 0x7E);
}

TEST(Reference, ZeroGroupGetsMinScaleAndZeros) {
  for (OutDtype out : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8}) {
    const KernelSpec spec = smallSpec(out);
    std::vector<uint8_t> x(2 * spec.hidden * 4);
    fillRow(spec, x.data(), 0, 2 * spec.hidden, RowPattern::Zeros);
    const Result r = run(problemFor(spec, 1), x.data());
    for (int j = 0; j < spec.numGroups(); ++j) {
      EXPECT_EQ(r.scaleValue[j], minScale(out)) << toString(out);
      EXPECT_EQ(scaleAt(r, 4 * j), minScale(out)) << toString(out);
    }
    for (int i = 0; i < spec.hidden; ++i)
      ASSERT_EQ(r.q[i], 0) << toString(out) << " column " << i;
  }
  EXPECT_EQ(minScale(OutDtype::FP8E4M3), 1.0f / (448.0f * 512.0f));
}

TEST(Reference, TinyGroupIsClampedToMinScale) {
  const KernelSpec spec = smallSpec();
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 1e-6f));
  const auto x = exactInput(spec, y);
  const Result r = run(problemFor(spec, 1), x.data());
  EXPECT_EQ(r.scaleValue[0], minScale(OutDtype::FP8E4M3));
  EXPECT_EQ(r.q[0], floatToE4M3(1e-6f / minScale(OutDtype::FP8E4M3)));
  EXPECT_NE(r.q[0], 0);
}

TEST(Reference, ScaleUpperBoundClampsAndSaturates) {
  KernelSpec spec = smallSpec();
  spec.hasScaleUb = true;
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 0.25f));
  y[0][1] = 300.0f;
  y[0][2] = -300.0f;
  y[0][16] = 2.0f; // group 1: 2 / 448 is below the bound
  const auto x = exactInput(spec, y);
  Problem p = problemFor(spec, 1);
  p.scaleUb = 0.01f;
  const Result r = run(p, x.data());
  EXPECT_EQ(r.scaleValue[0], 0.01f);
  EXPECT_EQ(r.q[1], 0x7E);
  EXPECT_EQ(r.q[2], 0xFE);
  EXPECT_EQ(r.q[0], floatToE4M3(0.25f / 0.01f));
  EXPECT_EQ(r.scaleValue[1], 2.0f / 448.0f);
}

TEST(Reference, InfiniteAmaxGivesInfiniteScale) {
  const KernelSpec spec = smallSpec();
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 1.0f));
  y[0][0] = kInf;
  const auto x = exactInput(spec, y);
  const Result r = run(problemFor(spec, 1), x.data());
  EXPECT_EQ(r.scaleValue[0], kInf);
  EXPECT_TRUE(isNaNCode(spec.outDtype, r.q[0])); // Inf / Inf
  EXPECT_EQ(r.q[1], 0x00);                       // 1 / Inf
}

TEST(Reference, Ue8m0RoundsScaleUpToAPowerOfTwo) {
  for (ScaleLayout layout : {ScaleLayout::Row, ScaleLayout::Ue8m0Packed}) {
    KernelSpec spec = smallSpec(OutDtype::FP8E4M3, layout);
    spec.ue8m0 = true;
    std::vector<std::vector<float>> y(1, std::vector<float>(64, 1.0f));
    y[0][0] = 300.0f; // 300 / 448 -> s = 1
    y[0][16] = 3.0f;  // 3 / 448 -> s = 2^-7
    const auto x = exactInput(spec, y);
    const Result r = run(problemFor(spec, 1), x.data());
    EXPECT_EQ(r.scaleValue[0], 1.0f);
    EXPECT_EQ(r.scalePreRound[0], 300.0f / 448.0f);
    EXPECT_EQ(r.scaleValue[1], std::ldexp(1.0f, -7));
    EXPECT_EQ(r.q[0], floatToE4M3(300.0f));
    if (layout == ScaleLayout::Row) {
      EXPECT_EQ(scaleAt(r, 0), 1.0f);
    } else {
      EXPECT_EQ(r.scales[0], 127); // group 0: byte 0 of word 0
      EXPECT_EQ(r.scales[1], 120); // group 1: 2^-7
    }
  }
}

// T = 5, H = 64, G = 16: NG = 4, T4 = 8. Scale (t = 2, j = 3) by hand.
TEST(Reference, EveryLayoutPutsScaleWhereSpecSays) {
  const int64_t T = 5;
  struct Case {
    ScaleLayout layout;
    int64_t bytes;
    int64_t offset;
  };
  const Case cases[] = {{ScaleLayout::Row, 5 * 4 * 4, (2 * 4 + 3) * 4},
                        {ScaleLayout::Col, 5 * 4 * 4, (3 * 5 + 2) * 4},
                        {ScaleLayout::ColTma, 8 * 4 * 4, (3 * 8 + 2) * 4},
                        {ScaleLayout::Ue8m0Packed, 1 * 8 * 4, (0 * 8 + 2) * 4 + 3}};
  for (const Case& c : cases) {
    const KernelSpec spec = smallSpec(OutDtype::FP8E4M3, c.layout);
    SCOPED_TRACE(toString(c.layout));
    const auto x = makeInput(spec, T, 2 * spec.hidden, 1, 7);
    const Result r = run(problemFor(spec, T), x.data());
    ASSERT_EQ(static_cast<int64_t>(r.scales.size()), c.bytes);
    EXPECT_EQ(scaleBufferBytes(spec, T), c.bytes);
    EXPECT_EQ(scaleOffset(spec, T, 0, 2, 3), c.offset);
    const float s23 = r.scaleValue[2 * 4 + 3];
    if (c.layout == ScaleLayout::Ue8m0Packed) {
      EXPECT_EQ(r.scales[c.offset], std::ilogb(s23) + 127);
      for (int64_t t = 5; t < 8; ++t) // padding rows: whole words zero
        for (int b = 0; b < 4; ++b)
          EXPECT_EQ(r.scales[t * 4 + b], 0) << "t " << t;
      continue;
    }
    EXPECT_EQ(scaleAt(r, c.offset), s23);
    // Distinct scales, so a wrong index could not pass by luck.
    std::set<float> distinct(r.scaleValue.begin(), r.scaleValue.end());
    EXPECT_EQ(distinct.size(), r.scaleValue.size());
    if (c.layout == ScaleLayout::ColTma) {
      for (int64_t j = 0; j < 4; ++j)
        for (int64_t t = 5; t < 8; ++t)
          EXPECT_EQ(scaleAt(r, (j * 8 + t) * 4), 0.0f) << "padding t " << t << " j " << j;
    }
    // Every computed scale sits at its index: nothing else holds it.
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < 4; ++j)
        EXPECT_EQ(scaleAt(r, scaleOffset(spec, T, 0, t, j)), r.scaleValue[t * 4 + j]);
  }
}

TEST(Reference, PackedLastWordHasZeroHighBytes) {
  KernelSpec spec = smallSpec(OutDtype::FP8E4M3, ScaleLayout::Ue8m0Packed);
  spec.hidden = 80; // NG = 5: the second word holds group 4 in byte 0 only
  const int64_t T = 5;
  const auto x = makeInput(spec, T, 2 * spec.hidden, 1, 11);
  Problem p = problemFor(spec, T);
  const Result r = run(p, x.data());
  ASSERT_EQ(r.scales.size(), 2u * 8 * 4);
  const int64_t word = 1 * 8 + 2; // (j / 4) * T4 + t for t = 2, j = 4
  EXPECT_EQ(r.scales[word * 4], std::ilogb(r.scaleValue[2 * 5 + 4]) + 127);
  EXPECT_NE(r.scales[word * 4], 0);
  for (int b = 1; b < 4; ++b)
    EXPECT_EQ(r.scales[word * 4 + b], 0);
}

TEST(Reference, MaskedRowsAndPaddingAreNotWritten) {
  KernelSpec spec = smallSpec(OutDtype::FP8E4M3, ScaleLayout::ColTma);
  spec.masked = true;
  const int64_t T = 5;
  Problem p = problemFor(spec, T);
  p.numExperts = 2;
  p.maskedM = {3, 0};
  p.poison = 0xAB;
  auto x = makeInput(spec, T, p.ldx, 2, 3);
  for (int64_t row = 3; row < 2 * T; ++row) // rows that must not be read
    fillRow(spec, x.data(), row, p.ldx, RowPattern::NaNs);
  const Result r = run(p, x.data());
  ASSERT_EQ(r.q.size(), 2u * T * 64);
  ASSERT_EQ(static_cast<int64_t>(r.scales.size()), 2 * scaleBufferBytes(spec, T));
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t t = 0; t < 8; ++t)
      for (int64_t j = 0; j < 4; ++j) {
        const int64_t off = scaleOffset(spec, T, e, t, j);
        const bool live = e == 0 && t < 3;
        for (int b = 0; b < 4; ++b)
          EXPECT_EQ(r.scales[off + b] == 0xAB, !live) << "e " << e << " t " << t << " j " << j;
      }
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < 64; ++i) {
        const bool live = e == 0 && t < 3;
        if (!live) {
          ASSERT_EQ(r.q[(e * T + t) * 64 + i], 0xAB);
        }
        ASSERT_EQ(std::isnan(r.preRound[(e * T + t) * 64 + i]), !live);
      }
  // Live rows equal an unmasked run over the same data.
  KernelSpec plain = spec;
  plain.masked = false;
  const Result u = run(problemFor(plain, T), x.data());
  for (int64_t i = 0; i < 3 * 64; ++i)
    ASSERT_EQ(r.q[i], u.q[i]) << i;
  EXPECT_EQ(scaleOffset(spec, T, 1, 0, 0), 8 * 4 * 4);
}

TEST(Reference, MaskedExpertsUseTheirOwnRowsAndScales) {
  KernelSpec spec = smallSpec(OutDtype::INT8, ScaleLayout::Row);
  spec.masked = true;
  const int64_t T = 4;
  Problem p = problemFor(spec, T);
  p.numExperts = 2;
  p.maskedM = {1, 2};
  const auto x = makeInput(spec, T, p.ldx, 2, 5);
  const Result r = run(p, x.data());
  // Expert 1 row 1 is input row 5 of the unmasked view.
  KernelSpec plain = spec;
  plain.masked = false;
  const Result u = run(problemFor(plain, 2 * T), x.data());
  for (int64_t j = 0; j < 4; ++j)
    EXPECT_EQ(scaleAt(r, scaleBufferBytes(spec, T) + (1 * 4 + j) * 4), u.scaleValue[5 * 4 + j]);
  for (int64_t i = 0; i < 64; ++i)
    EXPECT_EQ(r.q[5 * 64 + i], u.q[5 * 64 + i]);
  EXPECT_EQ(r.q[2 * 64], p.poison); // expert 0 row 2 is past masked_m[0]
}

TEST(Reference, PaddingColumnsAreNeverRead) {
  for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32}) {
    KernelSpec spec = smallSpec(OutDtype::FP8E5M2, ScaleLayout::Col);
    spec.inDtype = in;
    const int64_t T = 3;
    const int64_t wide = 2 * spec.hidden + 24;
    const auto x = makeInput(spec, T, wide, 1, 9);
    // The garbage is there...
    EXPECT_TRUE(std::isnan(loadInput(in, x.data(), 2 * spec.hidden)) ||
                std::isnan(loadInput(in, x.data(), 2 * spec.hidden + 1)));
    // ... and a compact copy gives the same result.
    std::vector<uint8_t> compact(T * 2 * spec.hidden * dtypeBytes(in));
    for (int64_t t = 0; t < T; ++t)
      std::memcpy(compact.data() + t * 2 * spec.hidden * dtypeBytes(in),
                  x.data() + t * wide * dtypeBytes(in), 2 * spec.hidden * dtypeBytes(in));
    Problem p = problemFor(spec, T);
    const Result a = run(p, compact.data());
    p.ldx = wide;
    const Result b = run(p, x.data());
    EXPECT_EQ(a.q, b.q) << toString(in);
    EXPECT_EQ(a.scales, b.scales) << toString(in);
  }
}

TEST(Reference, MakeInputIsDeterministicAndSeeded) {
  const KernelSpec spec = smallSpec();
  EXPECT_EQ(makeInput(spec, 4, 128, 1, 42), makeInput(spec, 4, 128, 1, 42));
  EXPECT_NE(makeInput(spec, 4, 128, 1, 42), makeInput(spec, 4, 128, 1, 43));
}

TEST(Reference, SpecialRowsGiveDefinedOutputs) {
  const KernelSpec spec = smallSpec(OutDtype::INT8);
  std::vector<uint8_t> x(4 * 2 * spec.hidden * 4);
  const RowPattern patterns[] = {RowPattern::NaNs, RowPattern::Infs, RowPattern::Huge,
                                 RowPattern::Mixed};
  for (int row = 0; row < 4; ++row)
    fillRow(spec, x.data(), row, 2 * spec.hidden, patterns[row]);
  EXPECT_TRUE(std::isnan(loadInput(InDtype::FP32, x.data(), 0)));
  EXPECT_EQ(loadInput(InDtype::FP32, x.data(), 128), kInf);
  EXPECT_EQ(loadInput(InDtype::FP32, x.data(), 256), std::numeric_limits<float>::max());
  const Result r = run(problemFor(spec, 4), x.data());
  for (int i = 0; i < 64; ++i)
    ASSERT_EQ(r.q[i], 0) << "int8 NaN -> 0, column " << i;
  for (int j = 0; j < 4; ++j)
    EXPECT_EQ(r.scaleValue[j], minScale(OutDtype::INT8)); // NaNs never win amax
}

TEST(Reference, EdgeRowsHitTheFastDivisionLimits) {
  const KernelSpec spec = smallSpec(); // fp32 in, fp8 e4m3 out, H = 64, G = 16
  std::vector<uint8_t> x(2 * spec.hidden * 4);
  fillRow(spec, x.data(), 0, 2 * spec.hidden, RowPattern::Edges);
  // Group 0: gate -0 times a positive up is y = -0, which quantizes to -0.
  EXPECT_TRUE(std::signbit(loadInput(InDtype::FP32, x.data(), 0)));
  EXPECT_GT(loadInput(InDtype::FP32, x.data(), spec.hidden), 0.0f);
  // Group 1: gates around -87.
  EXPECT_EQ(loadInput(InDtype::FP32, x.data(), 16 + 1), -87.0f);
  const Result r = run(problemFor(spec, 1), x.data());
  EXPECT_EQ(r.q[0], 0x80);
  // Group 1: tiny silu times a huge up stays finite and nonzero.
  EXPECT_GT(r.scaleValue[1], minScale(OutDtype::FP8E4M3));
  EXPECT_TRUE(std::isfinite(r.scaleValue[1]));
  // Group 2 has y = Inf, so its scale is Inf; group 3's ups span 2^-30..2^-15.
  EXPECT_EQ(r.scaleValue[2], kInf);
  EXPECT_TRUE(std::isfinite(r.scaleValue[3]));
}

// RowPattern::Tails for gelu_tanh: its gates put z where 1 + exp(-z) is
// finite and at least 2^126 (its reciprocal is subnormal, which an
// approximate reciprocal flushes to 0, though g / d is normal) and where it
// overflows, for fp32 and fp16 gates. With fp32 ups of 2^100 (group 0) the
// tail alone reaches nonzero codes at the floor scale, which only a division
// that keeps the quotient gets; with ups of 2^20..2^50 (group 2) it reaches
// them only under a min_scale near 2^-126; fp16's (65504) under 2^-100.
TEST(Reference, TailRowsPutGeluTanhReciprocalsInTheSubnormals) {
  // Nonzero e4m3 codes in group j (G = 16) of the one row.
  auto nonzeroCodes = [](const Result& r, int j) {
    int n = 0;
    for (int col = 0; col < 16; ++col)
      n += (r.q[16 * j + col] & 0x7f) != 0;
    return n;
  };
  for (InDtype in : {InDtype::FP32, InDtype::FP16}) {
    SCOPED_TRACE(in == InDtype::FP32 ? "fp32" : "fp16");
    KernelSpec spec = smallSpec(); // H = 64, G = 16, fp8 e4m3 out
    spec.inDtype = in;
    spec.activation = Activation::GeluTanh;
    std::vector<uint8_t> x(2 * spec.hidden * 4);
    fillRow(spec, x.data(), 0, 2 * spec.hidden, RowPattern::Tails);
    int subnormalReciprocals = 0, overflows = 0;
    for (int col = 0; col < 8; ++col) {
      const float g = loadInput(in, x.data(), col);
      const float d = 1.0f + std::exp(-geluTanhZ(g));
      subnormalReciprocals += std::isfinite(d) && std::fpclassify(1.0f / d) == FP_SUBNORMAL &&
                              std::fpclassify(g / d) == FP_NORMAL;
      overflows += std::isinf(d);
    }
    EXPECT_GE(subnormalReciprocals, 1);
    EXPECT_GE(overflows, 1);
    if (in != InDtype::FP32) {
      // fp16 ups stop at 65504: the tail reaches codes only under a floor
      // below 2^-96 (the template's rule for dividing fp16 unscaled).
      spec.minScale = 0x1p-100f;
      EXPECT_GE(nonzeroCodes(run(problemFor(spec, 1), x.data()), 0), 1);
      continue;
    }
    EXPECT_EQ(loadInput(in, x.data(), spec.hidden), 0x1p100f);
    const Result r = run(problemFor(spec, 1), x.data());
    EXPECT_EQ(r.scaleValue[0], minScale(OutDtype::FP8E4M3));
    EXPECT_GE(nonzeroCodes(r, 0), 1);
    EXPECT_EQ(nonzeroCodes(r, 2), 0);
    spec.minScale = 0x1p-126f;
    EXPECT_GE(nonzeroCodes(run(problemFor(spec, 1), x.data()), 2), 1);
  }
}

// The template's gelu_tanh divides bf16 inputs without its 2^-64 scaling
// (act_mul.cuh, TailScaling): no bf16 gate makes 1 + exp(-z) finite and at
// least 2^126, where the approximate reciprocal would flush. Every bf16
// gate, with a margin of 2^-10 for the device's approximate d; fp16 gates
// do reach the band (7 of them), which is why fp16 has its own rule.
TEST(Reference, NoBf16GateMakesGeluTanhsReciprocalSubnormal) {
  auto inBand = [](float g) {
    const float d = 1.0f + std::exp(-geluTanhZ(g));
    return std::isfinite(d) && d >= 0x1p126f * (1.0f - 0x1p-10f);
  };
  int bf16InBand = 0, fp16InBand = 0, bf16Finite = 0;
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float b = bf16ToFloat(static_cast<uint16_t>(bits));
    const float h = fp16ToFloat(static_cast<uint16_t>(bits));
    bf16Finite += std::isfinite(b);
    bf16InBand += std::isfinite(b) && inBand(b);
    fp16InBand += std::isfinite(h) && inBand(h);
  }
  EXPECT_EQ(bf16Finite, 65536 - 2 * 128); // the count covers every finite bf16
  EXPECT_EQ(bf16InBand, 0);
  EXPECT_EQ(fp16InBand, 7);
}

TEST(Reference, RejectsInconsistentProblems) {
  KernelSpec spec = smallSpec();
  std::vector<uint8_t> x(1 << 12);
  Problem p = problemFor(spec, 2);
  p.ldx = 100;
  EXPECT_THROW(run(p, x.data()), std::invalid_argument);
  p = problemFor(spec, 2);
  p.numExperts = 2; // not masked
  EXPECT_THROW(run(p, x.data()), std::invalid_argument);
  spec.masked = true;
  p = problemFor(spec, 2);
  p.maskedM = {3};
  EXPECT_THROW(run(p, x.data()), std::invalid_argument);
}

// ---- activations and gate/up layouts (docs/contract.md section 6) ------------------------------

KernelSpec withActivation(Activation a, std::optional<float> alpha = std::nullopt,
                          std::optional<float> beta = std::nullopt,
                          std::optional<float> limit = std::nullopt) {
  KernelSpec spec = smallSpec();
  spec.activation = a;
  spec.alpha = alpha;
  spec.beta = beta;
  spec.limit = limit;
  return spec;
}

// The functions of docs/contract.md's table in double, as written there.
double siluD(double g) {
  return g / (1.0 + std::exp(-g));
}
double geluTanhD(double g) {
  return 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)));
}
double geluD(double g) {
  return 0.5 * g * (1.0 + std::erf(g / std::sqrt(2.0)));
}

TEST(Activation, MatchesTheFormulasOfTheSpec) {
  const KernelSpec silu = withActivation(Activation::Silu);
  const KernelSpec oss = withActivation(Activation::Swiglu, 1.702f, 1.0f, 7.0f);
  const KernelSpec geluTanh = withActivation(Activation::GeluTanh);
  const KernelSpec gelu = withActivation(Activation::Gelu);
  for (float g : {-5.0f, -2.5f, -1.0f, -0.125f, 0.0f, 0.5f, 1.0f, 3.0f, 6.5f}) {
    for (float u : {-3.0f, 0.75f, 2.0f}) {
      SCOPED_TRACE("g " + std::to_string(g) + " u " + std::to_string(u));
      auto near = [](double got, double want) {
        EXPECT_NEAR(got, want, 1e-6 * std::fabs(want) + 1e-30);
      };
      near(activation(silu, g, u), siluD(g) * u);
      // Inside the limit: g * sigma(1.702 g) * (u + 1).
      near(activation(oss, g, u), g / (1.0 + std::exp(-1.702 * g)) * (u + 1.0));
      near(activation(geluTanh, g, u), geluTanhD(g) * u);
      near(activation(gelu, g, u), geluD(g) * u);
    }
  }
  // Hand-computed: gelu(1) = 0.8413447, gelu_tanh(1) = 0.8411920, silu(1) = 0.7310586.
  EXPECT_NEAR(activation(gelu, 1.0f, 1.0f), 0.8413447460685429, 1e-7);
  EXPECT_NEAR(activation(geluTanh, 1.0f, 1.0f), 0.8411919906082768, 1e-7);
  EXPECT_NEAR(activation(silu, 1.0f, 1.0f), 0.7310585786300049, 1e-7);
}

// 1 + tanh(w) and 1 + erf(x) cancel for negative gates; the reference keeps
// full relative accuracy there (erfc and exp forms).
TEST(Activation, GeluKeepsRelativeAccuracyForNegativeGates) {
  const KernelSpec geluTanh = withActivation(Activation::GeluTanh);
  const KernelSpec gelu = withActivation(Activation::Gelu);
  // gelu_tanh's error left is that of its fp32 argument w, which the
  // function's steepness amplifies: a few 1e-6 at -6, 1e-5 at -9. gelu's
  // argument g / sqrt 2 is not rounded to fp32, so only its three roundings
  // are left (erfc's, g * phi and * u): within 2e-7 down to -12, where phi
  // is 1.8e-33. The cancelling forms would give 0 at -9 (1 + erf(-6.4) and
  // 1 + tanh(-12.4) round to 0 in fp32).
  for (float g : {-3.0f, -4.0f, -6.0f, -9.0f}) {
    const double tol = g > -5.0f ? 2e-6 : (g > -7.0f ? 5e-6 : 2e-5);
    const double w = std::sqrt(2.0 / M_PI) * (g + 0.044715 * double(g) * g * g);
    const double wantTanh = g / (1.0 + std::exp(-2.0 * w)); // = 0.5 g (1 + tanh w)
    EXPECT_NEAR(activation(geluTanh, g, 1.0f), wantTanh, tol * std::fabs(wantTanh)) << g;
    EXPECT_LT(activation(geluTanh, g, 1.0f), 0.0f) << g;
  }
  for (float g : {-3.0f, -4.0f, -6.0f, -9.0f, -10.7f, -12.0f}) {
    const double wantErf = g * 0.5 * std::erfc(-g / std::sqrt(2.0));
    EXPECT_NEAR(activation(gelu, g, 1.0f), wantErf, 2e-7 * std::fabs(wantErf)) << g;
    EXPECT_LT(activation(gelu, g, 1.0f), 0.0f) << g; // not flushed to 0 by cancellation
  }
  // Far out: -0 (g / Inf), never NaN for a finite gate.
  EXPECT_EQ(activation(geluTanh, -1e30f, 2.0f), 0.0f);
  EXPECT_TRUE(std::signbit(activation(geluTanh, -1e30f, 2.0f)));
  EXPECT_EQ(activation(gelu, -1e30f, 2.0f), 0.0f);
  EXPECT_EQ(activation(geluTanh, 1e30f, 2.0f), 2e30f);
  EXPECT_EQ(activation(gelu, 1e30f, 2.0f), 2e30f);
}

// gelu_tanh's argument z = 2w is computed as g * (k1 + k3 * g^2): three fp32
// roundings where the contract's written order takes six. Over every finite
// bf16 gate, the reference's y (u = 1) stays within a few ulp of the exact
// function, scaled by 1 + |z| (z's own rounding, which sigma's steepness
// turns into a relative error of y up to |z| times it): 2.34 of those units at
// worst, as the six-rounding order (z itself: 2.26 against 2.05 ulp at worst).
TEST(Activation, GeluTanhArgumentInThreeRoundingsIsAccurateForEveryBf16Gate) {
  const KernelSpec geluTanh = withActivation(Activation::GeluTanh);
  const float k = static_cast<float>(std::sqrt(2.0 / M_PI));
  double worst = 0, worstSix = 0;
  int checked = 0;
  for (int c = 0; c < 0x10000; ++c) {
    const float g = bf16ToFloat(static_cast<uint16_t>(c));
    if (!std::isfinite(g))
      continue;
    const double z = 2.0 * std::sqrt(2.0 / M_PI) * (g + 0.044715 * double(g) * g * g);
    const double exact = g / (1.0 + std::exp(-z));
    // Out: zero, an fp32 subnormal y (absolute, not relative, accuracy), and
    // exp(-z) beyond fp32 (z below about -88.7: y is then 0 in fp32 as in
    // the kernel, whose 1 + exp is infinite there too).
    if (exact == 0.0 || std::fabs(exact) < 0x1p-126 ||
        std::exp(-z) >= double(std::numeric_limits<float>::max()))
      continue;
    const double scale = std::ldexp(1.0, -24) * (1.0 + std::fabs(z));
    const float y = activation(geluTanh, g, 1.0f);
    worst = std::max(worst, std::fabs(y - exact) / std::fabs(exact) / scale);
    // The written order, rounded at each of its six steps.
    const float w6 = k * (g + 0.044715f * (g * g * g));
    const float y6 = g / (1.0f + std::exp(-(2.0f * w6)));
    worstSix = std::max(worstSix, std::fabs(y6 - exact) / std::fabs(exact) / scale);
    ++checked;
  }
  EXPECT_GT(checked, 30000);
  EXPECT_LT(worst, 3.0) << "ulp x (1 + |z|); the six-rounding order: " << worstSix;
  std::printf("[ gelu_tanh ] %d gates: worst %.2f ulp x (1 + |z|), six roundings %.2f\n", checked,
              worst, worstSix);
}

TEST(Activation, SwigluClampsPropagateNaN) {
  const KernelSpec oss = withActivation(Activation::Swiglu, 1.702f, 1.0f, 7.0f);
  // NaN gate or up: NaN y (fminf would have made it the limit).
  EXPECT_TRUE(std::isnan(activation(oss, kNaN, 1.0f)));
  EXPECT_TRUE(std::isnan(activation(oss, 1.0f, kNaN)));
  // Gate clamped above only; up on both sides.
  const float at7 = 7.0f / (1.0f + std::exp(-(1.702f * 7.0f)));
  EXPECT_EQ(activation(oss, kInf, 0.0f), at7 * 1.0f);
  EXPECT_EQ(activation(oss, 100.0f, 2.0f), at7 * 3.0f);
  EXPECT_EQ(activation(oss, 2.0f, 100.0f), activation(oss, 2.0f, 7.0f));
  EXPECT_EQ(activation(oss, 2.0f, -kInf), activation(oss, 2.0f, -7.0f));
  EXPECT_EQ(activation(oss, 2.0f, -kInf), 2.0f / (1.0f + std::exp(-(1.702f * 2.0f))) * -6.0f);
  const float gm100 = -100.0f / (1.0f + std::exp(-(1.702f * -100.0f)));
  EXPECT_EQ(activation(oss, -100.0f, 1.0f), gm100 * 2.0f); // no lower clamp on the gate
  // Exactly at the limit: unchanged.
  EXPECT_EQ(activation(oss, 7.0f, 7.0f), at7 * 8.0f);
  // Without a limit nothing is clamped.
  const KernelSpec open = withActivation(Activation::Swiglu, 1.702f, 1.0f);
  EXPECT_EQ(activation(open, 2.0f, 100.0f), 2.0f / (1.0f + std::exp(-(1.702f * 2.0f))) * 101.0f);
}

TEST(Activation, SwigluWithDefaultParametersIsSiluBitForBit) {
  const KernelSpec silu = withActivation(Activation::Silu);
  const KernelSpec plain = withActivation(Activation::Swiglu, 1.0f, 0.0f);
  for (float g : {-88.0f, -3.0f, -0.0f, 0.0f, 1e-40f, 2.5f, 90.0f, kInf, -kInf})
    for (float u : {-0.0f, 0.0f, -2.0f, 3.5f}) {
      const float a = activation(silu, g, u);
      const float b = activation(plain, g, u);
      EXPECT_EQ(std::memcmp(&a, &b, 4) == 0 || (std::isnan(a) && std::isnan(b)), true)
          << g << " " << u;
    }
  // beta = 0 adds nothing: a -0 up keeps its sign, as in silu.
  EXPECT_TRUE(std::signbit(activation(withActivation(Activation::Swiglu, 2.0f), 1.0f, -0.0f)));
}

TEST(Reference, InterleavedReadsGateAndUpFromPairs) {
  for (Activation a : {Activation::Silu, Activation::GeluTanh}) {
    KernelSpec split = withActivation(a);
    KernelSpec inter = split;
    inter.gateUp = GateUp::Interleaved;
    const int64_t T = 3;
    const int64_t ldx = 2 * split.hidden + 4;
    const auto xs = makeInput(split, T, ldx, 1, 5);
    // The same gate and up values, interleaved.
    std::vector<uint8_t> xi(xs.size());
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < split.hidden; ++i) {
        storeInput(InDtype::FP32, xi.data(), t * ldx + 2 * i,
                   loadInput(InDtype::FP32, xs.data(), t * ldx + i));
        storeInput(InDtype::FP32, xi.data(), t * ldx + 2 * i + 1,
                   loadInput(InDtype::FP32, xs.data(), t * ldx + split.hidden + i));
      }
      for (int64_t c = 2 * split.hidden; c < ldx; ++c)
        storeInput(InDtype::FP32, xi.data(), t * ldx + c, kNaN);
    }
    Problem ps = problemFor(split, T);
    ps.ldx = ldx;
    Problem pi = ps;
    pi.spec = inter;
    const Result rs = run(ps, xs.data());
    const Result ri = run(pi, xi.data());
    EXPECT_EQ(rs.q, ri.q) << toString(a);
    EXPECT_EQ(rs.scales, ri.scales) << toString(a);
    // fillRow puts special values where the layout says.
    std::vector<uint8_t> row(ldx * 4);
    fillRow(inter, row.data(), 0, ldx, RowPattern::Infs);
    EXPECT_EQ(loadInput(InDtype::FP32, row.data(), 0), kInf);  // gate 0
    EXPECT_EQ(loadInput(InDtype::FP32, row.data(), 1), -kInf); // up 0
    EXPECT_EQ(loadInput(InDtype::FP32, row.data(), 2), -kInf); // gate 1
    EXPECT_EQ(loadInput(InDtype::FP32, row.data(), 3), kInf);  // up 1
  }
}

TEST(Reference, LimitsRowsHaveNaNAndValuesAroundTheLimit) {
  KernelSpec oss = withActivation(Activation::Swiglu, 1.702f, 1.0f, 7.0f);
  oss.gateUp = GateUp::Interleaved;
  std::vector<uint8_t> x(2 * oss.hidden * 4);
  fillRow(oss, x.data(), 0, 2 * oss.hidden, RowPattern::Limits);
  EXPECT_EQ(loadInput(InDtype::FP32, x.data(), 0), 7.0f);
  EXPECT_TRUE(std::isnan(loadInput(InDtype::FP32, x.data(), 2))); // gate of column 1
  EXPECT_TRUE(std::isnan(loadInput(InDtype::FP32, x.data(), 5))); // up of column 2
  const Result r = run(problemFor(oss, 1), x.data());
  EXPECT_TRUE(isNaNCode(oss.outDtype, r.q[1]));
  EXPECT_TRUE(isNaNCode(oss.outDtype, r.q[2]));
  for (int j = 0; j < oss.numGroups(); ++j)
    EXPECT_TRUE(std::isfinite(r.scaleValue[j])) << j; // the clamps keep y finite
}

// ---- power-of-two rounding: ceil, floor, the bytes layout (docs/contract.md section 7) -------

KernelSpec mxSpec(OutDtype out = OutDtype::FP8E4M3, ScaleLayout layout = ScaleLayout::Bytes) {
  KernelSpec spec = smallSpec(out, layout);
  spec.ue8m0 = true;
  spec.scaleRounding = ScaleRounding::Floor;
  return spec;
}

TEST(Pow2Scale, FloorAtExponentBoundaries) {
  const KernelSpec e4m3 = mxSpec();
  const KernelSpec e5m2 = mxSpec(OutDtype::FP8E5M2);
  // e = floor(log2(amax)) - 8 for e4m3.
  EXPECT_EQ(pow2Scale(e4m3, 448.0f, 0), 1.0f); // 2^8 * 1.75
  EXPECT_EQ(pow2Scale(e4m3, 256.0f, 0), 1.0f); // exactly 2^8
  EXPECT_EQ(pow2Scale(e4m3, std::nextafter(256.0f, 0.0f), 0), 0.5f);
  EXPECT_EQ(pow2Scale(e4m3, std::nextafter(512.0f, 0.0f), 0), 1.0f);
  EXPECT_EQ(pow2Scale(e4m3, 512.0f, 0), 2.0f);
  EXPECT_EQ(pow2Scale(e4m3, 1.0f, 0), std::ldexp(1.0f, -8));
  EXPECT_EQ(pow2Scale(e5m2, 57344.0f, 0), 1.0f); // 2^15 * 1.75
  EXPECT_EQ(pow2Scale(e5m2, 1.0f, 0), std::ldexp(1.0f, -15));
  // The largest finite amax: floor(log2) = 127.
  EXPECT_EQ(pow2Scale(e4m3, std::numeric_limits<float>::max(), 0), std::ldexp(1.0f, 119));
  // The clamp at -127: 2^-119 is e = -127 exactly, 2^-118 is e = -126.
  EXPECT_EQ(pow2Scale(e4m3, std::ldexp(1.0f, -118), 0), std::ldexp(1.0f, -126));
  EXPECT_EQ(pow2Scale(e4m3, std::ldexp(1.0f, -119), 0), std::ldexp(1.0f, -127));
  EXPECT_EQ(pow2Scale(e4m3, std::ldexp(1.0f, -125), 0), std::ldexp(1.0f, -127));
}

TEST(Pow2Scale, SubnormalZeroAndInfiniteAmax) {
  for (OutDtype out : {OutDtype::FP8E4M3, OutDtype::FP8E5M2}) {
    const KernelSpec spec = mxSpec(out);
    SCOPED_TRACE(toString(out));
    const float twoM127 = std::ldexp(1.0f, -127); // an fp32 subnormal
    EXPECT_EQ(pow2Scale(spec, std::numeric_limits<float>::denorm_min(), 0), twoM127);
    EXPECT_EQ(pow2Scale(spec, std::ldexp(1.0f, -130) * 1.5f, 0), twoM127);
    EXPECT_EQ(pow2Scale(spec, 0.0f, 0), twoM127);               // amax 0: e = -127, byte 0
    EXPECT_EQ(pow2Scale(spec, kInf, 0), std::ldexp(1.0f, 127)); // byte 254
  }
  // Ceil: 2^ceil(log2(pre)), at most 2^127 (an infinite amax gives byte 254 too).
  KernelSpec ceil = mxSpec();
  ceil.scaleRounding = ScaleRounding::Ceil;
  EXPECT_EQ(pow2Scale(ceil, 300.0f, 300.0f / 448.0f), 1.0f);
  EXPECT_EQ(pow2Scale(ceil, kInf, kInf), std::ldexp(1.0f, 127));
  EXPECT_EQ(pow2Scale(ceil, 0.0f, 3e38f), std::ldexp(1.0f, 127));
}

// The subnormal exponent is exact: with e5m2, EMAX = 15 and amax = 2^-140
// (subnormal) would be e = -155, clamped; so check ilogb's reading through a
// scale that stays in range with a normal amax near the subnormal boundary.
TEST(Pow2Scale, ExponentIsReadFromTheBitsNotLog2f) {
  const KernelSpec spec = mxSpec();
  // Just below a power of two, where log2f rounds up to the integer.
  for (int k = -100; k <= 127; k += 7) {
    const float p = std::ldexp(1.0f, k);
    const float below = std::nextafter(p, 0.0f);
    EXPECT_EQ(pow2Scale(spec, below, 0), std::ldexp(1.0f, std::max(-127, k - 1 - 8))) << k;
    EXPECT_EQ(pow2Scale(spec, p, 0), std::ldexp(1.0f, std::max(-127, k - 8))) << k;
  }
}

TEST(Reference, MxFloorRoundsDownAndMaySaturate) {
  for (ScaleLayout layout : {ScaleLayout::Bytes, ScaleLayout::Row, ScaleLayout::Ue8m0Packed}) {
    SCOPED_TRACE(toString(layout));
    const KernelSpec spec = mxSpec(OutDtype::FP8E4M3, layout);
    std::vector<std::vector<float>> y(1, std::vector<float>(64, 1.5f));
    y[0][0] = 500.0f; // group 0: floor(log2 500) = 8 -> s = 1: 500 saturates to 448
    y[0][16] = 3.0f;  // group 1: floor(log2 3) = 1 -> s = 2^-7; 1.5 / 2^-7 = 192
    for (int k = 32; k < 48; ++k)
      y[0][k] = 0.0f; // group 2: amax 0 -> s = 2^-127, byte 0, all-zero q
    y[0][48] = kInf;  // group 3: amax Inf -> 2^127, byte 254
    const auto x = exactInput(spec, y);
    const Result r = run(problemFor(spec, 1), x.data());
    EXPECT_EQ(r.scaleValue[0], 1.0f);
    EXPECT_EQ(r.q[0], 0x7E); // saturated to 448
    EXPECT_EQ(r.q[1], floatToE4M3(1.5f));
    EXPECT_EQ(r.scaleValue[1], std::ldexp(1.0f, -7));
    EXPECT_EQ(r.q[17], floatToE4M3(192.0f));
    EXPECT_EQ(r.scaleValue[2], std::ldexp(1.0f, -127));
    for (int k = 32; k < 48; ++k)
      EXPECT_EQ(r.q[k], 0) << k;
    EXPECT_EQ(r.scaleValue[3], std::ldexp(1.0f, 127));
    EXPECT_EQ(r.q[48], 0x7E); // Inf / 2^127 saturates
    EXPECT_EQ(r.scalePreRound[0], 500.0f / 256.0f);
    if (layout != ScaleLayout::Row) {
      EXPECT_EQ(r.scales[scaleOffset(spec, 1, 0, 0, 0)], 127);
      EXPECT_EQ(r.scales[scaleOffset(spec, 1, 0, 0, 1)], 120);
      EXPECT_EQ(r.scales[scaleOffset(spec, 1, 0, 0, 2)], 0);
      EXPECT_EQ(r.scales[scaleOffset(spec, 1, 0, 0, 3)], 254);
    } else {
      EXPECT_EQ(scaleAt(r, 8), std::ldexp(1.0f, -127)); // the fp32 power of two, subnormal
    }
  }
}

TEST(Reference, CeilKeepsMinScaleAndNeverWritesByte255) {
  KernelSpec spec = mxSpec(OutDtype::FP8E4M3, ScaleLayout::Bytes);
  spec.scaleRounding = ScaleRounding::Ceil;
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 0.0f));
  y[0][16] = kInf; // group 1
  const auto x = exactInput(spec, y);
  const Result r = run(problemFor(spec, 1), x.data());
  EXPECT_EQ(r.scales[0], 110); // all-zero e4m3 group: 2^-17 (MIN_SCALE rounded up)
  EXPECT_EQ(r.scales[1], 254); // Inf amax: 2^127, not 255
  KernelSpec e5m2 = spec;
  e5m2.outDtype = OutDtype::FP8E5M2;
  const Result r5 = run(problemFor(e5m2, 1), exactInput(e5m2, y).data());
  EXPECT_EQ(r5.scales[0], 103); // 2^-24
}

// min_scale (the scale's floor as a spec field): code that floors amax at eps
// before dividing by QMAX, fl(max(amax, eps) / QMAX), gets the same scales as
// max(fl(amax / QMAX), fl(eps / QMAX)), division by QMAX being monotone.
TEST(Reference, MinScaleFieldFloorsTheScaleAsAnAmaxFloorWould) {
  for (OutDtype out : {OutDtype::FP8E4M3, OutDtype::INT8}) {
    KernelSpec spec = smallSpec(out);
    const float eps = 1e-10f;
    const float qmax = quantMax(out);
    spec.minScale = eps / qmax;
    ASSERT_FALSE(bool(spec.validate()));
    // One row per amax: around eps, far below and far above it, and zero.
    const float amaxes[] = {
        0.0f,  1e-30f, 1e-12f, std::nextafter(eps, 0.0f), eps, std::nextafter(eps, 1.0f), 1.5e-10f,
        3e-9f, 0.75f,  448.0f};
    std::vector<std::vector<float>> y;
    for (float a : amaxes) {
      std::vector<float> row(64, a / 2);
      row[7] = -a;
      row[40] = a; // group 2 of 4
      y.push_back(row);
    }
    const auto x = exactInput(spec, y);
    const Result r = run(problemFor(spec, static_cast<int64_t>(y.size())), x.data());
    for (size_t t = 0; t < y.size(); ++t) {
      const float a = amaxes[t];
      const float expected = std::fmax(a, eps) / qmax; // what the user's code computes
      for (int j : {0, 2}) {
        SCOPED_TRACE(std::string(toString(out)) + " amax " + std::to_string(a));
        const float got = r.scaleValue[t * 4 + j];
        EXPECT_EQ(got, expected);
        const int64_t col = t * spec.hidden + j * 16 + (j == 0 ? 7 : 8);
        EXPECT_EQ(r.preRound[col], (j == 0 ? -a : a) / expected);
      }
    }
    // The default floor would have given these groups MIN_SCALE instead.
    EXPECT_NE(r.scaleValue[0], minScale(out));
  }
}

TEST(Reference, MinScaleFieldWithPowerOfTwoScales) {
  KernelSpec spec = smallSpec(OutDtype::FP8E4M3, ScaleLayout::ColTma);
  spec.ue8m0 = true;
  spec.minScale = 0x1.f6a246p-43f; // fl32(1e-10 / 448): its power-of-two ceiling is 2^-42
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 0.0f));
  y[0][20] = 3.0f; // group 1: 3 / 448 -> 2^-7
  const auto x = exactInput(spec, y);
  const Result r = run(problemFor(spec, 1), x.data());
  EXPECT_EQ(r.scaleValue[0], 0x1p-42f);
  EXPECT_EQ(r.scaleValue[1], 0x1p-7f);
  EXPECT_EQ(r.q[20], floatToE4M3(3.0f * 128.0f));
  EXPECT_EQ(r.q[0], 0);
}

TEST(Reference, BytesLayoutIsOneByteRowMajor) {
  KernelSpec spec = mxSpec(OutDtype::FP8E4M3, ScaleLayout::Bytes);
  spec.masked = true;
  const int64_t T = 5;
  EXPECT_EQ(scaleBufferBytes(spec, T), T * 4);
  EXPECT_EQ(scaleBufferBytes(spec, T, 3), 3 * T * 4);
  EXPECT_EQ(scaleOffset(spec, T, 0, 2, 3), 2 * 4 + 3);
  EXPECT_EQ(scaleOffset(spec, T, 1, 2, 3), T * 4 + 2 * 4 + 3);
  Problem p = problemFor(spec, T);
  p.numExperts = 2;
  p.maskedM = {5, 3};
  const auto x = makeInput(spec, T, p.ldx, 2, 9);
  const Result r = run(p, x.data());
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t t = 0; t < p.maskedM[e]; ++t)
      for (int64_t j = 0; j < 4; ++j)
        EXPECT_EQ(r.scales[scaleOffset(spec, T, e, t, j)],
                  std::ilogb(r.scaleValue[(e * T + t) * 4 + j]) + 127);
  EXPECT_EQ(r.scales[scaleOffset(spec, T, 1, 4, 0)], p.poison); // past masked_m
}

TEST(Reference, RejectsFloorWithoutUe8m0OrWithInt8) {
  std::vector<uint8_t> x(1 << 12);
  KernelSpec spec = mxSpec(OutDtype::FP8E4M3, ScaleLayout::Row);
  spec.ue8m0 = false;
  EXPECT_THROW(run(problemFor(spec, 1), x.data()), std::invalid_argument);
  spec = mxSpec(OutDtype::INT8, ScaleLayout::Row);
  EXPECT_THROW(run(problemFor(spec, 1), x.data()), std::invalid_argument);
  spec = smallSpec(OutDtype::FP8E4M3, ScaleLayout::Bytes);
  spec.ue8m0 = false;
  EXPECT_THROW(run(problemFor(spec, 1), x.data()), std::invalid_argument);
}

// ---- compare ------------------------------------------------------------------------

struct Fixture {
  Problem problem;
  std::vector<uint8_t> x;
  Result ref;
};

Fixture randomFixture(ScaleLayout layout, OutDtype out = OutDtype::FP8E4M3) {
  Fixture f;
  f.problem = problemFor(smallSpec(out, layout), 5);
  f.x = makeInput(f.problem.spec, 5, f.problem.ldx, 1, 1);
  f.ref = run(f.problem, f.x.data());
  return f;
}

TEST(Compare, AcceptsTheReferenceItself) {
  for (ScaleLayout layout :
       {ScaleLayout::Row, ScaleLayout::Col, ScaleLayout::ColTma, ScaleLayout::Ue8m0Packed}) {
    const Fixture f = randomFixture(layout);
    const CompareReport rep = compare(f.problem, f.ref, f.ref.q.data(), f.ref.scales.data());
    EXPECT_TRUE(rep.ok()) << rep.summary();
    EXPECT_EQ(rep.elements, 5 * 64);
    EXPECT_EQ(rep.scales, 5 * 4);
    EXPECT_EQ(rep.allowanceUsed, 0);
    EXPECT_EQ(rep.firstMismatch, "");
    EXPECT_EQ(rep.untouchedBytes, layout == ScaleLayout::ColTma        ? 3 * 4 * 4
                                  : layout == ScaleLayout::Ue8m0Packed ? 3 * 4
                                                                       : 0);
  }
}

TEST(Compare, RejectsOneChangedValueAndNamesIt) {
  const Fixture f = randomFixture(ScaleLayout::Row);
  std::vector<uint8_t> q = f.ref.q;
  const int64_t index = 2 * 64 + 17; // t 2, column 17, group 1
  q[index] = q[index] == 0x7E ? 0x7D : static_cast<uint8_t>(q[index] + 1);
  const CompareReport rep = compare(f.problem, f.ref, q.data(), f.ref.scales.data());
  EXPECT_FALSE(rep.ok());
  EXPECT_EQ(rep.mismatches, 1);
  EXPECT_EQ(rep.scaleMismatches, 0);
  EXPECT_NE(rep.firstMismatch.find("t 2"), std::string::npos) << rep.firstMismatch;
  EXPECT_NE(rep.firstMismatch.find("column 17"), std::string::npos) << rep.firstMismatch;
  EXPECT_NE(rep.firstMismatch.find("group 1"), std::string::npos) << rep.firstMismatch;
  EXPECT_NE(rep.summary().find("MISMATCH"), std::string::npos);
}

TEST(Compare, AnyNaNCodeMatchesAnyNaNCode) {
  const KernelSpec spec = smallSpec();
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 1.0f));
  y[0][0] = kNaN;
  const Fixture f{problemFor(spec, 1), exactInput(spec, y), {}};
  const Result ref = run(f.problem, f.x.data());
  std::vector<uint8_t> q = ref.q;
  q[0] = q[0] == 0x7F ? 0xFF : 0x7F;
  EXPECT_TRUE(compare(f.problem, ref, q.data(), ref.scales.data()).ok());
  q[0] = 0x7E;
  EXPECT_FALSE(compare(f.problem, ref, q.data(), ref.scales.data()).ok());
}

TEST(Compare, ScalesWithinOneMillionthPass) {
  const Fixture f = randomFixture(ScaleLayout::Col);
  std::vector<uint8_t> scales = f.ref.scales;
  const int64_t off = scaleOffset(f.problem.spec, 5, 0, 1, 2);
  float s = scaleAt(f.ref, off);
  const float close = s * (1.0f + 5e-7f);
  ASSERT_NE(close, s);
  std::memcpy(scales.data() + off, &close, 4);
  CompareReport rep = compare(f.problem, f.ref, f.ref.q.data(), scales.data());
  EXPECT_TRUE(rep.ok()) << rep.summary();
  const float far = s * (1.0f + 3e-6f);
  std::memcpy(scales.data() + off, &far, 4);
  rep = compare(f.problem, f.ref, f.ref.q.data(), scales.data());
  EXPECT_EQ(rep.scaleMismatches, 1);
  EXPECT_NE(rep.firstMismatch.find("t 1, group 2"), std::string::npos) << rep.firstMismatch;
}

TEST(Compare, AllowsOneStepOnlyAtARoundingBoundary) {
  KernelSpec spec = smallSpec();
  spec.ue8m0 = true;
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 1.0f));
  y[0][0] = 300.0f;  // s = 1
  y[0][1] = 1.0625f; // the midpoint of 1.0 and 1.125 -> 0x38
  y[0][2] = 1.1f;    // not near a boundary -> 0x39
  const Fixture f{problemFor(spec, 1), exactInput(spec, y), {}};
  const Result ref = run(f.problem, f.x.data());
  ASSERT_EQ(ref.scaleValue[0], 1.0f);
  ASSERT_EQ(ref.q[1], 0x38);
  std::vector<uint8_t> q = ref.q;
  q[1] = 0x39; // the other neighbour of the boundary
  CompareReport rep = compare(f.problem, ref, q.data(), ref.scales.data());
  EXPECT_TRUE(rep.ok()) << rep.summary();
  EXPECT_EQ(rep.allowanceUsed, 1);
  q[1] = 0x37; // two boundaries away
  EXPECT_EQ(compare(f.problem, ref, q.data(), ref.scales.data()).mismatches, 1);
  q = ref.q;
  q[2] = 0x38; // 1.1 is 2% from the boundary 1.0625: no allowance
  EXPECT_EQ(compare(f.problem, ref, q.data(), ref.scales.data()).mismatches, 1);
}

TEST(Compare, Int8AllowanceAtHalfIntegers) {
  const KernelSpec spec = smallSpec(OutDtype::INT8);
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 0.0f));
  y[0][0] = 127.0f; // s = 1
  y[0][1] = 2.5f;
  const Fixture f{problemFor(spec, 1), exactInput(spec, y), {}};
  const Result ref = run(f.problem, f.x.data());
  ASSERT_EQ(ref.scaleValue[0], 1.0f);
  ASSERT_EQ(ref.q[1], 2);
  std::vector<uint8_t> q = ref.q;
  q[1] = 3;
  CompareReport rep = compare(f.problem, ref, q.data(), ref.scales.data());
  EXPECT_TRUE(rep.ok()) << rep.summary();
  EXPECT_EQ(rep.allowanceUsed, 1);
  q[1] = 1;
  EXPECT_FALSE(compare(f.problem, ref, q.data(), ref.scales.data()).ok());
}

TEST(Compare, Ue8m0ScaleMayFlipOnlyNearAPowerOfTwo) {
  for (ScaleLayout layout : {ScaleLayout::Row, ScaleLayout::Ue8m0Packed}) {
    SCOPED_TRACE(toString(layout));
    KernelSpec spec = smallSpec(OutDtype::FP8E4M3, layout);
    spec.ue8m0 = true;
    std::vector<std::vector<float>> y(1, std::vector<float>(64, 1.0f));
    y[0][0] = 448.0f;  // group 0: pre-rounding scale exactly 1 -> s = 1; the device may give 2
    y[0][16] = 300.0f; // group 1: 0.67 -> s = 1, far from a power of two
    const Fixture f{problemFor(spec, 1), exactInput(spec, y), {}};
    const Result ref = run(f.problem, f.x.data());
    ASSERT_EQ(ref.scaleValue[0], 1.0f);
    // A device result computed with s = 2 for group 0.
    std::vector<uint8_t> q = ref.q;
    std::vector<uint8_t> scales = ref.scales;
    for (int k = 0; k < 16; ++k)
      q[k] = floatToE4M3(y[0][k] / 2.0f);
    const int64_t off0 = scaleOffset(spec, 1, 0, 0, 0);
    if (layout == ScaleLayout::Row) {
      const float two = 2.0f;
      std::memcpy(scales.data() + off0, &two, 4);
    } else {
      scales[off0] = 128;
    }
    CompareReport rep = compare(f.problem, ref, q.data(), scales.data());
    EXPECT_TRUE(rep.ok()) << rep.summary();
    EXPECT_EQ(rep.scaleAllowanceUsed, 1);
    // The scale flip is allowed, values left at s = 1 are not.
    rep = compare(f.problem, ref, ref.q.data(), scales.data());
    EXPECT_GT(rep.mismatches, 0);
    // Two powers of two off is never allowed, even with matching values.
    for (int k = 0; k < 16; ++k)
      q[k] = floatToE4M3(y[0][k] / 4.0f);
    if (layout == ScaleLayout::Row) {
      const float four = 4.0f;
      std::memcpy(scales.data() + off0, &four, 4);
    } else {
      scales[off0] = 129;
    }
    EXPECT_EQ(compare(f.problem, ref, q.data(), scales.data()).scaleMismatches, 1);
    // Group 1 may not flip.
    scales = ref.scales;
    const int64_t off1 = scaleOffset(spec, 1, 0, 0, 1);
    if (layout == ScaleLayout::Row) {
      const float two = 2.0f;
      std::memcpy(scales.data() + off1, &two, 4);
    } else {
      scales[off1] = 128;
    }
    rep = compare(f.problem, ref, ref.q.data(), scales.data());
    EXPECT_EQ(rep.scaleMismatches, 1);
    EXPECT_NE(rep.firstMismatch.find("group 1"), std::string::npos) << rep.firstMismatch;
  }
}

TEST(Compare, FloorScaleMayDropOnlyBelowAPowerOfTwo) {
  const KernelSpec spec = mxSpec(OutDtype::FP8E4M3, ScaleLayout::Bytes);
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 1.0f));
  y[0][0] = 256.0f;  // group 0: amax exactly 2^8 -> s = 1; a device a hair below gives 1/2
  y[0][16] = 300.0f; // group 1: far from a power of two
  const Problem p = problemFor(spec, 1);
  const auto x = exactInput(spec, y);
  const Result ref = run(p, x.data());
  ASSERT_EQ(ref.scaleValue[0], 1.0f);
  std::vector<uint8_t> q = ref.q;
  std::vector<uint8_t> scales = ref.scales;
  for (int k = 0; k < 16; ++k)
    q[k] = floatToE4M3(y[0][k] / 0.5f);
  scales[0] = 126; // 1/2
  CompareReport rep = compare(p, ref, q.data(), scales.data());
  EXPECT_TRUE(rep.ok()) << rep.summary();
  EXPECT_EQ(rep.scaleAllowanceUsed, 1);
  // Up a step is not floor's neighbour.
  for (int k = 0; k < 16; ++k)
    q[k] = floatToE4M3(y[0][k] / 2.0f);
  scales[0] = 128;
  EXPECT_EQ(compare(p, ref, q.data(), scales.data()).scaleMismatches, 1);
  // Group 1 may not move.
  scales = ref.scales;
  scales[1] = static_cast<uint8_t>(ref.scales[1] - 1);
  EXPECT_EQ(compare(p, ref, ref.q.data(), scales.data()).scaleMismatches, 1);
}

TEST(Compare, BytesLayoutComparesBytes) {
  Problem p = problemFor(mxSpec(OutDtype::FP8E5M2, ScaleLayout::Bytes), 5);
  const auto x = makeInput(p.spec, 5, p.ldx, 1, 1);
  const Result ref = run(p, x.data());
  CompareReport rep = compare(p, ref, ref.q.data(), ref.scales.data());
  EXPECT_TRUE(rep.ok()) << rep.summary();
  EXPECT_EQ(rep.scales, 5 * 4);
  EXPECT_EQ(rep.untouchedBytes, 0);
  std::vector<uint8_t> scales = ref.scales;
  scales[2 * 4 + 3] ^= 0x10;
  rep = compare(p, ref, ref.q.data(), scales.data());
  EXPECT_EQ(rep.scaleMismatches, 1);
  EXPECT_NE(rep.firstMismatch.find("t 2, group 3"), std::string::npos) << rep.firstMismatch;
}

TEST(Compare, RejectsWritesToMaskedRowsAndPadding) {
  KernelSpec spec = smallSpec(OutDtype::FP8E4M3, ScaleLayout::Ue8m0Packed);
  spec.masked = true;
  Problem p = problemFor(spec, 5);
  p.numExperts = 2;
  p.maskedM = {2, 5};
  const auto x = makeInput(spec, 5, p.ldx, 2, 8);
  const Result ref = run(p, x.data());
  CompareReport rep = compare(p, ref, ref.q.data(), ref.scales.data());
  EXPECT_TRUE(rep.ok()) << rep.summary();
  EXPECT_EQ(rep.elements, 7 * 64);
  // q row 3 of expert 0 is past masked_m[0] = 2.
  std::vector<uint8_t> q = ref.q;
  q[3 * 64 + 9] = 0;
  rep = compare(p, ref, q.data(), ref.scales.data());
  EXPECT_EQ(rep.untouchedMismatches, 1);
  EXPECT_NE(rep.firstMismatch.find("t 3, column 9"), std::string::npos) << rep.firstMismatch;
  // A padding row's word of expert 1 written as zero (masked mode must not).
  std::vector<uint8_t> scales = ref.scales;
  const int64_t pad = scaleOffset(spec, 5, 1, 6, 0);
  ASSERT_EQ(scales[pad], 0xAB);
  scales[pad] = 0;
  rep = compare(p, ref, ref.q.data(), scales.data());
  EXPECT_EQ(rep.untouchedMismatches, 1);
  EXPECT_NE(rep.firstMismatch.find("padding row"), std::string::npos) << rep.firstMismatch;
}

TEST(Compare, RejectsNonZeroPaddingScales) {
  const Fixture f = randomFixture(ScaleLayout::ColTma);
  std::vector<uint8_t> scales = f.ref.scales;
  scales[scaleOffset(f.problem.spec, 5, 0, 7, 3) + 3] = 0x3F;
  const CompareReport rep = compare(f.problem, f.ref, f.ref.q.data(), scales.data());
  EXPECT_EQ(rep.untouchedMismatches, 1);
  EXPECT_NE(rep.firstMismatch.find("t 7, group 3: a padding row"), std::string::npos)
      << rep.firstMismatch;
}

// ---- fp4_e2m1, NVFP4, MXFP4, swizzled_128x4 (docs/contract.md section 8) -------------

TEST(Formats, E2M1RoundsToNearestEvenAndSaturates) {
  const float values[] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (int c = 0; c < 16; ++c) {
    const float v = e2m1ToFloat(static_cast<uint8_t>(c));
    EXPECT_EQ(std::fabs(v), values[c & 7]) << c;
    EXPECT_EQ(std::signbit(v), c >= 8) << c;
    EXPECT_EQ(floatToE2M1(v), c) << "code " << c;
  }
  // The contract's examples: ties to even.
  EXPECT_EQ(floatToE2M1(0.25f), 0x0);
  EXPECT_EQ(floatToE2M1(0.75f), 0x2); // 1
  EXPECT_EQ(floatToE2M1(2.5f), 0x4);  // 2
  EXPECT_EQ(floatToE2M1(5.0f), 0x6);  // 4
  EXPECT_EQ(floatToE2M1(1.25f), 0x2); // 1
  EXPECT_EQ(floatToE2M1(1.75f), 0x4); // 2
  EXPECT_EQ(floatToE2M1(3.5f), 0x6);  // 4
  EXPECT_EQ(floatToE2M1(std::nextafter(0.25f, 1.0f)), 0x1);
  EXPECT_EQ(floatToE2M1(std::nextafter(5.0f, 6.0f)), 0x7);
  EXPECT_EQ(floatToE2M1(std::nextafter(5.0f, 0.0f)), 0x6);
  EXPECT_EQ(floatToE2M1(-2.5f), 0xC);
  // Saturation to +-6, infinities included; -0 and small negatives are 0x8.
  EXPECT_EQ(floatToE2M1(6.0f), 0x7);
  EXPECT_EQ(floatToE2M1(7.0f), 0x7);
  EXPECT_EQ(floatToE2M1(1e30f), 0x7);
  EXPECT_EQ(floatToE2M1(-100.0f), 0xF);
  EXPECT_EQ(floatToE2M1(kInf), 0x7);
  EXPECT_EQ(floatToE2M1(-kInf), 0xF);
  EXPECT_EQ(floatToE2M1(-0.0f), 0x8);
  EXPECT_EQ(floatToE2M1(-0.1f), 0x8);
  EXPECT_EQ(floatToE2M1(std::numeric_limits<float>::denorm_min()), 0x0);
  EXPECT_EQ(quantize(OutDtype::FP4E2M1, 3.2f), 0x5);
  EXPECT_EQ(dequantize(OutDtype::FP4E2M1, 0xD), -3.0f);
  EXPECT_FALSE(isNaNCode(OutDtype::FP4E2M1, 0xF));
}

TEST(Formats, CodeAtReadsNibblesLowFirst) {
  const uint8_t q[] = {0xC2, 0x07};
  EXPECT_EQ(codeAt(OutDtype::FP4E2M1, q, 0), 0x2);
  EXPECT_EQ(codeAt(OutDtype::FP4E2M1, q, 1), 0xC);
  EXPECT_EQ(codeAt(OutDtype::FP4E2M1, q, 2), 0x7);
  EXPECT_EQ(codeAt(OutDtype::FP4E2M1, q, 3), 0x0);
  EXPECT_EQ(codeAt(OutDtype::FP8E4M3, q, 1), 0x07);
}

KernelSpec fp4Spec(bool nvfp4, ScaleLayout layout) {
  KernelSpec spec;
  spec.hidden = 64;
  spec.groupSize = nvfp4 ? 16 : 32;
  spec.inDtype = InDtype::FP32;
  spec.outDtype = OutDtype::FP4E2M1;
  spec.ue8m0 = !nvfp4;
  spec.scaleLayout = layout;
  return spec;
}

TEST(Swizzle, IndexFormulaWithPadding) {
  // NG = 5 groups: NGp = 8, two 4-column tiles a 128-row band.
  EXPECT_EQ(swizzledOffset(0, 0, 5), 0);
  EXPECT_EQ(swizzledOffset(0, 1, 5), 1);
  EXPECT_EQ(swizzledOffset(0, 3, 5), 3);
  EXPECT_EQ(swizzledOffset(0, 4, 5), 512);
  EXPECT_EQ(swizzledOffset(1, 0, 5), 16);
  EXPECT_EQ(swizzledOffset(31, 0, 5), 496);
  EXPECT_EQ(swizzledOffset(32, 0, 5), 4);
  EXPECT_EQ(swizzledOffset(97, 2, 5), 1 * 16 + 3 * 4 + 2);
  EXPECT_EQ(swizzledOffset(127, 3, 5), 511);
  EXPECT_EQ(swizzledOffset(128, 0, 5), 1024);
  EXPECT_EQ(swizzledOffset(130, 5, 5), 3 * 512 + 2 * 16 + 1);
  // Every (t, j) of the padded 256 x 8 grid has its own byte.
  std::set<int64_t> seen;
  for (int64_t t = 0; t < 256; ++t)
    for (int64_t j = 0; j < 8; ++j)
      seen.insert(swizzledOffset(t, j, 5));
  EXPECT_EQ(seen.size(), 2048u);
  EXPECT_EQ(*seen.rbegin(), 2047);
  KernelSpec spec = fp4Spec(true, ScaleLayout::Swizzled128x4);
  spec.hidden = 80; // NG = 5
  EXPECT_EQ(scaleBufferBytes(spec, 129), 256 * 8);
  EXPECT_EQ(scaleBufferBytes(spec, 128, 3), 3 * 128 * 8);
  EXPECT_EQ(scaleBufferBytes(spec, 1), 128 * 8);
  EXPECT_EQ(scaleOffset(spec, 3, 1, 2, 4), 128 * 8 + swizzledOffset(2, 4, 5));
  EXPECT_EQ(outputBytes(spec, 3, 2), 2 * 3 * 40);
}

TEST(Reference, Nvfp4ScaleOrderOfEvaluation) {
  // sf = e4m3(min(gs * amax / 6, 448)); r = 1 / (sf / gs); q = e2m1(y * r).
  const KernelSpec spec = fp4Spec(true, ScaleLayout::Bytes);
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 0.0f));
  const float amax[4] = {6.0f, 5.1f, 0.7f, 3.3f};
  for (int j = 0; j < 4; ++j)
    for (int k = 0; k < 16; ++k)
      y[0][j * 16 + k] = amax[j] * static_cast<float>(k % 2 ? -(k + 1) : k + 1) / 16.0f;
  const auto x = exactInput(spec, y);
  int differ = 0;
  for (float tensorAmax : {7.3f, 1.1f, 13.7f, 0.37f, 5.9f, 101.3f, 2.2f, 9.9f}) {
    Problem p = problemFor(spec, 1);
    // vLLM's global scale of a tensor whose amax is tensorAmax.
    const float gs = 448.0f * 6.0f / tensorAmax;
    p.globalScale = gs;
    const Result r = run(p, x.data());
    ASSERT_EQ(r.q.size(), 32u);
    ASSERT_EQ(r.scales.size(), 4u);
    for (int j = 0; j < 4; ++j) {
      volatile float product = gs * amax[j];
      const float pre = std::fmin(product / 6.0f, 448.0f);
      EXPECT_EQ(r.scalePreRound[j], pre) << j;
      const uint8_t sf = floatToE4M3(pre);
      EXPECT_EQ(r.scales[j], sf) << j;
      const float sfv = e4m3ToFloat(sf);
      EXPECT_EQ(r.scaleValue[j], sfv);
      volatile float quotient = sfv / gs;
      const float rcp = 1.0f / quotient;
      differ += rcp != gs / sfv; // 1 / (sf / gs) is not gs / sf in general
      for (int k = 0; k < 16; ++k) {
        const int64_t i = j * 16 + k;
        EXPECT_EQ(r.preRound[i], y[0][i] * rcp) << i;
        EXPECT_EQ(r.yValue[i], y[0][i]) << i;
        EXPECT_EQ(codeAt(OutDtype::FP4E2M1, r.q.data(), i), floatToE2M1(y[0][i] * rcp)) << i;
      }
    }
  }
  EXPECT_GT(differ, 0); // so the order checked above matters
}

TEST(Reference, Nvfp4HandComputedBytes) {
  // gs = 1: a group whose amax is 6 has sf = 1 (0x38) and q = e2m1(y).
  const KernelSpec spec = fp4Spec(true, ScaleLayout::Bytes);
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 0.0f));
  const float g0[16] = {1.0f,  -2.0f, 0.25f, 0.75f,  2.5f, 5.0f,  -6.0f, 6.0f,
                        -0.0f, 0.0f,  1.25f, -1.75f, 3.5f, -0.5f, 4.0f,  3.0f};
  for (int k = 0; k < 16; ++k)
    y[0][k] = g0[k];
  // Group 1: all zeros of both signs (sf = 0, r = 0: zeros keep their sign).
  for (int k = 0; k < 16; ++k)
    y[0][16 + k] = k % 2 ? -0.0f : 0.0f;
  // Group 2: amax 6 * 448 saturates the block scale at 448 (0x7E).
  for (int k = 0; k < 16; ++k)
    y[0][32 + k] = k == 3 ? 6.0f * 448.0f * 4.0f : 100.0f;
  // Group 3: amax 6 / 512 * 3: sf = 3 * 2^-9, an E4M3 subnormal (0x03).
  for (int k = 0; k < 16; ++k)
    y[0][48 + k] = (k == 0 ? 6.0f * 3.0f : 1.0f) / 512.0f;
  Problem p = problemFor(spec, 1);
  p.globalScale = 1.0f;
  const auto x = exactInput(spec, y);
  const Result r = run(p, x.data());
  EXPECT_EQ(r.scales[0], 0x38);
  EXPECT_EQ(r.scales[1], 0x00);
  EXPECT_EQ(r.scales[2], 0x7E);
  EXPECT_EQ(r.scales[3], 0x03);
  const uint8_t q0[8] = {0xC2, 0x20, 0x64, 0x7F, 0x08, 0xC2, 0x96, 0x56};
  for (int b = 0; b < 8; ++b)
    EXPECT_EQ(r.q[b], q0[b]) << "byte " << b;
  for (int b = 8; b < 16; ++b)
    EXPECT_EQ(r.q[b], 0x80) << "byte " << b; // +0 low, -0 high
  // 448: r = 1 / 448; the huge value saturates to 6, 100 / 448 rounds to 0.
  EXPECT_EQ(codeAt(OutDtype::FP4E2M1, r.q.data(), 32 + 3), 0x7);
  EXPECT_EQ(codeAt(OutDtype::FP4E2M1, r.q.data(), 32 + 0), 0x0);
  // Subnormal scale: r = 1 / (3 * 2^-9); y = 18 / 512 gives 6, 1 / 512 gives 1/3 -> 0.5.
  EXPECT_EQ(codeAt(OutDtype::FP4E2M1, r.q.data(), 48), 0x7);
  EXPECT_EQ(codeAt(OutDtype::FP4E2M1, r.q.data(), 49), 0x1);
}

TEST(Reference, Nvfp4GlobalScaleDrivesTheBlockScale) {
  const KernelSpec spec = fp4Spec(true, ScaleLayout::Bytes);
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 1.0f));
  const auto x = exactInput(spec, y);
  Problem p = problemFor(spec, 1);
  // amax 1: gs = 448 * 6 gives sf = 448; gs = 6 * 2^-9 gives the smallest
  // subnormal, 2^-9; half of that rounds (to even) to 0.
  for (auto [gs, byte] : {std::pair<float, uint8_t>{448.0f * 6.0f, 0x7E},
                          {448.0f * 6.0f * 1000.0f, 0x7E},
                          {6.0f / 512.0f, 0x01},
                          {3.0f / 512.0f, 0x00},
                          {3.1f / 512.0f, 0x01}}) {
    p.globalScale = gs;
    const Result r = run(p, x.data());
    EXPECT_EQ(r.scales[0], byte) << gs;
    if (byte == 0)
      EXPECT_EQ(r.q[0], 0x00) << gs;
  }
}

TEST(Reference, Mxfp4ScalesCeilAndFloor) {
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 0.0f));
  // Group 0: amax 6; group 1: all zero.
  for (int k = 0; k < 32; ++k)
    y[0][k] = k == 5 ? -6.0f : 1.0f;
  for (ScaleRounding rounding : {ScaleRounding::Ceil, ScaleRounding::Floor}) {
    KernelSpec spec = fp4Spec(false, ScaleLayout::Bytes);
    spec.scaleRounding = rounding;
    Problem p = problemFor(spec, 1);
    const auto x = exactInput(spec, y);
    const Result r = run(p, x.data());
    EXPECT_EQ(r.scales[0], 127) << toString(rounding); // s = 1
    EXPECT_EQ(r.scales[1], 0) << toString(rounding);   // 2^-127, zero group
    EXPECT_EQ(r.scaleValue[1], std::ldexp(1.0f, -127));
    EXPECT_EQ(codeAt(OutDtype::FP4E2M1, r.q.data(), 5), 0xF);
    EXPECT_EQ(codeAt(OutDtype::FP4E2M1, r.q.data(), 0), 0x2);
    for (int i = 16; i < 32; ++i)
      EXPECT_EQ(r.q[i], 0x00) << i;
  }
  // amax 7: ceil takes 2 (7 / 2 = 3.5 -> 4); floor takes 2^(2 - 2) = 1 and saturates.
  y[0][5] = 7.0f;
  for (ScaleRounding rounding : {ScaleRounding::Ceil, ScaleRounding::Floor}) {
    KernelSpec spec = fp4Spec(false, ScaleLayout::Bytes);
    spec.scaleRounding = rounding;
    Problem p = problemFor(spec, 1);
    const auto x = exactInput(spec, y);
    const Result r = run(p, x.data());
    const bool ceil = rounding == ScaleRounding::Ceil;
    EXPECT_EQ(r.scales[0], ceil ? 128 : 127);
    EXPECT_EQ(codeAt(OutDtype::FP4E2M1, r.q.data(), 5), ceil ? 0x6 : 0x7);
  }
  // A tiny amax: ceil's 2^ceil(log2(amax / 6)) reaches down to 2^-127.
  std::vector<std::vector<float>> tiny(1, std::vector<float>(64, 0.0f));
  tiny[0][0] = std::ldexp(6.0f, -127); // exactly 6 * 2^-127: s = 2^-127
  tiny[0][32] = std::ldexp(6.0f, -126);
  {
    KernelSpec spec = fp4Spec(false, ScaleLayout::Bytes);
    Problem p = problemFor(spec, 1);
    std::vector<uint8_t> x(2 * 64 * 4);
    for (int i = 0; i < 64; ++i) {
      storeInput(InDtype::FP32, x.data(), i, 64.0f);
      storeInput(InDtype::FP32, x.data(), 64 + i, tiny[0][i] / 64.0f);
    }
    const Result r = run(p, x.data());
    EXPECT_EQ(r.scales[0], 0);
    EXPECT_EQ(r.scales[1], 1);
    EXPECT_EQ(codeAt(OutDtype::FP4E2M1, r.q.data(), 0), 0x7);
    EXPECT_EQ(codeAt(OutDtype::FP4E2M1, r.q.data(), 32), 0x7);
  }
}

TEST(Reference, SwizzledPaddingIsZeroMaskedOrNot) {
  KernelSpec spec = fp4Spec(true, ScaleLayout::Swizzled128x4);
  spec.hidden = 80; // NG = 5, NGp = 8: three padding columns
  for (bool masked : {false, true}) {
    spec.masked = masked;
    Problem p = problemFor(spec, 3);
    p.globalScale = 100.0f;
    p.numExperts = masked ? 2 : 1;
    if (masked)
      p.maskedM = {1, 3};
    const auto x = makeInput(spec, 3, p.ldx, p.numExperts, 5);
    const Result r = run(p, x.data());
    ASSERT_EQ(r.scales.size(), static_cast<size_t>(p.numExperts * 128 * 8));
    for (int64_t e = 0; e < p.numExperts; ++e)
      for (int64_t t = 0; t < 128; ++t)
        for (int64_t j = 0; j < 8; ++j) {
          const uint8_t b = r.scales[scaleOffset(spec, 3, e, t, j)];
          const int64_t live = masked ? p.maskedM[e] : 3;
          if (t >= 3 || j >= 5)
            EXPECT_EQ(b, 0) << e << " " << t << " " << j;
          else if (t >= live)
            EXPECT_EQ(b, 0xAB) << e << " " << t << " " << j;
          else
            EXPECT_EQ(b, floatToE4M3(r.scalePreRound[(e * 3 + t) * 5 + j]));
        }
  }
}

TEST(Reference, RejectsInconsistentFp4Problems) {
  Problem p = problemFor(fp4Spec(true, ScaleLayout::Bytes), 2);
  const auto x = makeInput(p.spec, 2, p.ldx, 1, 1);
  for (float gs : {0.0f, -1.0f, kInf, kNaN}) {
    p.globalScale = gs;
    EXPECT_THROW(run(p, x.data()), std::invalid_argument) << gs;
  }
  p.globalScale = 1.0f;
  EXPECT_NO_THROW(run(p, x.data()));
  p.spec.groupSize = 32;
  EXPECT_THROW(run(p, x.data()), std::invalid_argument);
}

Fixture fp4Fixture(bool nvfp4, ScaleLayout layout) {
  Fixture f;
  f.problem = problemFor(fp4Spec(nvfp4, layout), 5);
  f.problem.globalScale = 448.0f * 6.0f / 12.0f;
  f.x = makeInput(f.problem.spec, 5, f.problem.ldx, 1, 3);
  f.ref = run(f.problem, f.x.data());
  return f;
}

TEST(Compare, Fp4AcceptsTheReferenceAndFindsAChangedNibble) {
  for (bool nvfp4 : {true, false})
    for (ScaleLayout layout : {ScaleLayout::Bytes, ScaleLayout::Swizzled128x4}) {
      const Fixture f = fp4Fixture(nvfp4, layout);
      CompareReport rep = compare(f.problem, f.ref, f.ref.q.data(), f.ref.scales.data());
      EXPECT_TRUE(rep.ok()) << rep.summary();
      EXPECT_EQ(rep.elements, 5 * 64);
      EXPECT_EQ(rep.scales, 5 * (nvfp4 ? 4 : 2));
      EXPECT_EQ(rep.untouchedBytes,
                layout == ScaleLayout::Bytes ? 0 : 128 * 4 - 5 * (nvfp4 ? 4 : 2));
      std::vector<uint8_t> q = f.ref.q;
      q[2 * 32 + 8] ^= 0x10; // t 2, column 17 (high nibble of byte 8)
      rep = compare(f.problem, f.ref, q.data(), f.ref.scales.data());
      EXPECT_EQ(rep.mismatches, 1);
      EXPECT_NE(rep.firstMismatch.find("t 2, column 17"), std::string::npos) << rep.firstMismatch;
    }
}

TEST(Compare, Nvfp4ScaleMayTakeTheOtherNeighbourOnlyAtAnE4M3Boundary) {
  // amax 6.375, gs 1: gs * amax / 6 = 1.0625, the midpoint of E4M3 1 (0x38)
  // and 1.125 (0x39); ties to even give 0x38.
  const KernelSpec spec = fp4Spec(true, ScaleLayout::Bytes);
  std::vector<std::vector<float>> y(1, std::vector<float>(64, 0.0f));
  for (int k = 0; k < 16; ++k)
    y[0][k] = k == 0 ? 6.375f : 0.75f * static_cast<float>(k % 8);
  for (int k = 16; k < 64; ++k)
    y[0][k] = 1.0f;
  Problem p = problemFor(spec, 1);
  p.globalScale = 1.0f;
  const auto x = exactInput(spec, y);
  const Result ref = run(p, x.data());
  ASSERT_EQ(ref.scales[0], 0x38);
  std::vector<uint8_t> scales = ref.scales;
  scales[0] = 0x39;
  // The device's q under its own scale: y * (1 / 1.125).
  std::vector<uint8_t> q = ref.q;
  for (int k = 0; k < 16; ++k) {
    const uint8_t code = floatToE2M1(y[0][k] * (1.0f / 1.125f));
    q[k / 2] = static_cast<uint8_t>((q[k / 2] & (k % 2 ? 0x0F : 0xF0)) | code << (4 * (k % 2)));
  }
  CompareReport rep = compare(p, ref, q.data(), scales.data());
  EXPECT_TRUE(rep.ok()) << rep.summary();
  EXPECT_EQ(rep.scaleAllowanceUsed, 1);
  // Two steps off, or off where no boundary is near: wrong.
  scales[0] = 0x3A;
  rep = compare(p, ref, q.data(), scales.data());
  EXPECT_EQ(rep.scaleMismatches, 1);
  EXPECT_NE(rep.firstMismatch.find("E4M3 byte 58"), std::string::npos) << rep.firstMismatch;
  scales = ref.scales;
  scales[1] ^= 1;
  rep = compare(p, ref, ref.q.data(), scales.data());
  EXPECT_EQ(rep.scaleMismatches, 1);
}

TEST(Compare, Fp4BoundaryAllowanceAndSwizzledPadding) {
  // y * r = 2.5 exactly (a tie between 2 and 3): either code is accepted.
  KernelSpec spec = fp4Spec(true, ScaleLayout::Swizzled128x4);
  spec.hidden = 80; // NG = 5: columns 5..7 are padding
  std::vector<std::vector<float>> y(1, std::vector<float>(80, 1.0f));
  y[0][0] = 6.0f;
  y[0][1] = 2.5f;
  Problem p = problemFor(spec, 1);
  p.globalScale = 1.0f;
  const auto x = exactInput(spec, y);
  const Result ref = run(p, x.data());
  std::vector<uint8_t> q = ref.q;
  ASSERT_EQ(q[0] >> 4, 0x4);
  q[0] = static_cast<uint8_t>((q[0] & 0x0F) | 0x50);
  CompareReport rep = compare(p, ref, q.data(), ref.scales.data());
  EXPECT_TRUE(rep.ok()) << rep.summary();
  EXPECT_EQ(rep.allowanceUsed, 1);
  // A padding column's byte written: named.
  std::vector<uint8_t> scales = ref.scales;
  scales[scaleOffset(spec, 1, 0, 0, 5)] = 0x38;
  rep = compare(p, ref, ref.q.data(), scales.data());
  EXPECT_EQ(rep.untouchedMismatches, 1);
  EXPECT_NE(rep.firstMismatch.find("padding column"), std::string::npos) << rep.firstMismatch;
  scales = ref.scales;
  scales[scaleOffset(spec, 1, 0, 77, 1)] = 0x38;
  rep = compare(p, ref, ref.q.data(), scales.data());
  EXPECT_EQ(rep.untouchedMismatches, 1);
  EXPECT_NE(rep.firstMismatch.find("t 77, group 1: a padding row"), std::string::npos)
      << rep.firstMismatch;
}

// ---- the template's software conversions, transcribed -------------------------------
//
// templates/conversions.cuh and scales.cuh convert to e2m1 and E8M0 by bit manipulation
// where PTX has no instruction (every target but the family-specific
// Blackwell ones). These are its formulas on the CPU, checked against the
// reference's tables: a kernel whose conversions differ from the contract
// would fail here, without a GPU.

using test::bitsOf;
using test::fromBits;

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

// e2m1Soft: the code of |v| (r = 1) and v's sign in bit 3.
uint32_t templateE2M1(float v) {
  return ((bitsOf(v) >> 28) & 0x8u) | codeOfProduct(v, factorsOf(1.0f));
}

// e4m3Value, for codes 0x00..0x7E.
float templateE4M3Value(uint32_t code) {
  const float normal = fromBits((code << 20) + (120u << 23));
  const float subnormal = static_cast<float>(code & 7u) * 0x1p-9f;
  return code < 8u ? subnormal : normal;
}

// The E8M0 byte of MXFP4 under ceil, from pre in [2^-127, 2^127].
uint32_t templateCeilByte(float pre) {
  const uint32_t b = bitsOf(pre);
  return ((b + 0x007fffffu) >> 23) - (b == 0x00400000u ? 1u : 0u);
}

TEST(TemplateConversions, E2M1MatchesTheReferenceAroundEveryBoundary) {
  // Every value within 64 ulps of each midpoint and code value, both signs,
  // then a sweep of all magnitudes from 2^-30 to 16 in steps of 97 ulps.
  const float marks[] = {0.0f, 0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f, 2.0f,
                         2.5f, 3.0f,  3.5f, 4.0f,  5.0f, 6.0f,  7.0f, 8.0f};
  int64_t checked = 0;
  for (float m : marks)
    for (int d = -64; d <= 64; ++d) {
      const uint32_t b = bitsOf(m);
      if (m == 0.0f && d < 0)
        continue;
      const float v = fromBits(b + static_cast<uint32_t>(d));
      for (float x : {v, -v}) {
        ASSERT_EQ(templateE2M1(x), floatToE2M1(x)) << x;
        ++checked;
      }
    }
  for (uint32_t b = bitsOf(0x1p-30f); b <= bitsOf(16.0f); b += 97) {
    ASSERT_EQ(templateE2M1(fromBits(b)), floatToE2M1(fromBits(b))) << fromBits(b);
    ++checked;
  }
  for (float x : {0.0f, -0.0f, kInf, -kInf, std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::min()})
    EXPECT_EQ(templateE2M1(x), floatToE2M1(x)) << x;
  EXPECT_GT(checked, 1000000);
}

// 2^t rounded to fp32 (flushed to 0 below the normals, as ex2.approx.ftz),
// where the kernel's ex2.approx adds its own error of about 2 ulp.
float ex2Rounded(float t) {
  const float p = static_cast<float>(std::exp2(static_cast<double>(t)));
  return std::fabs(p) < std::numeric_limits<float>::min() ? 0.0f : p;
}

// onePlusExp, with ex2Rounded for ex2.approx.
float templateOnePlusExp(float x) {
  constexpr float kLog2e = 0x1.715476p+0f;
  constexpr float kLog2eLo = 0x1.4ae0cp-26f;
  constexpr float kLn2 = 0x1.62e430p-1f;
  const float t = x * kLog2e;
  const float c = std::fma(x, kLog2eLo, std::fma(x, kLog2e, -t));
  return std::fma(ex2Rounded(t), std::fma(c, kLn2, 1.0f), 1.0f);
}

// How many ulps of 1 + exp(x) `got` lies from it.
double onePlusExpUlps(float got, float x) {
  const double want = 1.0 + std::exp(static_cast<double>(x));
  return std::fabs(got - want) / std::ldexp(1.0, std::ilogb(want) - 23);
}

TEST(TemplateConversions, OnePlusExpIsWithinTwoUlpWhereTheFastPathUsesIt) {
  // The fast path uses it for x = -z below 87 (silu and swiglu send smaller z
  // to the exact path) and for x clamped at 128 (gelu_tanh); every other x
  // must give NaN, which sends the group to the exact path, whose function
  // handles every x.
  double worst = 0.0;
  int64_t checked = 0;
  for (uint64_t b = 0; b <= 0xffffffffull; b += 9973) {
    const float x = fromBits(static_cast<uint32_t>(b));
    if (!(x > -1e30f && x < 88.0f))
      continue;
    worst = std::max(worst, onePlusExpUlps(templateOnePlusExp(x), x));
    ++checked;
  }
  EXPECT_LE(worst, 2.0);
  EXPECT_GT(checked, 200000);
  EXPECT_EQ(templateOnePlusExp(128.0f), kInf); // gelu_tanh's clamp
  EXPECT_EQ(templateOnePlusExp(-1e38f), 1.0f);
  EXPECT_EQ(templateOnePlusExp(0.0f), 2.0f);
  // Where the fast path would be wrong, NaN (never a finite number or -inf).
  for (float x : {kInf, -kInf, -3e38f, -std::numeric_limits<float>::max()})
    EXPECT_TRUE(std::isnan(templateOnePlusExp(x))) << x;
}

// onePlusExpOfBf16 (bf16 x only), with ex2Rounded for ex2.approx.
float templateOnePlusExpOfBf16(float x) {
  constexpr float kLog2eHi = 0x1.7154p+0f;
  constexpr float kLog2eHiRestLn2 = 0x1.480fb6p-18f;
  return std::fma(ex2Rounded(x * kLog2eHi), std::fma(x, kLog2eHiRestLn2, 1.0f), 1.0f);
}

TEST(TemplateConversions, OnePlusExpOfBf16IsExactInItsProductAndWithinItsBoundForEveryBf16) {
  // The constants are what the comment says they are.
  const long double log2e = 1.442695040888963407359924681001892137L;
  const long double ln2 = 0.693147180559945309417232121458176568L;
  EXPECT_EQ(0x1.7154p+0f,
            static_cast<float>(std::ldexp(std::nearbyint(std::ldexp(log2e, 14)), -14)));
  EXPECT_EQ(0x1.480fb6p-18f, static_cast<float>((log2e - 0x1.7154p+0L) * ln2));
  double worst = 0.0;
  int checked = 0;
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float x = fromBits(h << 16);
    if (!std::isfinite(x))
      continue;
    // x * kLog2eHi is exact for every bf16 x (8 by 15 significant bits), so
    // that ex2's argument carries no rounding of its own.
    const double t = static_cast<double>(x) * 0x1.7154p+0;
    ASSERT_TRUE(std::fabs(t) > 0x1.fffffep127 || static_cast<double>(x * 0x1.7154p+0f) == t) << x;
    if (!(x < 88.0f))
      continue;
    worst = std::max(worst, onePlusExpUlps(templateOnePlusExpOfBf16(x), x));
    ++checked;
  }
  EXPECT_LE(worst, 2.32);
  EXPECT_GT(worst, 2.0); // the bound is the measured one, not a loose one
  EXPECT_GT(checked, 32000);
  EXPECT_EQ(templateOnePlusExpOfBf16(-3e38f), 1.0f); // beyond onePlusExp's range
  EXPECT_EQ(templateOnePlusExpOfBf16(0.0f), 2.0f);
  EXPECT_EQ(templateOnePlusExpOfBf16(88.75f), kInf);
  EXPECT_TRUE(std::isnan(templateOnePlusExpOfBf16(-kInf)));
}

TEST(TemplateConversions, E4M3ValueDecodesEveryCode) {
  for (uint32_t c = 0; c < 0x7F; ++c)
    EXPECT_EQ(templateE4M3Value(c), e4m3ToFloat(static_cast<uint8_t>(c))) << c;
}

TEST(TemplateConversions, Mxfp4CeilByteMatchesTheReference) {
  KernelSpec spec;
  spec.hidden = 64;
  spec.groupSize = 32;
  spec.outDtype = OutDtype::FP4E2M1;
  spec.ue8m0 = true;
  std::vector<float> pres = {0x1p-127f,     0x1.8p-127f,      0x1.fffffcp-127f,
                             0x1p-126f,     0x1.000002p-126f, 1.0f,
                             0x1.000002p0f, 0x1.fffffep126f,  0x1p127f};
  for (uint32_t b = bitsOf(0x1p-127f); b < bitsOf(0x1p127f); b += 1000003)
    pres.push_back(fromBits(b));
  for (float pre : pres) {
    const float s = pow2Scale(spec, pre * 6.0f, pre);
    uint32_t expected = (bitsOf(s) >> 23) & 0xFFu;
    EXPECT_EQ(templateCeilByte(pre), expected) << pre;
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

TEST(TemplateConversions, E2M1OfProductsRoundsTheExactProductOnceToNearestEven) {
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

TEST(TemplateConversions, E2M1OfProductsDiffersFromTheReferenceOnlyAtBoundaries) {
  for (const TestFactor& c : kFactors) {
    const Factors f = factorsOf(c.r);
    long differ = 0;
    Misses outside;
    forProductsOf(c.r, 31, [&](float y) {
      const float product = y * c.r;
      if (codeOfProduct(y, f) == (floatToE2M1(product) & 0x7u))
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

TEST(TemplateConversions, E2M1OfProductsZerosSaturationAndTheEdgesOfR) {
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
} // namespace bqjit::ref
