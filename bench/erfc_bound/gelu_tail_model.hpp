// The kernel's gelu tail (templates/activations.cuh, normalTail) written
// again on the CPU, step by step with fmaf, from the template's own
// constants, and its error against the reference's Phi(g) = 0.5f *
// float(erfc(-g / sqrt 2)) in double. rcp.approx and ex2.approx are taken
// as the correctly rounded result moved by a given number of ulps (their
// documented bounds are 1 and 2). Used by bench_erfc_bound (every gate) and
// tests/test_gelu_tail (every 16-bit gate, a sample of fp32 ones).
#pragma once

#include "reference/reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace bqjit::gelu_tail {

// The same bits as another 4-byte type (std::bit_cast before C++20).
template <class To, class From> To bitCast(From from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
}
inline float bitsToFloat(uint32_t u) {
  return bitCast<float>(u);
}
inline uint32_t floatToBits(float f) {
  return bitCast<uint32_t>(f);
}
// v moved by k ulps away from zero (k > 0) or towards it.
inline float moveUlps(float v, int k) {
  if (k == 0 || v == 0.0f || !std::isfinite(v))
    return v;
  return bitsToFloat(floatToBits(v) + static_cast<uint32_t>(k));
}

struct Constants {
  float halfLog2e, xMax;
  float p[10];
};

inline Constants readConstants(const std::string& dir) {
  // Every header of the template, in one text (the constants live in two).
  std::stringstream ss;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".cuh")
      continue;
    std::ifstream in(entry.path());
    if (!in)
      throw std::runtime_error("gelu_tail_model: cannot read " + entry.path().string());
    ss << in.rdbuf() << '\n';
  }
  const std::string src = ss.str();
  if (src.empty())
    throw std::runtime_error("gelu_tail_model: no template header (.cuh) in " + dir);
  std::map<std::string, float> scalars;
  const std::regex scalar(R"(inline constexpr float (k\w+) = ([-+0-9a-fA-Fxp.]+)f;)");
  for (auto it = std::sregex_iterator(src.begin(), src.end(), scalar); it != std::sregex_iterator();
       ++it)
    scalars[(*it)[1]] = std::strtof((*it)[2].str().c_str(), nullptr);
  Constants c{};
  for (const char* name : {"kHalfLog2e", "kGeluXMax"})
    if (!scalars.count(name))
      throw std::runtime_error(std::string("gelu_tail_model: the template has no constant ") +
                               name);
  c.halfLog2e = scalars["kHalfLog2e"];
  c.xMax = scalars["kGeluXMax"];
  std::smatch m;
  if (!std::regex_search(src, m, std::regex(R"(kGeluP\[10\] = \{([^}]*)\})")))
    throw std::runtime_error("gelu_tail_model: the template has no kGeluP[10]");
  std::stringstream list(m[1].str());
  std::string item;
  int n = 0;
  while (std::getline(list, item, ',')) {
    if (n == 10)
      throw std::runtime_error("gelu_tail_model: kGeluP has more than 10 values");
    c.p[n++] = std::strtof(item.c_str(), nullptr);
  }
  if (n != 10)
    throw std::runtime_error("gelu_tail_model: kGeluP has " + std::to_string(n) +
                             " values, not 10");
  return c;
}

// The template's normalTail(g), step by step: Q(|g|) = erfc(|g| / sqrt 2) / 2.
inline float tailModel(const Constants& c, float g, bool fp32Gate, int rcpUlps, int ex2Ulps) {
  const float x = std::fmin(std::fabs(g), c.xMax);
  const float d = std::fmaf(x, 0.25f, 1.0f);
  float t = moveUlps(1.0f / d, rcpUlps);
  if (fp32Gate) {
    const float dlo = std::fmaf(x, 0.25f, 1.0f - d);
    t = std::fmaf(t, std::fmaf(-t, dlo, std::fmaf(-d, t, 1.0f)), t);
  } else {
    t = std::fmaf(t, std::fmaf(-d, t, 1.0f), t);
  }
  float p = c.p[9];
  for (int i = 8; i >= 0; --i)
    p = std::fmaf(p, t, c.p[i]);
  const float hi = x * x;
  const float m = std::fmax(std::fmaf(hi, -c.halfLog2e, 0x1.8p23f), 0x1.8p23f - 126.0f);
  const float n = m - 0x1.8p23f;
  float r = std::fmaf(hi, -c.halfLog2e, -n);
  if (fp32Gate)
    r = std::fmaf(std::fmaf(x, x, -hi), -c.halfLog2e, r);
  float e = moveUlps(static_cast<float>(std::exp2(static_cast<double>(r + p))), ex2Ulps);
  if (std::fabs(e) < 0x1p-126f)
    e = 0.0f; // ex2.approx.ftz
  const float pow2n = bitsToFloat((floatToBits(m) << 23) + (127u << 23));
  return (t * e) * pow2n;
}

