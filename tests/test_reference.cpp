// Unit tests of the CPU reference (reference/reference.hpp) on hand-picked values.
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <stdexcept>

#include <gtest/gtest.h>

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
  spec.ue8m0 = layout == ScaleLayout::Ue8m0Packed;
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

} // namespace
} // namespace bqjit::ref
