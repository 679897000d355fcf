// The reference computation (docs/contract.md section 1), the scale layouts (section 2)
// and the input generators.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <thread>

#include "reference/internal.hpp"
#include "reference/reference.hpp"

namespace bqjit::ref {

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

bool isPadded(ScaleLayout layout) {
  return layout == ScaleLayout::ColTma || layout == ScaleLayout::Ue8m0Packed;
}

// Column of x that holds gate (up = false) or up of column i.
int64_t inputColumn(const KernelSpec& s, int64_t i, bool up) {
  if (s.gateUp == GateUp::Interleaved)
    return 2 * i + (up ? 1 : 0);
  return (up ? s.hidden : 0) + i;
}

} // namespace

void detail::checkProblem(const Problem& p) {
  const KernelSpec& s = p.spec;
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("bqjit::ref::Problem: " + what);
  };
  if (s.hidden < 1 || s.groupSize < 1 || s.hidden % s.groupSize != 0)
    fail("group_size " + std::to_string(s.groupSize) + " must divide hidden " +
         std::to_string(s.hidden));
  if (s.scalesAreBytes() && !s.ue8m0 && !s.isNvfp4())
    fail(std::string(toString(s.scaleLayout)) +
         " needs ue8m0 (its bytes are powers of two) or NVFP4 (E4M3 bytes)");
  if (s.outDtype == OutDtype::FP4E2M1 &&
      !((s.groupSize == 16 && !s.ue8m0) || (s.groupSize == 32 && s.ue8m0)))
    fail("fp4_e2m1 needs G = 16 without ue8m0 (NVFP4) or G = 32 with ue8m0 (MXFP4)");
  if (s.isNvfp4() && !(std::isfinite(p.globalScale) && p.globalScale > 0.0f))
    fail("NVFP4 needs a finite global_scale > 0, not " + std::to_string(p.globalScale));
  if (s.isNvfp4() && (s.hasScaleUb || (s.scaleLayout != ScaleLayout::Bytes &&
                                       s.scaleLayout != ScaleLayout::Swizzled128x4)))
    fail("NVFP4 takes no scale_ub and stores its E4M3 bytes in bytes or swizzled_128x4");
  if (s.scaleRounding == ScaleRounding::Floor &&
      (!s.ue8m0 || s.outDtype == OutDtype::INT8 || s.hasScaleUb))
    fail("scale_rounding floor needs ue8m0, an fp8 output and no scale_ub");
  if (p.tokens < 0)
    fail("tokens " + std::to_string(p.tokens) + " must be >= 0");
  if (p.ldx < 2 * static_cast<int64_t>(s.hidden))
    fail("ldx " + std::to_string(p.ldx) + " must be >= 2H = " + std::to_string(2 * s.hidden));
  if (p.numExperts < 1 || (!s.masked && p.numExperts != 1))
    fail("numExperts " + std::to_string(p.numExperts) + " must be 1, or >= 1 when masked");
  if (!s.masked)
    return;
  if (static_cast<int64_t>(p.maskedM.size()) != p.numExperts)
    fail("maskedM has " + std::to_string(p.maskedM.size()) + " entries for " +
         std::to_string(p.numExperts) + " experts");
  for (size_t e = 0; e < p.maskedM.size(); ++e)
    if (p.maskedM[e] < 0 || p.maskedM[e] > p.tokens)
      fail("maskedM[" + std::to_string(e) + "] = " + std::to_string(p.maskedM[e]) +
           " must be in 0..T = " + std::to_string(p.tokens));
}

