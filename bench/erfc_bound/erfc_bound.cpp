// Measures the error of the kernel's erfc (templates/activations.cuh,
// erfcFast) over every fp32 argument, as gelu uses it: Phi(x) = erfc(-x) / 2
// against the reference's 0.5f * float(erfc(double)), for every x with
// |x| in [2^-30, 10.2] and both signs. The constants are read from the
// template's headers themselves; the steps are the template's, written again here with
// fmaf, with rcp.approx and ex2.approx taken as the correctly rounded result
// moved by a given number of ulps (their documented bounds are 1 and 2).
//
// Usage: erfc_bound [TEMPLATE_DIR] (default: the source tree's templates/)
// Prints the largest relative error of Phi where it is a normal number, for
// the approximate instructions exact and for each combination of them off
// by (+-1, +-2) ulps, and how many subnormal Phi differ from the reference.
#include <cmath>
#include <cstdint>
#include <cstdio>
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

namespace {

float bitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t floatToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// v moved by k ulps away from zero (k > 0) or towards it.
float moveUlps(float v, int k) {
  if (k == 0 || v == 0.0f || !std::isfinite(v))
    return v;
  return bitsToFloat(floatToBits(v) + static_cast<uint32_t>(k));
}

struct Constants {
  float s1, s0, ln2Hi, ln2Lo, log2e;
  float p[10];
};

Constants readConstants(const std::string& dir) {
  // Every header of the template, in one text (the constants live in two).
  std::stringstream ss;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".cuh")
      continue;
    std::ifstream in(entry.path());
    if (!in)
      throw std::runtime_error("erfc_bound: cannot read " + entry.path().string());
    ss << in.rdbuf() << '\n';
  }
  const std::string src = ss.str();
  if (src.empty())
    throw std::runtime_error("erfc_bound: no template header (.cuh) in " + dir);
  std::map<std::string, float> scalars;
  const std::regex scalar(R"(inline constexpr float (k\w+) = ([-+0-9a-fA-Fxp.]+)f;)");
  for (auto it = std::sregex_iterator(src.begin(), src.end(), scalar); it != std::sregex_iterator();
       ++it)
    scalars[(*it)[1]] = std::strtof((*it)[2].str().c_str(), nullptr);
  Constants c{};
  for (const char* name : {"kErfcS1", "kErfcS0", "kLn2Hi", "kLn2Lo", "kLog2e"})
    if (!scalars.count(name))
      throw std::runtime_error(std::string("erfc_bound: the template has no constant ") + name);
  c.s1 = scalars["kErfcS1"];
  c.s0 = scalars["kErfcS0"];
  c.ln2Hi = scalars["kLn2Hi"];
  c.ln2Lo = scalars["kLn2Lo"];
  c.log2e = scalars["kLog2e"];
  std::smatch m;
  if (!std::regex_search(src, m, std::regex(R"(kErfcP\[10\] = \{([^}]*)\})")))
    throw std::runtime_error("erfc_bound: the template has no kErfcP[10]");
  std::stringstream list(m[1].str());
  std::string item;
  int n = 0;
  while (std::getline(list, item, ',')) {
    if (n == 10)
      throw std::runtime_error("erfc_bound: kErfcP has more than 10 values");
    c.p[n++] = std::strtof(item.c_str(), nullptr);
  }
  if (n != 10)
    throw std::runtime_error("erfc_bound: kErfcP has " + std::to_string(n) + " values, not 10");
  return c;
}

