// The kernel divides amax by QMAX (and NVFP4's global_scale * amax by 6)
// with one multiplication and one FMA correction by the correctly rounded
// 1 / QMAX (templates/math.cuh divFast, templates/conversions.cuh QuantTraits::kInvMax),
// and claims the result equals IEEE division for every finite dividend.
// NVFP4's r = 1 / (s / gs) takes the same steps with a reciprocal refined
// from rcp.approx (templates/scales.cuh nvfp4Reciprocal). These tests check
// both claims on the CPU, exhaustively over the significands, with the
// kernel's formulas and constants.
#include <gtest/gtest.h>

#include "test_util.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
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

// The kernel's rcpRefined with rcp.approx's result rc in place of the
// instruction's.
float rcpRefinedFrom(float b, float rc) { return std::fma(rc, std::fma(-b, rc, 1.0f), rc); }

// Every float within one ulp of 1 / b: what PTX allows rcp.approx.f32 to
// return (its maximum error is one ulp), so that the checks below hold for
// any GPU's rcp.approx, not only one. Except for b of significand 2 - 2^-23,
// where 1 / b lies just above the midpoint between 2^-k and its successor:
// from rcp = 2^-k (below 1 / b by less than an ulp) the refinement stays at
// 2^-k and the quotients 1 / b and 8 / b come out an ulp low. The compiler's
// own div.rn takes the same steps for such b (its range check looks at
// exponents only), so the GPU's rcp.approx must give the correctly rounded
// reciprocal there; tests/test_gpu_template_math checks on the device.
std::vector<float> rcpApproxResults(float b) {
  const double exact = 1.0 / static_cast<double>(b);
  const float rn = 1.0f / b;
  if ((bitsOf(b) & 0x7fffffu) == 0x7fffffu)
    return {rn};
  std::vector<float> out;
  for (float c : {std::nextafter(rn, 0.0f), rn, std::nextafter(rn, 2.0f * rn)}) {
    const double ulp = static_cast<double>(std::nextafter(c, 2.0f * c)) - static_cast<double>(c);
    if (std::fabs(static_cast<double>(c) - exact) <= ulp)
      out.push_back(c);
  }
  return out;
}

// The first division, s / gs: s one of E4M3's eight significands (its
// subnormals have the same ones), gs every significand, rcp.approx(gs)
// anywhere within its ulp; at the exponents of the middle of the range and
// of both ends that nvfp4Reciprocal takes the fast steps for.
TEST(FastDivision, Nvfp4BlockScaleOverGlobalScaleIsIeeeForEverySignificand) {
  struct Exponents {
    int s;
    int gs;
    uint32_t stride; // of gs's significands (1: every one)
  };
  for (const Exponents e : {Exponents{0, 0, 1}, Exponents{-9, 99, 61}, Exponents{8, -100, 61}}) {
    long mismatches = 0, checked = 0;
    float firstS = 0.0f, firstGs = 0.0f;
    for (uint32_t frac = 0; frac < (1u << 23); frac += e.stride) {
      const float gs = std::ldexp(fromBits(0x3f800000u | frac), e.gs);
      for (float rc : rcpApproxResults(gs)) {
        const float r = rcpRefinedFrom(gs, rc);
        for (int m = 0; m < 8; ++m) {
          const float s = std::ldexp(1.0f + m / 8.0f, e.s);
          ++checked;
          if (bitsOf(divFast(s, gs, r)) != bitsOf(s / gs) && mismatches++ == 0) {
            firstS = s;
            firstGs = gs;
          }
        }
      }
    }
    EXPECT_GT(checked, 8L * ((1L << 23) / e.stride));
    EXPECT_EQ(mismatches, 0) << "s at 2^" << e.s << ", gs at 2^" << e.gs << ", first s " << firstS << " gs "
                             << firstGs;
  }
}

// The second, 1 / q for q = s / gs: every significand of q, at 2^0 and at
// both ends of q's range (2^-110 and 2^109).
TEST(FastDivision, Nvfp4ReciprocalIsIeeeForEverySignificand) {
  for (int exponent : {0, -110, 109}) {
    long mismatches = 0;
    float first = 0.0f;
    for (uint32_t frac = 0; frac < (1u << 23); ++frac) {
      const float q = std::ldexp(fromBits(0x3f800000u | frac), exponent);
      for (float rc : rcpApproxResults(q))
        if (bitsOf(divFast(1.0f, q, rcpRefinedFrom(q, rc))) != bitsOf(1.0f / q) && mismatches++ == 0)
          first = q;
    }
    EXPECT_EQ(mismatches, 0) << "q at 2^" << exponent << ", first at " << first;
  }
}

// The first division without its correction step (q = s * r) must fail
// the same check: the test can tell a wrong formula from a right one.
TEST(FastDivision, Nvfp4ChecksCatchAnUncorrectedQuotient) {
  long mismatches = 0;
  for (uint32_t frac = 0; frac < (1u << 23); frac += 7) {
    const float gs = fromBits(0x3f800000u | frac);
    const float r = rcpRefinedFrom(gs, 1.0f / gs);
    for (int m = 0; m < 8; ++m) {
      const float s = 1.0f + m / 8.0f;
      mismatches += bitsOf(s * r) != bitsOf(s / gs);
    }
  }
  EXPECT_GT(mismatches, 0);
}

// From rcp = 2^-k at the significand 2 - 2^-23 (see rcpApproxResults) the
// steps do give a wrong quotient: why the GPU's rcp.approx is checked there.
TEST(FastDivision, Nvfp4StepsNeedTheCorrectlyRoundedRcpAtTheLargestSignificand) {
  const float b = 2.0f - 0x1p-23f;
  EXPECT_EQ(bitsOf(divFast(1.0f, b, rcpRefinedFrom(b, 1.0f / b))), bitsOf(1.0f / b));
  EXPECT_NE(bitsOf(divFast(1.0f, b, rcpRefinedFrom(b, 0.5f))), bitsOf(1.0f / b));
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