namespace {

uint8_t biasedExponent(float s) {
  uint32_t bits;
  std::memcpy(&bits, &s, sizeof bits);
  return static_cast<uint8_t>((bits >> 23) & 0xFFu);
}

void putFloat(std::vector<uint8_t>& buffer, int64_t offset, float v) {
  std::memcpy(buffer.data() + offset, &v, sizeof v);
}

// Zero scales for the padding rows T..T4-1 of one expert; for ue8m0_packed
// that is every byte of their words. swizzled_128x4: every byte that is not
// the scale of some (t < T, j < NG), whatever masked_m says.
void writePadding(const Problem& p, int64_t expert, Result& r) {
  const KernelSpec& s = p.spec;
  const int64_t ng = s.numGroups();
  if (s.scaleLayout == ScaleLayout::Swizzled128x4) {
    const int64_t rows = (p.tokens + 127) / 128 * 128;
    const int64_t cols = (ng + 3) / 4 * 4;
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t j = 0; j < cols; ++j)
        if (t >= p.tokens || j >= ng)
          r.scales[scaleOffset(s, p.tokens, expert, t, j)] = 0;
    return;
  }
  for (int64_t t = p.tokens; t < paddedTokens(p.tokens); ++t) {
    if (s.scaleLayout == ScaleLayout::ColTma) {
      for (int64_t j = 0; j < ng; ++j)
        putFloat(r.scales, scaleOffset(s, p.tokens, expert, t, j), 0.0f);
    } else {
      for (int64_t j = 0; j < (ng + 3) / 4 * 4; j += 4)
        std::memset(r.scales.data() + scaleOffset(s, p.tokens, expert, t, j), 0, 4);
    }
  }
}

} // namespace

float activation(const KernelSpec& spec, float g, float u) {
  const ActivationForm form = spec.activationForm();
  switch (form.activation) {
  case Activation::Silu:
    // Separate fp32 roundings: divide, then multiply (no fused or wider math).
    return g / (1.0f + std::exp(-g)) * u;
  case Activation::Swiglu: {
    if (form.limit) {
      // As torch.clamp: comparisons, so that NaN stays NaN.
      const float limit = *form.limit;
      g = g > limit ? limit : g;
      u = u > limit ? limit : (u < -limit ? -limit : u);
    }
    const float z = form.alpha.value_or(1.0f) * g;
    // An unset beta is 0, which adds nothing (u + 0 would make -0 into +0).
    const float b = form.beta ? u + *form.beta : u;
    return g / (1.0f + std::exp(-z)) * b;
  }
  case Activation::GeluTanh: {
    // 0.5 * (1 + tanh(w)) = 1 / (1 + exp(-2w)).
    return g / (1.0f + std::exp(-geluTanhZ(g))) * u;
  }
  case Activation::Gelu: {
    // 0.5 * (1 + erf(x)) = 0.5 * erfc(-x), x = g / sqrt 2 and erfc in double,
    // rounded once (x is not rounded to fp32: the contract rounds no
    // intermediate of the activation, and the tail's steepness would turn
    // that rounding into up to 1e-5 of y at g = -14).
    const float phi = 0.5f * static_cast<float>(std::erfc(-static_cast<double>(g) * M_SQRT1_2));
    return g * phi * u;
  }
  }
  throw std::invalid_argument("activation: unknown activation");
}

float geluTanhZ(float g) {
  static const float k1 = static_cast<float>(2.0 * std::sqrt(2.0 / M_PI));
  static const float k3 = static_cast<float>(2.0 * std::sqrt(2.0 / M_PI) * 0.044715);
  return g * std::fma(k3, g * g, k1);
}

float pow2Scale(const KernelSpec& spec, float amax, float pre) {
  constexpr float kMaxScale = 0x1p127f; // E8M0 byte 254; byte 255 (NaN) is never written
  if (spec.scaleRounding == ScaleRounding::Ceil)
    return std::fmin(pow2Ceil(pre), kMaxScale);
  int e;
  if (amax == 0.0f)
    e = -127;
  else if (std::isinf(amax))
    e = 127;
  else
    e = std::ilogb(amax) - maxNormalExponent(spec.outDtype); // exact, subnormals included
  e = std::clamp(e, -127, 127);
  return std::ldexp(1.0f, e);
}

