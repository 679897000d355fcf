// The comparison of a device result with the reference, with docs/contract.md's
// tolerance (section 1, "How close is close enough").
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "reference/internal.hpp"
#include "reference/reference.hpp"

namespace bqjit::ref {

namespace {

constexpr double kScaleRelTol = 1e-6;
constexpr double kBoundaryRelTol = 2e-6;

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buffer[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buffer, sizeof buffer, fmt, args);
  va_end(args);
  return buffer;
}

bool closeScale(float device, float reference) {
  if (std::isnan(device) || std::isnan(reference))
    return std::isnan(device) && std::isnan(reference);
  if (device == reference)
    return true;
  return std::fabs(static_cast<double>(device) - reference) <=
         kScaleRelTol * std::fabs(static_cast<double>(reference));
}

// A ue8m0 byte read back as the power of two it stands for.
float decodeUe8m0(uint8_t byte) {
  if (byte == 0xFF)
    return INFINITY;
  return std::ldexp(1.0f, static_cast<int>(byte) - 127);
}

// Whether `device` is the other power of two that a pre-rounding scale this
// close to a power of two p may round to: under ceil p itself or 2p, under
// floor (whose pre-rounding scale is amax / 2^EMAX) p / 2 or p.
bool pow2NeighbourAllowed(float preRound, float device, ScaleRounding rounding) {
  if (!(preRound > 0.0f) || std::isinf(preRound))
    return false;
  const double sp = preRound;
  const double up = pow2Ceil(preRound);
  const double p = up - sp < sp - up / 2 ? up : up / 2;
  if (std::fabs(sp - p) > kBoundaryRelTol * p)
    return false;
  if (rounding == ScaleRounding::Floor)
    return device == p || device == p / 2;
  return device == p || device == 2 * p;
}

bool sameCode(OutDtype dtype, uint8_t a, uint8_t b) {
  return a == b || (isNaNCode(dtype, a) && isNaNCode(dtype, b));
}

// Codes of one sign of a format, in ascending order of value: 0x00..0x7F
// (int8's negative half and the fp8 NaN codes stop the scans before), or
// e2m1's eight.
int positiveCodes(OutDtype dtype) {
  return dtype == OutDtype::FP4E2M1 ? 8 : 0x80;
}

// Whether `device` is a neighbour of a rounding boundary that `v` lies within
// 2e-6 relative of. The window is far narrower than any step of the output
// types, so it holds at most one boundary.
bool boundaryAllowed(OutDtype dtype, float v, uint8_t device) {
  if (!std::isfinite(v))
    return false;
  if (dtype == OutDtype::INT8) {
    const double f = std::floor(static_cast<double>(v));
    const double b = f + 0.5;
    if (std::fabs(v - b) > kBoundaryRelTol * std::fabs(b))
      return false;
    return device == quantize(dtype, static_cast<float>(f)) ||
           device == quantize(dtype, static_cast<float>(f + 1));
  }
  const double a = std::fmin(std::fabs(static_cast<double>(v)), quantMax(dtype));
  const uint8_t sign = std::signbit(v) ? (dtype == OutDtype::FP4E2M1 ? 0x8 : 0x80) : 0x00;
  // The largest finite code whose value does not exceed a; above the largest
  // value everything saturates to it, so there is no boundary there.
  uint8_t lo = 0;
  while (lo + 1 < positiveCodes(dtype) && dequantize(dtype, static_cast<uint8_t>(lo + 1)) <= a)
    ++lo;
  if (dequantize(dtype, lo) == quantMax(dtype))
    return false;
  const auto hi = static_cast<uint8_t>(lo + 1);
  const double b = (static_cast<double>(dequantize(dtype, lo)) + dequantize(dtype, hi)) / 2;
  if (std::fabs(a - b) > kBoundaryRelTol * b)
    return false;
  return device == (sign | lo) || device == (sign | hi);
}

std::string describeCode(OutDtype dtype, uint8_t code) {
  return format("0x%02x (%.9g)", code, static_cast<double>(dequantize(dtype, code)));
}

// Locates byte `offset` of the scale buffer: expert, row, group and what kind
// of slot it is.
std::string describeScaleByte(const Problem& p, int64_t offset) {
  const KernelSpec& s = p.spec;
  const int64_t perExpert = scaleBufferBytes(s, p.tokens);
  const int64_t e = offset / perExpert;
  const int64_t rem = offset % perExpert;
  const int64_t ng = s.numGroups();
  const int64_t t4 = paddedTokens(p.tokens);
  int64_t t = 0;
  int64_t j = 0;
  switch (s.scaleLayout) {
  case ScaleLayout::Row:
    t = rem / 4 / ng;
    j = rem / 4 % ng;
    break;
  case ScaleLayout::Col:
    j = rem / 4 / p.tokens;
    t = rem / 4 % p.tokens;
    break;
  case ScaleLayout::ColTma:
    j = rem / 4 / t4;
    t = rem / 4 % t4;
    break;
  case ScaleLayout::Ue8m0Packed:
    j = rem / 4 / t4 * 4 + rem % 4;
    t = rem / 4 % t4;
    break;
  case ScaleLayout::Bytes:
    t = rem / ng;
    j = rem % ng;
    break;
  case ScaleLayout::Swizzled128x4: {
    // The inverse of swizzledOffset.
    const int64_t tileCols = (ng + 3) / 4;
    const int64_t tile = rem / 512;
    const int64_t in = rem % 512;
    t = tile / tileCols * 128 + (in % 16) / 4 * 32 + in / 16;
    j = tile % tileCols * 4 + in % 4;
    break;
  }
  }
  std::string what;
  if (t >= p.tokens)
    what = "a padding row";
  else if (j >= ng && s.scaleLayout == ScaleLayout::Swizzled128x4)
    what = "a padding column";
  else if (t >= detail::liveRows(p, e))
    what = format("a row past masked_m[%" PRId64 "] = %" PRId64, e, detail::liveRows(p, e));
  else if (j >= ng)
    what = "an unused byte of the row's last packed word";
  else
    what = "a computed scale";
  return format("scale buffer byte %" PRId64 " (expert %" PRId64 ", t %" PRId64 ", group %" PRId64
                ": %s)",
                offset, e, t, j, what.c_str());
}

class Checker {
public:
  Checker(const Problem& p, const Result& ref, const uint8_t* q, const uint8_t* scales)
      : p_(p), s_(p.spec), ref_(ref), q_(q), scales_(scales),
        computedScaleByte_(ref.scales.size(), false) {}

