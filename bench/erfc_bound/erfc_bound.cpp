// The error of gelu's tail in the kernel (gelu_tail_model.hpp) over every
// bf16 and every fp16 gate and every fp32 gate with |g| in [2^-30, 14.3],
// both signs: the measurement behind docs/contract.md section 6.
//
// Usage: erfc_bound [TEMPLATE_DIR] (default: the source tree's templates/)
// Prints, for each input type, the largest relative error of Phi where it is
// a normal number, for the approximate instructions exact and for each
// combination of them off by (+-1, +-2) ulps, and how many subnormal Phi
// differ from the reference (and by how many ulps at most).
#include "gelu_tail_model.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>

using namespace bqjit::gelu_tail;

int main(int argc, char** argv) {
  try {
    const Constants c = readConstants(argc > 1 ? argv[1] : BQJIT_TEMPLATE_DIR);
    std::printf("Phi(g) = 0.5 erfc(-g / sqrt 2) against 0.5f * float(erfc(double)): every bf16 "
                "and fp16 gate, every fp32 |g| in [2^-30, 14.3]\n");
    std::printf("%-5s %4s %4s | %-26s | %-26s | subnormal Phi differing (ulps)\n", "gate", "rcp",
                "ex2", "g < 0: worst rel (at g)", "g > 0: worst rel (at g)");
    const std::pair<Gates, const char*> types[] = {
        {Gates::Bf16, "bf16"}, {Gates::Fp16, "fp16"}, {Gates::Fp32, "fp32"}};
    double worst = 0;
    for (const auto& [gates, name] : types)
      for (const auto& k : kUlpCases) {
        const Worst w = measure(c, gates, k[0], k[1]);
        std::printf("%-5s %+4d %+4d | %.3e (%-12.9g) | %.3e (%-12.9g) | %ld of %ld (%ld)\n", name,
                    k[0], k[1], w.negative, w.atNegative, w.positive, w.atPositive,
                    w.subnormalDiffer, w.subnormal, w.subnormalUlps);
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