namespace {

// Stores the code of element `index` of q: a byte, or a nibble of fp4_e2m1
// (element 2k low, 2k + 1 high).
void storeCode(OutDtype dtype, uint8_t* q, int64_t index, uint8_t code) {
  if (dtype != OutDtype::FP4E2M1) {
    q[index] = code;
    return;
  }
  uint8_t& byte = q[index / 2];
  const int shift = 4 * static_cast<int>(index % 2);
  byte = static_cast<uint8_t>((byte & ~(0xFu << shift)) | ((code & 0xFu) << shift));
}

// One row of one expert: every group's y, amax, scale and quantized values.
void computeRow(const Problem& p, const void* x, int64_t e, int64_t t, Result& r) {
  const KernelSpec& s = p.spec;
  const int64_t h = s.hidden;
  const int64_t g = s.groupSize;
  const int64_t ng = s.numGroups();
  const float qmax = quantMax(s.outDtype);
  const float minS = s.minScaleValue(); // MIN_SCALE, or the spec's min_scale
  const int64_t inRow = (e * p.tokens + t) * p.ldx;
  const int64_t outRow = (e * p.tokens + t) * h;
  std::vector<float> y(static_cast<size_t>(g));
  for (int64_t j = 0; j < ng; ++j) {
    float amax = 0.0f;
    for (int64_t k = 0; k < g; ++k) {
      const int64_t col = j * g + k;
      const float gate = loadInput(s.inDtype, x, inRow + inputColumn(s, col, false));
      const float up = loadInput(s.inDtype, x, inRow + inputColumn(s, col, true));
      y[k] = activation(s, gate, up);
      amax = std::fmax(amax, std::fabs(y[k]));
    }
    const int64_t scaleIndex = (e * p.tokens + t) * ng + j;
    const int64_t offset = scaleOffset(s, p.tokens, e, t, j);
    if (s.isNvfp4()) {
      // docs/contract.md section 8, in its order of evaluation: the E4M3 block
      // scale of global_scale * amax / 6 (at most 448), then r = 1 / (sf / gs).
      const float gs = p.globalScale;
      const float pre = std::fmin(gs * amax / 6.0f, 448.0f);
      const uint8_t sf = floatToE4M3(pre);
      const float sfValue = e4m3ToFloat(sf);
      const float rcp = sfValue == 0.0f ? 0.0f : 1.0f / (sfValue / gs);
      r.scalePreRound[scaleIndex] = pre;
      r.scaleValue[scaleIndex] = sfValue;
      for (int64_t k = 0; k < g; ++k) {
        const float v = y[k] * rcp;
        r.yValue[outRow + j * g + k] = y[k];
        r.preRound[outRow + j * g + k] = v;
        storeCode(s.outDtype, r.q.data(), outRow + j * g + k, quantize(s.outDtype, v));
      }
      r.scales[offset] = sf;
      continue;
    }
    const bool floor = s.scaleRounding == ScaleRounding::Floor;
    float scale = amax / qmax;
    if (s.hasScaleUb)
      scale = std::fmin(scale, p.scaleUb);
    scale = std::fmax(scale, minS);
    r.scalePreRound[scaleIndex] = floor ? std::ldexp(amax, -maxNormalExponent(s.outDtype)) : scale;
    if (s.ue8m0)
      scale = pow2Scale(s, amax, scale);
    r.scaleValue[scaleIndex] = scale;
    for (int64_t k = 0; k < g; ++k) {
      const float v = y[k] / scale;
      r.preRound[outRow + j * g + k] = v;
      storeCode(s.outDtype, r.q.data(), outRow + j * g + k, quantize(s.outDtype, v));
    }
    if (s.scalesAreBytes())
      r.scales[offset] = biasedExponent(scale);
    else
      putFloat(r.scales, offset, scale);
  }
  // The bytes of the last packed word past group NG-1 are written as zero.
  if (s.scaleLayout == ScaleLayout::Ue8m0Packed)
    for (int64_t j = ng; j % 4 != 0; ++j)
      r.scales[scaleOffset(s, p.tokens, e, t, j)] = 0;
}

// splitmix64: a tiny generator whose sequence is the same on every platform.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Irwin-Hall of four uniforms, scaled to unit variance.
  double normalish() {
    return (uniform() + uniform() + uniform() + uniform() - 2.0) * std::sqrt(3.0);
  }
};

float largestFinite(InDtype dtype) {
  switch (dtype) {
  case InDtype::BF16:
    return bf16ToFloat(0x7F7F);
  case InDtype::FP16:
    return 65504.0f;
  case InDtype::FP32:
    return std::numeric_limits<float>::max();
  }
  return 0.0f;
}