// The template's erfcFast(a), a >= 0, step by step.
float erfcModel(const Constants& c, float a, int rcpUlps, int ex2Ulps) {
  a = std::fmin(a, 10.1f);
  const float d = std::fmaf(0.5f, a, 1.0f);
  const float dlo = std::fmaf(0.5f, a, 1.0f - d);
  float t = moveUlps(1.0f / d, rcpUlps);
  t = std::fmaf(t, std::fmaf(-t, dlo, std::fmaf(-d, t, 1.0f)), t);
  const float s = std::fmaf(t, c.s1, c.s0);
  float p = c.p[9];
  for (int i = 8; i >= 0; --i)
    p = std::fmaf(p, s, c.p[i]);
  const float hi = a * a;
  const float lo = std::fmaf(a, a, -hi);
  const float n = std::fmax(std::fmaf(hi, -c.log2e, 0x1.8p23f) - 0x1.8p23f, -126.0f);
  const float r = std::fmaf(n, -c.ln2Lo, std::fmaf(n, -c.ln2Hi, -hi));
  const float x2 = std::fmaf(r, c.log2e, std::fmaf(lo, -c.log2e, p));
  float e = moveUlps(static_cast<float>(std::exp2(static_cast<double>(x2))), ex2Ulps);
  if (std::fabs(e) < 0x1p-126f)
    e = 0.0f; // ex2.approx.ftz
  const float pow2n = bitsToFloat(static_cast<uint32_t>(static_cast<int>(n) + 127) << 23);
  return (t * e) * pow2n;
}

struct Worst {
  double negative = 0, positive = 0;
  float atNegative = 0, atPositive = 0;
  long subnormal = 0, subnormalDiffer = 0;
};

Worst measure(const Constants& c, int rcpUlps, int ex2Ulps) {
  const uint32_t first = floatToBits(0x1p-30f), last = floatToBits(10.2f);
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<Worst> parts(threads);
  std::vector<std::thread> pool;
  for (unsigned k = 0; k < threads; ++k)
    pool.emplace_back([&, k] {
      Worst& w = parts[k];
      for (uint32_t u = first + k; u <= last; u += threads)
        for (const uint32_t sign : {0u, 0x80000000u}) {
          const float x = bitsToFloat(u | sign);
          const float want = 0.5f * static_cast<float>(std::erfc(-static_cast<double>(x)));
          const float e = erfcModel(c, std::fabs(x), rcpUlps, ex2Ulps);
          const float got = x < 0.0f ? 0.5f * e : std::fmaf(-0.5f, e, 1.0f);
          if (std::fabs(want) < 0x1p-126f) {
            if (want != 0.0f || got != 0.0f) {
              ++w.subnormal;
              w.subnormalDiffer += got != want;
            }
            continue;
          }
          const double rel =
              std::fabs(static_cast<double>(got) - want) / std::fabs(static_cast<double>(want));
          double& worst = sign ? w.negative : w.positive;
          if (rel > worst) {
            worst = rel;
            (sign ? w.atNegative : w.atPositive) = x;
          }
        }
    });
  for (auto& t : pool)
    t.join();
  Worst all;
  for (const Worst& w : parts) {
    if (w.negative > all.negative) {
      all.negative = w.negative;
      all.atNegative = w.atNegative;
    }
    if (w.positive > all.positive) {
      all.positive = w.positive;
      all.atPositive = w.atPositive;
    }
    all.subnormal += w.subnormal;
    all.subnormalDiffer += w.subnormalDiffer;
  }
  return all;
}

} // namespace

int main(int argc, char** argv) {
  try {
    const Constants c = readConstants(argc > 1 ? argv[1] : BQJIT_TEMPLATE_DIR);
    std::printf("Phi(x) = erfc(-x) / 2 against 0.5f * float(erfc(double)), every fp32 |x| in "
                "[2^-30, 10.2]\n");
    std::printf("%5s %5s | %-26s | %-26s | subnormal Phi differing\n", "rcp", "ex2",
                "x < 0: worst rel (at x)", "x > 0: worst rel (at x)");
    const int cases[][2] = {{0, 0}, {1, 2}, {1, -2}, {-1, 2}, {-1, -2}};
    double worst = 0;
    for (const auto& k : cases) {
      const Worst w = measure(c, k[0], k[1]);
      std::printf("%+5d %+5d | %.3e (%-12.9g) | %.3e (%-12.9g) | %ld of %ld\n", k[0], k[1],
                  w.negative, w.atNegative, w.positive, w.atPositive, w.subnormalDiffer,
                  w.subnormal);
      worst = std::max({worst, w.negative, w.positive});
    }
    std::printf("largest relative error over these cases: %.3e (the scales may differ by 1e-6)\n",
                worst);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
}
