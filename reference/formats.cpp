// Number formats of the reference: every narrowing conversion decodes all
// codes of the target format into an ascending table once, then picks the
// nearest entry by comparing with the exact midpoints (ties: the even code).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "reference/reference.hpp"

namespace bqjit::ref {

namespace {

// Ascending magnitudes of the codes 0..n-1 of a format (code == index) and
// the midpoints between neighbours. Doubles hold every midpoint exactly,
// including the one between bf16's largest finite value and 2^128.
struct Table {
  std::vector<double> values;
  std::vector<double> mids;

  template <typename Decode> Table(uint32_t count, Decode decode) {
    values.resize(count);
    for (uint32_t c = 0; c < count; ++c)
      values[c] = decode(c);
    mids.resize(count - 1);
    for (uint32_t c = 0; c + 1 < count; ++c)
      mids[c] = (values[c] + values[c + 1]) / 2;
  }

  // Index of the entry nearest to a >= 0 (not NaN); a tie goes to the even index.
  uint32_t nearest(double a) const {
    const auto it = std::lower_bound(mids.begin(), mids.end(), a);
    const auto below = static_cast<uint32_t>(it - mids.begin());
    if (it != mids.end() && *it == a)
      return below % 2 == 0 ? below : below + 1;
    return below;
  }
};

double decodeMinifloat(uint32_t magnitude, int mantBits, int bias) {
  const uint32_t mant = magnitude & ((1u << mantBits) - 1u);
  const int exp = static_cast<int>(magnitude >> mantBits);
  if (exp == 0)
    return std::ldexp(static_cast<double>(mant), 1 - bias - mantBits);
  return std::ldexp(static_cast<double>(mant + (1u << mantBits)), exp - bias - mantBits);
}

// e4m3fn: 0x00..0x7E are finite (0x7F is NaN); largest 448.
const Table& e4m3Table() {
  static const Table table(0x7F, [](uint32_t c) { return decodeMinifloat(c, 3, 7); });
  return table;
}

// e5m2: 0x00..0x7B are finite; largest 57344.
const Table& e5m2Table() {
  static const Table table(0x7C, [](uint32_t c) { return decodeMinifloat(c, 2, 15); });
  return table;
}

// e2m1: codes 0..7 are 0, 0.5, 1, 1.5, 2, 3, 4, 6 (bias 1, one mantissa bit).
const Table& e2m1Table() {
  static const Table table(8, [](uint32_t c) { return decodeMinifloat(c, 1, 1); });
  return table;
}

// fp16 and bf16 tables run one entry past the largest finite value: that
// entry is the Inf code, valued at the next power of two, so rounding to
// it is IEEE overflow.
const Table& fp16Table() {
  static const Table table(0x7C01, [](uint32_t c) { return decodeMinifloat(c, 10, 15); });
  return table;
}

const Table& bf16Table() {
  static const Table table(0x7F81, [](uint32_t c) { return decodeMinifloat(c, 7, 127); });
  return table;
}

uint8_t toFp8(float v, const Table& table, float maxFinite) {
  const uint8_t sign = std::signbit(v) ? 0x80 : 0x00;
  if (std::isnan(v))
    return sign | 0x7F;
  const float a = std::min(std::fabs(v), maxFinite);
  return sign | static_cast<uint8_t>(table.nearest(a));
}

} // namespace

uint8_t floatToE4M3(float v) {
  return toFp8(v, e4m3Table(), 448.0f);
}

uint8_t floatToE5M2(float v) {
  return toFp8(v, e5m2Table(), 57344.0f);
}

uint8_t floatToE2M1(float v) {
  const uint8_t sign = std::signbit(v) ? 0x8 : 0x0;
  if (std::isnan(v))
    return sign | 0x7;
  const double a = std::min(std::fabs(static_cast<double>(v)), 6.0);
  return sign | static_cast<uint8_t>(e2m1Table().nearest(a));
}

float e2m1ToFloat(uint8_t code) {
  const float a = static_cast<float>(e2m1Table().values[code & 0x7u]);
  return code & 0x8 ? -a : a;
}

float e4m3ToFloat(uint8_t code) {
  const uint32_t magnitude = code & 0x7Fu;
  if (magnitude == 0x7F)
    return std::numeric_limits<float>::quiet_NaN();
  const float a = static_cast<float>(decodeMinifloat(magnitude, 3, 7));
  return code & 0x80 ? -a : a;
}

float e5m2ToFloat(uint8_t code) {
  const uint32_t magnitude = code & 0x7Fu;
  float a;
  if (magnitude > 0x7C)
    a = std::numeric_limits<float>::quiet_NaN();
  else if (magnitude == 0x7C)
    a = std::numeric_limits<float>::infinity();
  else
    a = static_cast<float>(decodeMinifloat(magnitude, 2, 15));
  return code & 0x80 ? -a : a;
}

int8_t floatToInt8(float v) {
  if (std::isnan(v))
    return 0;
  if (v >= 127.0f)
    return 127;
  if (v <= -128.0f)
    return -128;
  const double d = v;
  const double lower = std::floor(d);
  const double frac = d - lower; // exact: |v| < 128
  double r = lower;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(lower, 2.0) != 0.0))
    r = lower + 1.0;
  return static_cast<int8_t>(std::clamp(r, -128.0, 127.0));
}