float smallestSubnormal(InDtype dtype) {
  switch (dtype) {
  case InDtype::BF16:
    return bf16ToFloat(0x0001);
  case InDtype::FP16:
    return fp16ToFloat(0x0001);
  case InDtype::FP32:
    return std::numeric_limits<float>::denorm_min();
  }
  return 0.0f;
}

} // namespace

int64_t paddedTokens(int64_t tokens) {
  return (tokens + 3) / 4 * 4;
}

int64_t scaleBufferBytes(const KernelSpec& spec, int64_t tokens, int64_t numExperts) {
  const int64_t ng = spec.numGroups();
  int64_t perExpert = 0;
  switch (spec.scaleLayout) {
  case ScaleLayout::Row:
  case ScaleLayout::Col:
    perExpert = tokens * ng * 4;
    break;
  case ScaleLayout::ColTma:
    perExpert = paddedTokens(tokens) * ng * 4;
    break;
  case ScaleLayout::Ue8m0Packed:
    perExpert = (ng + 3) / 4 * paddedTokens(tokens) * 4;
    break;
  case ScaleLayout::Bytes:
    perExpert = tokens * ng;
    break;
  case ScaleLayout::Swizzled128x4:
    perExpert = (tokens + 127) / 128 * 128 * ((ng + 3) / 4 * 4);
    break;
  }
  return perExpert * numExperts;
}

int64_t outputBytes(const KernelSpec& spec, int64_t tokens, int64_t numExperts) {
  return numExperts * tokens * spec.outputRowBytes();
}

int64_t swizzledOffset(int64_t t, int64_t j, int64_t numGroups) {
  const int64_t tileCols = (numGroups + 3) / 4; // NGp / 4
  return ((t / 128) * tileCols + j / 4) * 512 + (t % 32) * 16 + ((t % 128) / 32) * 4 + j % 4;
}

int64_t scaleOffset(const KernelSpec& spec, int64_t tokens, int64_t expert, int64_t t, int64_t j) {
  const int64_t ng = spec.numGroups();
  const int64_t t4 = paddedTokens(tokens);
  const int64_t base = expert * scaleBufferBytes(spec, tokens);
  switch (spec.scaleLayout) {
  case ScaleLayout::Row:
    return base + (t * ng + j) * 4;
  case ScaleLayout::Col:
    return base + (j * tokens + t) * 4;
  case ScaleLayout::ColTma:
    return base + (j * t4 + t) * 4;
  case ScaleLayout::Ue8m0Packed:
    return base + ((j / 4) * t4 + t) * 4 + j % 4;
  case ScaleLayout::Bytes:
    return base + t * ng + j;
  case ScaleLayout::Swizzled128x4:
    return base + swizzledOffset(t, j, ng);
  }
  throw std::invalid_argument("scaleOffset: unknown layout");
}

Result run(const Problem& p, const void* x) {
  detail::checkProblem(p);
  const KernelSpec& s = p.spec;
  const int64_t experts = p.numExperts;
  const int64_t perScale = experts * p.tokens * s.numGroups();
  Result r;
  r.q.assign(outputBytes(s, p.tokens, experts), p.poison);
  r.scales.assign(scaleBufferBytes(s, p.tokens, experts), p.poison);
  r.scaleValue.assign(perScale, kNaN);
  r.scalePreRound.assign(perScale, kNaN);
  const int64_t elements = experts * p.tokens * s.hidden;
  r.preRound.assign(elements, kNaN);
  if (s.isNvfp4())
    r.yValue.assign(elements, kNaN);
  // In masked mode padding rows lie past maskedM[e] <= T and stay unwritten;
  // swizzled_128x4's padding is zero in every expert, masked or not.
  if (s.scaleLayout == ScaleLayout::Swizzled128x4)
    for (int64_t e = 0; e < experts; ++e)
      writePadding(p, e, r);
  else if (isPadded(s.scaleLayout) && !s.masked)
    writePadding(p, 0, r);

  std::vector<std::pair<int64_t, int64_t>> rows;
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t t = 0; t < detail::liveRows(p, e); ++t)
      rows.emplace_back(e, t);
  // Rows write disjoint bytes (a packed word belongs to one row), so threads
  // need no synchronization; the result does not depend on their number.
  // Threads take whole rows; an fp4 row's bytes are its own (H is even).
  const int64_t work = static_cast<int64_t>(rows.size()) * s.hidden;
  const int64_t threads = std::clamp<int64_t>(
      std::min<int64_t>(std::thread::hardware_concurrency(), work >> 16), 1, 32);
  auto worker = [&](int64_t id) {
    for (size_t i = id; i < rows.size(); i += threads)
      computeRow(p, x, rows[i].first, rows[i].second, r);
  };
  std::vector<std::thread> pool;
  for (int64_t id = 1; id < threads; ++id)
    pool.emplace_back(worker, id);
  worker(0);
  for (auto& th : pool)
    th.join();
  return r;
}