  CompareReport run() {
    const int64_t ng = s_.numGroups();
    for (int64_t e = 0; e < p_.numExperts; ++e) {
      const int64_t live = detail::liveRows(p_, e);
      for (int64_t t = 0; t < live; ++t)
        for (int64_t j = 0; j < ng; ++j)
          checkGroup(e, t, j);
      for (int64_t t = live; t < p_.tokens; ++t)
        checkUnwrittenRow(e, t, live);
    }
    for (size_t b = 0; b < ref_.scales.size(); ++b) {
      if (computedScaleByte_[b])
        continue;
      ++report_.untouchedBytes;
      if (scales_[b] != ref_.scales[b]) {
        ++report_.untouchedMismatches;
        note(describeScaleByte(p_, static_cast<int64_t>(b)) +
             format(" must hold 0x%02x, device 0x%02x", ref_.scales[b], scales_[b]));
      }
    }
    return report_;
  }

private:
  void note(const std::string& message) {
    if (report_.firstMismatch.empty())
      report_.firstMismatch = message;
  }

  // One scale and its G values; returns nothing, counts into the report.
  void checkGroup(int64_t e, int64_t t, int64_t j) {
    const int64_t scaleIndex = (e * p_.tokens + t) * s_.numGroups() + j;
    const float sRef = ref_.scaleValue[scaleIndex];
    const float sPre = ref_.scalePreRound[scaleIndex];
    const int64_t offset = scaleOffset(s_, p_.tokens, e, t, j);
    const bool packed = s_.scalesAreBytes();
    const bool nvfp4 = s_.isNvfp4();
    float sDev;
    bool scaleOk;
    if (packed) {
      computedScaleByte_[offset] = true;
      sDev = nvfp4 ? e4m3ToFloat(scales_[offset]) : decodeUe8m0(scales_[offset]);
      scaleOk = scales_[offset] == ref_.scales[offset];
    } else {
      for (int b = 0; b < 4; ++b)
        computedScaleByte_[offset + b] = true;
      std::memcpy(&sDev, scales_ + offset, sizeof sDev);
      scaleOk = closeScale(sDev, sRef);
    }
    ++report_.scales;
    // With a scale one power of two off (allowed), the values are judged
    // against the device's scale: y / sDev = (y / sRef) * (sRef / sDev), exactly.
    float sUse = sRef;
    if (!scaleOk && s_.ue8m0 && pow2NeighbourAllowed(sPre, sDev, s_.scaleRounding)) {
      ++report_.scaleAllowanceUsed;
      sUse = sDev;
    } else if (!scaleOk && nvfp4 && boundaryAllowed(OutDtype::FP8E4M3, sPre, scales_[offset])) {
      // global_scale * amax / 6 at an E4M3 rounding boundary: the other
      // neighbour is allowed, and the values are judged by its r.
      ++report_.scaleAllowanceUsed;
      sUse = sDev;
    } else if (!scaleOk) {
      ++report_.scaleMismatches;
      const std::string device = packed ? format("%s byte %u (%.9g)", nvfp4 ? "E4M3" : "exponent",
                                                 scales_[offset], static_cast<double>(sDev))
                                        : format("%.9g", static_cast<double>(sDev));
      note(format("scale (expert %" PRId64 ", t %" PRId64 ", group %" PRId64 ") at byte %" PRId64
                  ": device %s, reference %.9g (before power-of-two rounding %.9g)",
                  e, t, j, offset, device.c_str(), static_cast<double>(sRef),
                  static_cast<double>(sPre)));
    }

    const int64_t base = (e * p_.tokens + t) * s_.hidden + j * s_.groupSize;
    for (int64_t k = 0; k < s_.groupSize; ++k) {
      float v = ref_.preRound[base + k];
      uint8_t expected = codeAt(s_.outDtype, ref_.q.data(), base + k);
      if (sUse != sRef && nvfp4) {
        // y * r of the device's block scale, in the contract's order.
        const float r = sUse == 0.0f ? 0.0f : 1.0f / (sUse / p_.globalScale);
        v = ref_.yValue[base + k] * r;
        expected = quantize(s_.outDtype, v);
      } else if (sUse != sRef) {
        v = v * (sRef / sUse);
        expected = quantize(s_.outDtype, v);
      }
      const uint8_t device = codeAt(s_.outDtype, q_, base + k);
      ++report_.elements;
      if (sameCode(s_.outDtype, device, expected))
        continue;
      // The e2m1 code of a NaN is not specified (docs/contract.md section 8).
      if (s_.outDtype == OutDtype::FP4E2M1 && std::isnan(v))
        continue;
      if (boundaryAllowed(s_.outDtype, v, device)) {
        ++report_.allowanceUsed;
        continue;
      }
      ++report_.mismatches;
      note(format("q (expert %" PRId64 ", t %" PRId64 ", column %" PRId64 ", group %" PRId64
                  "): device %s, reference %s, y/s = %.9g with s = %.9g%s",
                  e, t, j * s_.groupSize + k, j, describeCode(s_.outDtype, device).c_str(),
                  describeCode(s_.outDtype, expected).c_str(), static_cast<double>(v),
                  static_cast<double>(sUse), sUse != sRef ? " (the device's scale)" : ""));
    }
  }