uint16_t floatToBf16(float v) {
  const uint16_t sign = std::signbit(v) ? 0x8000 : 0x0000;
  if (std::isnan(v))
    return sign | 0x7FC0;
  return sign | static_cast<uint16_t>(bf16Table().nearest(std::fabs(static_cast<double>(v))));
}

float bf16ToFloat(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

uint16_t floatToFp16(float v) {
  const uint16_t sign = std::signbit(v) ? 0x8000 : 0x0000;
  if (std::isnan(v))
    return sign | 0x7E00;
  return sign | static_cast<uint16_t>(fp16Table().nearest(std::fabs(static_cast<double>(v))));
}

float fp16ToFloat(uint16_t bits) {
  const uint32_t magnitude = bits & 0x7FFFu;
  float a;
  if (magnitude > 0x7C00)
    a = std::numeric_limits<float>::quiet_NaN();
  else if (magnitude == 0x7C00)
    a = std::numeric_limits<float>::infinity();
  else
    a = static_cast<float>(decodeMinifloat(magnitude, 10, 15));
  return bits & 0x8000 ? -a : a;
}

uint8_t quantize(OutDtype dtype, float v) {
  switch (dtype) {
  case OutDtype::FP8E4M3:
    return floatToE4M3(v);
  case OutDtype::FP8E5M2:
    return floatToE5M2(v);
  case OutDtype::INT8:
    return static_cast<uint8_t>(floatToInt8(v));
  case OutDtype::FP4E2M1:
    return floatToE2M1(v);
  }
  throw std::invalid_argument("quantize: unknown output dtype");
}

float dequantize(OutDtype dtype, uint8_t code) {
  switch (dtype) {
  case OutDtype::FP8E4M3:
    return e4m3ToFloat(code);
  case OutDtype::FP8E5M2:
    return e5m2ToFloat(code);
  case OutDtype::INT8:
    return static_cast<float>(static_cast<int8_t>(code));
  case OutDtype::FP4E2M1:
    return e2m1ToFloat(code);
  }
  throw std::invalid_argument("dequantize: unknown output dtype");
}

uint8_t codeAt(OutDtype dtype, const uint8_t* q, int64_t index) {
  if (dtype == OutDtype::FP4E2M1)
    return static_cast<uint8_t>((q[index / 2] >> (4 * (index % 2))) & 0xFu);
  return q[index];
}

bool isNaNCode(OutDtype dtype, uint8_t code) {
  return dtype != OutDtype::INT8 && dtype != OutDtype::FP4E2M1 &&
         std::isnan(dequantize(dtype, code));
}

float pow2Ceil(float s) {
  if (!(s > 0.0f) || std::isinf(s))
    return s;
  int exp = 0;
  const float mant = std::frexp(s, &exp); // s = mant * 2^exp, mant in [0.5, 1)
  if (mant == 0.5f)
    return s;
  return std::ldexp(1.0f, exp);
}

float loadInput(InDtype dtype, const void* x, int64_t index) {
  const auto* bytes = static_cast<const uint8_t*>(x);
  switch (dtype) {
  case InDtype::BF16:
  case InDtype::FP16: {
    uint16_t bits;
    std::memcpy(&bits, bytes + index * 2, 2);
    return dtype == InDtype::BF16 ? bf16ToFloat(bits) : fp16ToFloat(bits);
  }
  case InDtype::FP32: {
    float f;
    std::memcpy(&f, bytes + index * 4, 4);
    return f;
  }
  }
  throw std::invalid_argument("loadInput: unknown input dtype");
}

void storeInput(InDtype dtype, void* x, int64_t index, float v) {
  auto* bytes = static_cast<uint8_t*>(x);
  switch (dtype) {
  case InDtype::BF16:
  case InDtype::FP16: {
    const uint16_t bits = dtype == InDtype::BF16 ? floatToBf16(v) : floatToFp16(v);
    std::memcpy(bytes + index * 2, &bits, 2);
    return;
  }
  case InDtype::FP32:
    std::memcpy(bytes + index * 4, &v, 4);
    return;
  }
  throw std::invalid_argument("storeInput: unknown input dtype");
}

} // namespace bqjit::ref