std::vector<uint8_t> makeInput(const KernelSpec& spec, int64_t tokens, int64_t ldx,
                               int64_t numExperts, uint64_t seed, float scale) {
  const int64_t rowCount = numExperts * tokens;
  const int64_t width = 2 * static_cast<int64_t>(spec.hidden);
  if (ldx < width)
    throw std::invalid_argument("makeInput: ldx must be >= 2H");
  std::vector<uint8_t> x(static_cast<size_t>(rowCount * ldx * dtypeBytes(spec.inDtype)));
  Rng rng{seed};
  const float garbage[] = {std::numeric_limits<float>::quiet_NaN(),
                           std::numeric_limits<float>::infinity(), -largestFinite(spec.inDtype),
                           largestFinite(spec.inDtype) / 2};
  for (int64_t row = 0; row < rowCount; ++row) {
    for (int64_t c = 0; c < width; ++c)
      storeInput(spec.inDtype, x.data(), row * ldx + c,
                 static_cast<float>(rng.normalish() * scale));
    for (int64_t c = width; c < ldx; ++c)
      storeInput(spec.inDtype, x.data(), row * ldx + c, garbage[(row + c) % 4]);
  }
  return x;
}

namespace {

// The gate whose z (the sigmoid's exponent in activation()) is `z`: z = g for
// silu and gelu, alpha g for swiglu (no such gate for alpha 0: z itself),
// g (k1 + k3 g^2) for gelu_tanh (rising with g: solved by bisection in
// double).
float gateOfZ(const KernelSpec& spec, double z) {
  const ActivationForm form = spec.activationForm();
  switch (form.activation) {
  case Activation::Swiglu: {
    const double alpha = form.alpha.value_or(1.0f);
    return static_cast<float>(alpha != 0.0 ? z / alpha : z); // alpha 0: z is 0 for every gate
  }
  case Activation::GeluTanh: {
    const double k1 = 2.0 * std::sqrt(2.0 / M_PI);
    const double k3 = k1 * 0.044715;
    double lo = -100.0, hi = 0.0;
    for (int i = 0; i < 100; ++i) {
      const double mid = 0.5 * (lo + hi);
      (mid * (k1 + k3 * mid * mid) < z ? lo : hi) = mid;
    }
    return static_cast<float>(lo);
  }
  default:
    return static_cast<float>(z);
  }
}

} // namespace