  void checkUnwrittenRow(int64_t e, int64_t t, int64_t live) {
    const int64_t rowBytes = s_.outputRowBytes();
    const int64_t base = (e * p_.tokens + t) * rowBytes;
    for (int64_t i = 0; i < rowBytes; ++i) {
      ++report_.untouchedBytes;
      if (q_[base + i] == ref_.q[base + i])
        continue;
      ++report_.untouchedMismatches;
      note(format("q (expert %" PRId64 ", t %" PRId64 ", %s %" PRId64 ") is past masked_m[%" PRId64
                  "] = %" PRId64 " and must hold 0x%02x, device 0x%02x",
                  e, t, s_.outDtype == OutDtype::FP4E2M1 ? "byte" : "column", i, e, live,
                  ref_.q[base + i], q_[base + i]));
    }
  }

  const Problem& p_;
  const KernelSpec& s_;
  const Result& ref_;
  const uint8_t* q_;
  const uint8_t* scales_;
  std::vector<bool> computedScaleByte_;
  CompareReport report_;
};

} // namespace

std::string CompareReport::summary() const {
  std::string text = format(
      "%s: %" PRId64 " values, %" PRId64 " wrong, %" PRId64 " at a rounding boundary; %" PRId64
      " scales, %" PRId64 " wrong, %" PRId64 " one power of two off at a boundary; %" PRId64
      " bytes that must stay unwritten, %" PRId64 " changed",
      ok() ? "ok" : "MISMATCH", elements, mismatches, allowanceUsed, scales, scaleMismatches,
      scaleAllowanceUsed, untouchedBytes, untouchedMismatches);
  if (!firstMismatch.empty())
    text += "; first: " + firstMismatch;
  return text;
}

CompareReport compare(const Problem& problem, const Result& reference, const uint8_t* q,
                      const uint8_t* scales) {
  detail::checkProblem(problem);
  const KernelSpec& s = problem.spec;
  const auto perScale = static_cast<size_t>(problem.numExperts * problem.tokens * s.numGroups());
  if (reference.q.size() !=
          static_cast<size_t>(outputBytes(s, problem.tokens, problem.numExperts)) ||
      reference.scales.size() !=
          static_cast<size_t>(scaleBufferBytes(s, problem.tokens, problem.numExperts)) ||
      reference.preRound.size() !=
          static_cast<size_t>(problem.numExperts * problem.tokens * s.hidden) ||
      (s.isNvfp4() && reference.yValue.size() != reference.preRound.size()) ||
      reference.scaleValue.size() != perScale || reference.scalePreRound.size() != perScale)
    throw std::invalid_argument("bqjit::ref::compare: the reference result was not computed for "
                                "this problem");
  return Checker(problem, reference, q, scales).run();
}

} // namespace bqjit::ref