struct Worst {
  double negative = 0, positive = 0;
  float atNegative = 0, atPositive = 0;
  long subnormal = 0, subnormalDiffer = 0, subnormalUlps = 0;

  void add(const Constants& c, float g, bool fp32Gate, int rcpUlps, int ex2Ulps) {
    const float want = 0.5f * static_cast<float>(std::erfc(-static_cast<double>(g) * M_SQRT1_2));
    const float q = tailModel(c, g, fp32Gate, rcpUlps, ex2Ulps);
    const float got = g < 0.0f ? q : 1.0f - q;
    if (std::fabs(want) < 0x1p-126f) {
      if (want != 0.0f || got != 0.0f) {
        ++subnormal;
        subnormalDiffer += got != want;
        subnormalUlps = std::max(subnormalUlps, std::labs(static_cast<long>(floatToBits(got)) -
                                                          static_cast<long>(floatToBits(want))));
      }
      return;
    }
    const double rel =
        std::fabs(static_cast<double>(got) - want) / std::fabs(static_cast<double>(want));
    double& worst = g < 0.0f ? negative : positive;
    if (rel > worst) {
      worst = rel;
      (g < 0.0f ? atNegative : atPositive) = g;
    }
  }
  void merge(const Worst& w) {
    if (w.negative > negative) {
      negative = w.negative;
      atNegative = w.atNegative;
    }
    if (w.positive > positive) {
      positive = w.positive;
      atPositive = w.atPositive;
    }
    subnormal += w.subnormal;
    subnormalDiffer += w.subnormalDiffer;
    subnormalUlps = std::max(subnormalUlps, w.subnormalUlps);
  }
};

// rcp.approx and ex2.approx exact, then 1 and 2 ulp off in each direction.
inline constexpr int kUlpCases[5][2] = {{0, 0}, {1, 2}, {1, -2}, {-1, 2}, {-1, -2}};

// Every finite gate of the type: bf16 and fp16 whole, fp32 over |g| in [2^-30, 14.3].
enum class Gates { Bf16, Fp16, Fp32 };

inline Worst measure(const Constants& c, Gates gates, int rcpUlps, int ex2Ulps,
                     uint32_t fp32Stride = 1) {
  Worst all;
  if (gates != Gates::Fp32) {
    for (uint32_t u = 0; u < 0x10000; ++u) {
      if (gates == Gates::Bf16 ? (u & 0x7f80) == 0x7f80 : (u & 0x7c00) == 0x7c00)
        continue; // inf and NaN
      const auto bits = static_cast<uint16_t>(u);
      all.add(c, gates == Gates::Bf16 ? ref::bf16ToFloat(bits) : ref::fp16ToFloat(bits), false,
              rcpUlps, ex2Ulps);
    }
    return all;
  }
  const uint32_t first = floatToBits(0x1p-30f), last = floatToBits(14.3f);
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<Worst> parts(threads);
  std::vector<std::thread> pool;
  for (unsigned k = 0; k < threads; ++k)
    pool.emplace_back([&, k] {
      for (uint64_t u = first + uint64_t(k) * fp32Stride; u <= last;
           u += uint64_t(threads) * fp32Stride)
        for (const uint32_t sign : {0u, 0x80000000u})
          parts[k].add(c, bitsToFloat(static_cast<uint32_t>(u) | sign), true, rcpUlps, ex2Ulps);
    });
  for (auto& t : pool)
    t.join();
  for (const Worst& w : parts)
    all.merge(w);
  return all;
}

} // namespace bqjit::gelu_tail