void fillRow(const KernelSpec& spec, uint8_t* x, int64_t row, int64_t ldx, RowPattern pattern) {
  const int64_t h = spec.hidden;
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float huge = largestFinite(spec.inDtype);
  const float mixed[] = {0.0f, -0.0f, nan,  inf, -inf, huge, -huge, smallestSubnormal(spec.inDtype),
                         1.5f, -3.0f, 0.25f};
  constexpr int64_t kMixed = sizeof(mixed) / sizeof(mixed[0]);
  const float sub = smallestSubnormal(spec.inDtype);
  const float tinyGates[] = {-0.0f, sub, -sub, 0x1p-120f, -0x1p-110f, 0x1p-100f, 1e-30f, 0.5f};
  const float nearGateMin[] = {-86.5f, -87.0f, -87.25f, -87.5f, -88.0f, -88.5f, -88.7f, 1.0f};
  // Around swiglu's usual limits (7 for gpt-oss, 1 for tests), both signs.
  const float limits[] = {7.0f,
                          std::nextafter(7.0f, 8.0f),
                          std::nextafter(7.0f, 0.0f),
                          -7.0f,
                          std::nextafter(-7.0f, -8.0f),
                          std::nextafter(-7.0f, 0.0f),
                          1.0f,
                          std::nextafter(1.0f, 2.0f),
                          -1.0f,
                          inf,
                          -inf,
                          100.0f,
                          -100.0f,
                          0.5f,
                          -3.0f,
                          huge};
  constexpr int64_t kLimits = sizeof(limits) / sizeof(limits[0]);
  const int64_t g = spec.groupSize;
  for (int64_t i = 0; i < h; ++i) {
    float gate = 0.0f;
    float up = 0.0f;
    switch (pattern) {
    case RowPattern::Zeros:
      break;
    case RowPattern::NaNs:
      gate = up = nan;
      break;
    case RowPattern::Infs:
      gate = i % 2 == 0 ? inf : -inf;
      up = i % 3 == 0 ? -inf : inf;
      break;
    case RowPattern::Huge:
      gate = i % 2 == 0 ? huge : -huge;
      up = i % 3 == 0 ? -huge : huge;
      break;
    case RowPattern::Mixed:
      gate = mixed[i % kMixed];
      up = mixed[(3 * i + 1) % kMixed];
      break;
    case RowPattern::Edges: {
      const int64_t col = i % g;
      const float bigUp = col % 2 == 0 ? huge / 2 : -huge / 4;
      switch (i / g % 4) {
      case 0:
        gate = tinyGates[col % 8];
        up = col % 3 == 2 ? 3.0f : bigUp;
        break;
      case 1:
        gate = nearGateMin[col % 8];
        up = bigUp;
        break;
      case 2:
        gate = static_cast<float>(col % 7 - 3) * 0.75f;
        up = 2.0f;
        if (col == g / 2)
          gate = up = huge; // y = Inf
        if (col == g / 2 + 1)
          gate = up = 1e19f; // y near 1e38 (Inf where 1e19 is not finite)
        break;
      default:
        gate = 1.0f + 0.01f * static_cast<float>(col);
        up = std::ldexp(col % 2 ? -1.0f : 1.0f, static_cast<int>(col % 60) - 30);
        break;
      }
      break;
    }
    case RowPattern::Tails: {
      const int64_t col = i % g;
      const double zs[] = {-86.9, -87.0, -87.2, -87.5, -88.0, -88.4, -88.7, -89.5};
      const float tailGate = gateOfZ(spec, zs[col % 8]);
      const float sign = col % 2 == 0 ? 1.0f : -1.0f;
      auto capped = [&](int e) { return sign * std::fmin(std::ldexp(1.0f, e), huge); };
      switch (i / g % 4) {
      case 0:
        gate = tailGate;
        up = capped(100);
        break;
      case 1:
        gate = tailGate;
        up = capped(60 + static_cast<int>(col % 40));
        break;
      case 2:
        gate = tailGate;
        up = capped(20 + static_cast<int>(col % 31));
        break;
      default:
        gate = col % 2 == 0 ? static_cast<float>(col % 7 - 3) * 0.75f : tailGate;
        up = capped(static_cast<int>(col % 100));
        break;
      }
      break;
    }
    case RowPattern::Sweep: {
      const auto bits = static_cast<uint16_t>((row * h + i) & 0xffff);
      gate = spec.inDtype == InDtype::FP16 ? fp16ToFloat(bits) : bf16ToFloat(bits);
      up = 1.0f + static_cast<float>(i % 8) / 8.0f;
      break;
    }
    case RowPattern::Limits: {
      const int64_t col = i % g;
      gate = limits[col % kLimits];
      up = limits[(5 * col + 3) % kLimits];
      if (col == 1)
        gate = nan;
      if (col == 2)
        up = nan;
      break;
    }
    }
    storeInput(spec.inDtype, x, row * ldx + inputColumn(spec, i, false), gate);
    storeInput(spec.inDtype, x, row * ldx + inputColumn(spec, i, true), up);
  }
}

} // namespace bqjit::ref
