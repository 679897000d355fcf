// The kernel divides amax by QMAX (and NVFP4's global_scale * amax by 6)
// with one multiplication and one FMA correction by the correctly rounded
// 1 / QMAX (templates/math.cuh divFast, templates/conversions.cuh QuantTraits::kInvMax),
// and claims the result equals IEEE division for every finite dividend.
// These tests check that claim on the CPU, exhaustively over the
// significands, with the kernel's formula and constants.
#include <gtest/gtest.h>

#include "test_util.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace {

using bqjit::test::bitsOf;
using bqjit::test::fromBits;

// The kernel's divFast: q0 = a * r, then one correction with the residual's
// sign flipped so that -0 / b stays -0.
float divFast(float a, float b, float r) {
  const float q0 = a * r;
  const float negResidual = std::fma(b, q0, -a);
  return std::fma(-r, negResidual, q0);
}

struct QuantMax {
  const char* name;
  float qmax;
  float invMax; // as written in the kernel template
};

// e2m1: NVFP4 divides global_scale * amax by 6 the same way.
const QuantMax kQuantMax[] = {{"e4m3", 448.0f, 0x1.24924ap-9f},
                              {"e5m2", 57344.0f, 0x1.24924ap-16f},
                              {"int8", 127.0f, 0x1.020408p-7f},
                              {"e2m1", 6.0f, 0x1.555556p-3f}};

TEST(FastDivision, TemplateReciprocalsAreCorrectlyRounded) {
  for (const QuantMax& m : kQuantMax) {
    const float r = 1.0f / m.qmax;
    EXPECT_EQ(bitsOf(r), bitsOf(m.invMax)) << m.name;
  }
}

TEST(FastDivision, AmaxOverQmaxIsIeeeForEverySignificand) {
  for (const QuantMax& m : kQuantMax)
    for (int exponent : {-60, -1, 0, 1, 37, 120}) {
      long mismatches = 0;
      float first = 0.0f;
      for (uint32_t frac = 0; frac < (1u << 23); ++frac) {
        const float a = std::ldexp(fromBits(0x3f800000u | frac), exponent);
        const float q = divFast(a, m.qmax, m.invMax);
        if (bitsOf(q) != bitsOf(a / m.qmax) && mismatches++ == 0)
          first = a;
      }
      EXPECT_EQ(mismatches, 0) << m.name << " at 2^" << exponent << ", first at " << first;
    }
}

// MXFP4's scale is max(amax / 6, 2^-127), and 2^-127, a subnormal, has an
// E8M0 byte of its own: down there the quotient must be IEEE's once clamped
// (further down, where the quotients lie far below 2^-127, the fast one may
// be an ulp off and the clamp makes both 2^-127).
TEST(FastDivision, AmaxOverSixIsIeeeDownToMxfp4sSmallestScale) {
  const QuantMax& e2m1 = kQuantMax[3];
  const float smallest = 0x1p-127f;
  for (int exponent : {-122, -123, -124, -125, -126, -127, -128, -135, -146}) {
    long mismatches = 0;
    float first = 0.0f;
    for (uint32_t frac = 0; frac < (1u << 23); ++frac) {
      const float a = std::ldexp(fromBits(0x3f800000u | frac), exponent);
      const float q = std::fmax(divFast(a, e2m1.qmax, e2m1.invMax), smallest);
      if (bitsOf(q) != bitsOf(std::fmax(a / e2m1.qmax, smallest)) && mismatches++ == 0)
        first = a;
    }
    EXPECT_EQ(mismatches, 0) << "e2m1 at 2^" << exponent << ", first at " << first;
  }
}

TEST(FastDivision, ExtremesAndZeros) {
  for (const QuantMax& m : kQuantMax) {
    const float big = std::numeric_limits<float>::max();
    EXPECT_EQ(bitsOf(divFast(big, m.qmax, m.invMax)), bitsOf(big / m.qmax)) << m.name;
    EXPECT_EQ(bitsOf(divFast(0.0f, m.qmax, m.invMax)), bitsOf(0.0f)) << m.name;
    EXPECT_EQ(bitsOf(divFast(-0.0f, m.qmax, m.invMax)), bitsOf(-0.0f)) << m.name;
    // Smallest normal: the quotient is subnormal, far below MIN_SCALE, which
    // the kernel takes instead, so only its size matters.
    const float tiny = std::numeric_limits<float>::min();
    EXPECT_LT(divFast(tiny, m.qmax, m.invMax), 1e-30f) << m.name;
  }
}

} // namespace
