// The kernel on the GPU against the CPU reference (docs/contract.md tolerance), with
// outputs poisoned before every launch. Skips without a GPU.
#include <algorithm>
#include <atomic>
#include <numeric>
#include <set>
#include <string>
#include <thread>

#include "gpu_harness.hpp"
#include "planner/launch_heuristic.hpp"
#include "planner/planner.hpp"

namespace bqjit::test {
namespace {

const int kHidden[] = {128, 768, 2048, 7168, 14336, 18432, 25600};
const int kGroups[] = {16, 32, 48, 64, 96, 128, 192, 256, 512, 1024};
const int64_t kTokens[] = {1, 3, 16, 255, 1024, 4097};

KernelSpec makeSpec(int h, int g, InDtype in, OutDtype out, ScaleLayout layout, bool ue8m0,
                    bool ub) {
  KernelSpec s;
  s.hidden = h;
  s.groupSize = g;
  s.inDtype = in;
  s.outDtype = out;
  s.scaleLayout = layout;
  s.ue8m0 = ue8m0 || layout == ScaleLayout::Ue8m0Packed;
  s.hasScaleUb = ub;
  return s;
}

// swiglu's parameter sets: gpt-oss (alpha 1.702, beta 1, limit 7), the
// clamped SwiGLU of DeepSeek-V4-style checkpoints (alpha 1, beta 0, limit 7)
// and one without a clamp.
void setActivation(KernelSpec& s, Activation a, int variant) {
  s.activation = a;
  if (a != Activation::Swiglu)
    return;
  switch (variant % 3) {
  case 0:
    s.alpha = 1.702f;
    s.beta = 1.0f;
    s.limit = 7.0f;
    break;
  case 1:
    s.limit = 7.0f;
    break;
  default:
    s.alpha = 1.702f;
    s.beta = -0.5f;
    break;
  }
}

// docs/contract.md sections 6 and 7: every activation x gate_up x input type x output
// type (the full product of those four), each case with a rounding (floor for
// fp8 outputs in every other case), a power-of-two or fp32 scale layout, odd G
// (48, 96, 160) among others and odd T; a third of the cases carry special rows
// (NaN, Inf, huge, swiglu's limits, the fast division's edges). Then the MX
// shapes of gpt-oss and masked batches. ActivationCasesArePairwise checks the
// pairs.
void appendActivationCases(std::vector<GpuCase>& cases, uint64_t& seed) {
  const int groups[] = {48, 96, 160, 32, 128};
  const int64_t tokens[] = {1, 3, 17, 255, 7, 1025};
  const ScaleLayout fp32Layouts[] = {ScaleLayout::Row, ScaleLayout::Col, ScaleLayout::ColTma};
  const ScaleLayout pow2Layouts[] = {ScaleLayout::Bytes, ScaleLayout::Ue8m0Packed, ScaleLayout::Row,
                                     ScaleLayout::ColTma};
  int k = 0;
  for (Activation a :
       {Activation::Silu, Activation::Swiglu, Activation::GeluTanh, Activation::Gelu})
    for (GateUp gu : {GateUp::Split, GateUp::Interleaved})
      for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32})
        for (OutDtype out : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8}) {
          const int g = groups[k % 5];
          const bool floor = out != OutDtype::INT8 && (k + k / 9) % 2 == 0;
          const bool pow2 = floor || k % 3 == 0;
          const ScaleLayout layout = pow2 ? pow2Layouts[k % 4] : fp32Layouts[k % 3];
          GpuCase c;
          c.spec = makeSpec(g * (k % 2 ? 15 : 6), g, in, out, layout, pow2, false);
          setActivation(c.spec, a, k / 2);
          c.spec.gateUp = gu;
          c.spec.scaleRounding = floor ? ScaleRounding::Floor : ScaleRounding::Ceil;
          c.tokens = tokens[k % 6];
          c.ldxPad = k % 4 == 1 ? 8 : 0;
          if ((k + k / 3) % 3 == 2) {
            c.tokens = std::max<int64_t>(c.tokens, 9);
            c.specialRows = {{0, ref::RowPattern::Limits}, {1, ref::RowPattern::Mixed},
                             {2, ref::RowPattern::Huge},   {4, ref::RowPattern::Edges},
                             {5, ref::RowPattern::NaNs},   {6, ref::RowPattern::Infs},
                             {8, ref::RowPattern::Zeros}};
          }
          c.seed = seed++;
          cases.push_back(c);
          ++k;
        }
  // gpt-oss (H 2880, which 128 does not divide): MXFP8 (G 32, floor, bytes)
  // and G 64 (ceil, col_tma); H padded to 3072 at G 128. Interleaved swiglu,
  // odd token counts up to many tokens.
  for (auto [h, g] : {std::pair<int, int>{2880, 32}, {2880, 64}, {3072, 128}}) {
    for (int64_t t : {1, 33, 1025}) {
      GpuCase c;
      const bool mx = g == 32;
      c.spec = makeSpec(h, g, InDtype::BF16, OutDtype::FP8E4M3,
                        mx ? ScaleLayout::Bytes : ScaleLayout::ColTma, true, false);
      setActivation(c.spec, Activation::Swiglu, 0);
      c.spec.gateUp = GateUp::Interleaved;
      c.spec.scaleRounding = mx ? ScaleRounding::Floor : ScaleRounding::Ceil;
      c.tokens = t;
      if (t >= 33)
        c.specialRows = {{3, ref::RowPattern::Limits}, {7, ref::RowPattern::Mixed}};
      c.seed = seed++;
      cases.push_back(c);
    }
  }
  // Masked batches and a binding scale bound with the new activations.
  for (Activation a : {Activation::Swiglu, Activation::Gelu}) {
    GpuCase c;
    const bool bytes = a == Activation::Swiglu;
    c.spec = makeSpec(2048, 128, InDtype::BF16, OutDtype::FP8E4M3,
                      bytes ? ScaleLayout::Bytes : ScaleLayout::ColTma, bytes, false);
    setActivation(c.spec, a, 0);
    c.spec.gateUp = bytes ? GateUp::Interleaved : GateUp::Split;
    c.spec.scaleRounding = bytes ? ScaleRounding::Floor : ScaleRounding::Ceil;
    c.spec.masked = true;
    c.tokens = 37;
    c.experts = 4;
    c.maskedM = {37, 0, 5, 20};
    c.seed = seed++;
    cases.push_back(c);
  }
  // gelu_tanh's gates from about -10 down make z = 2w <= kFastGateMin, where
  // the fast path scales its division, and from about -10.2 down 1 + exp(-z)
  // overflows: inputs this wide put such gates in most groups, of split and
  // interleaved gate/up.
  for (auto [in, gu] : {std::pair{InDtype::BF16, GateUp::Split},
                        {InDtype::FP16, GateUp::Split},
                        {InDtype::FP32, GateUp::Split},
                        {InDtype::BF16, GateUp::Interleaved}})
    for (float inputScale : {6.0f, 30.0f}) {
      GpuCase c;
      c.spec = makeSpec(2048, 128, in, OutDtype::FP8E4M3, ScaleLayout::Row, false, false);
      setActivation(c.spec, Activation::GeluTanh, 0);
      c.spec.gateUp = gu;
      c.tokens = 129;
      c.inputScale = inputScale;
      c.seed = seed++;
      cases.push_back(c);
    }
  // Tail rows (gates where 1 + exp(-z) nears 2^126 or overflows, times ups
  // up to 2^100): gelu_tanh's division unscaled for bf16 (no gate in the
  // band) and for fp16 under the default floor, scaled for fp32, for fp16
  // under a min_scale of 2^-100 (where its tail reaches codes) and under
  // floor rounding; silu and swiglu send such groups to the exact path.
  {
    struct TailCase {
      Activation a;
      InDtype in;
      OutDtype out;
      GateUp gu;
      ScaleLayout layout;
      int g;
      float minScale;
      bool floor;
    };
    const TailCase tails[] = {
        {Activation::GeluTanh, InDtype::BF16, OutDtype::FP8E4M3, GateUp::Split, ScaleLayout::Row,
         128, 0.0f, false},
        {Activation::GeluTanh, InDtype::BF16, OutDtype::FP8E5M2, GateUp::Interleaved,
         ScaleLayout::Col, 96, 0.0f, false},
        {Activation::GeluTanh, InDtype::FP16, OutDtype::FP8E4M3, GateUp::Split, ScaleLayout::ColTma,
         128, 0.0f, false},
        {Activation::GeluTanh, InDtype::FP16, OutDtype::INT8, GateUp::Interleaved, ScaleLayout::Row,
         160, 0.0f, false},
        {Activation::GeluTanh, InDtype::FP16, OutDtype::FP8E4M3, GateUp::Split, ScaleLayout::Row,
         128, 0x1p-100f, false},
        {Activation::GeluTanh, InDtype::FP16, OutDtype::FP8E4M3, GateUp::Interleaved,
         ScaleLayout::Bytes, 32, 0.0f, true},
        {Activation::GeluTanh, InDtype::FP32, OutDtype::FP8E4M3, GateUp::Split, ScaleLayout::Row,
         128, 0.0f, false},
        {Activation::GeluTanh, InDtype::FP32, OutDtype::FP8E5M2, GateUp::Interleaved,
         ScaleLayout::Bytes, 32, 0.0f, false},
        {Activation::Silu, InDtype::FP32, OutDtype::FP8E4M3, GateUp::Split, ScaleLayout::Row, 128,
         0.0f, false},
        {Activation::Swiglu, InDtype::FP16, OutDtype::FP8E4M3, GateUp::Interleaved,
         ScaleLayout::Row, 64, 0.0f, false},
    };
    for (const TailCase& t : tails) {
      GpuCase c;
      const bool pow2 = t.layout == ScaleLayout::Bytes;
      c.spec = makeSpec(16 * t.g, t.g, t.in, t.out, t.layout, pow2, false);
      setActivation(c.spec, t.a, 2);
      c.spec.gateUp = t.gu;
      c.spec.scaleRounding = t.floor ? ScaleRounding::Floor : ScaleRounding::Ceil;
      if (t.minScale > 0.0f)
        c.spec.minScale = t.minScale;
      c.tokens = 9;
      for (int64_t row : {0, 2, 3, 7})
        c.specialRows.push_back({row, ref::RowPattern::Tails});
      c.seed = seed++;
      cases.push_back(c);
    }
  }
  // Every 16-bit gate value (RowPattern::Sweep) through each activation's
  // device math: the activation's reciprocal and exp are approximations
  // within the contract's tolerance, which these cases measure at every
  // input a 16-bit format has, with fp32 and power-of-two scales.
  {
    int k = 0;
    for (Activation a :
         {Activation::Silu, Activation::Swiglu, Activation::GeluTanh, Activation::Gelu})
      for (InDtype in : {InDtype::BF16, InDtype::FP16}) {
        GpuCase c;
        const bool pow2 = k % 2 == 1;
        c.spec = makeSpec(2048, 128, in, k % 3 == 2 ? OutDtype::INT8 : OutDtype::FP8E4M3,
                          pow2 ? ScaleLayout::Bytes : ScaleLayout::Row, pow2, false);
        setActivation(c.spec, a, k);
        c.spec.gateUp = k % 4 < 2 ? GateUp::Split : GateUp::Interleaved;
        c.tokens = 32; // 32 x 2048 = 2^16 gates
        for (int64_t r = 0; r < c.tokens; ++r)
          c.specialRows.push_back({r, ref::RowPattern::Sweep});
        c.seed = seed++;
        cases.push_back(c);
        ++k;
      }
  }
  for (Activation a : {Activation::GeluTanh, Activation::Swiglu}) {
    GpuCase c;
    c.spec = makeSpec(4096, 128, InDtype::FP32, OutDtype::INT8, ScaleLayout::Row, false, true);
    setActivation(c.spec, a, 1);
    c.spec.gateUp = GateUp::Interleaved;
    c.scaleUb = 1e-3f;
    c.tokens = 5;
    c.specialRows = {{1, ref::RowPattern::Edges}, {3, ref::RowPattern::Limits}};
    c.seed = seed++;
    cases.push_back(c);
  }
}

// min_scale, the scale's floor as a spec field: values that bite in many
// groups (small inputs), vLLM's fl32(1e-10 / 448) with all-zero rows, every
// output type and fp32 / power-of-two layouts, a scale bound below the floor
// (every scale is then the floor, and large y saturate), a masked batch and
// an activation. MinScaleCasesHaveGroupsAtTheFloor checks that the floor bites.
void appendMinScaleCases(std::vector<GpuCase>& cases, uint64_t& seed) {
  struct Row {
    int h, g;
    InDtype in;
    OutDtype out;
    ScaleLayout layout;
    bool pow2, ub;
    float minScale;
    int64_t tokens;
    int64_t ldxPad;
  };
  const float vllmFloor = 0x1.f6a246p-43f; // fl32(fl32(1e-10) / 448)
  const Row rows[] = {
      {2048, 128, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::Row, false, false, 1e-3f, 33, 0},
      {2304, 96, InDtype::FP16, OutDtype::FP8E4M3, ScaleLayout::Col, false, false, vllmFloor, 17,
       8},
      {768, 64, InDtype::FP32, OutDtype::INT8, ScaleLayout::ColTma, false, false, 3e-3f, 255, 8},
      {4096, 128, InDtype::BF16, OutDtype::FP8E5M2, ScaleLayout::Row, false, false, 1e-5f, 5, 0},
      {2048, 128, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::ColTma, true, false, 1e-3f, 1025,
       0},
      {2048, 128, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::Ue8m0Packed, true, false, 1e-3f, 7,
       0},
      {1536, 48, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::Row, false, true, 1e-3f, 9, 0},
      {1024, 128, InDtype::FP32, OutDtype::INT8, ScaleLayout::Row, true, false, vllmFloor, 3, 0},
  };
  for (const Row& r : rows) {
    GpuCase c;
    c.spec = makeSpec(r.h, r.g, r.in, r.out, r.layout, r.pow2, r.ub);
    c.spec.minScale = r.minScale;
    c.scaleUb = r.ub ? 0.5f * r.minScale : 0.0f; // below the floor: every scale is the floor
    c.tokens = r.tokens;
    c.ldxPad = r.ldxPad;
    c.inputScale = 0.25f;
    if (c.tokens >= 9)
      c.specialRows = {{0, ref::RowPattern::Zeros}, {2, ref::RowPattern::Mixed},
                       {3, ref::RowPattern::Edges}, {5, ref::RowPattern::NaNs},
                       {6, ref::RowPattern::Huge},  {8, ref::RowPattern::Zeros}};
    else
      c.specialRows = {{0, ref::RowPattern::Zeros}};
    c.seed = seed++;
    cases.push_back(c);
  }
  GpuCase masked;
  masked.spec =
      makeSpec(2048, 128, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::Row, false, false);
  masked.spec.masked = true;
  masked.spec.minScale = 1e-3f;
  masked.tokens = 37;
  masked.experts = 4;
  masked.maskedM = {37, 0, 5, 20};
  masked.inputScale = 0.25f;
  masked.seed = seed++;
  cases.push_back(masked);
  GpuCase oss;
  oss.spec = makeSpec(2880, 64, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::ColTma, true, false);
  setActivation(oss.spec, Activation::Swiglu, 0);
  oss.spec.gateUp = GateUp::Interleaved;
  oss.spec.minScale = 1e-3f;
  oss.tokens = 33;
  oss.inputScale = 0.25f;
  oss.specialRows = {{3, ref::RowPattern::Limits}, {4, ref::RowPattern::Zeros}};
  oss.seed = seed++;
  cases.push_back(oss);
}

// The case list covers every value of every axis, and every pair of dtype x
// layout, without the full product (which would take hours of CPU reference).
std::vector<GpuCase> buildCases() {
  std::vector<GpuCase> cases;
  uint64_t seed = 1;
  // Shapes x groups: every H with every G that divides it.
  int k = 0;
  for (int h : kHidden)
    for (int g : kGroups) {
      if (h % g)
        continue;
      GpuCase c;
      c.spec = makeSpec(h, g, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::Row, false, false);
      c.tokens = kTokens[k % 4]; // 1, 3, 16, 255
      c.ldxPad = (k % 3 == 0) ? 8 * 3 : 0;
      c.seed = seed++;
      cases.push_back(c);
      ++k;
    }
  // Dtypes x layouts x bound x pow2.
  k = 0;
  for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32})
    for (OutDtype out : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8})
      for (ScaleLayout layout :
           {ScaleLayout::Row, ScaleLayout::Col, ScaleLayout::ColTma, ScaleLayout::Ue8m0Packed})
        for (bool pow2 : {false, true})
          for (bool ub : {false, true}) {
            if (layout == ScaleLayout::Ue8m0Packed && !pow2)
              continue;
            GpuCase c;
            const int h = (k % 2) ? 2304 : 768;
            const int g = (k % 3 == 0) ? 96 : (k % 3 == 1 ? 128 : 48);
            c.spec = makeSpec(h, g, in, out, layout, pow2, ub);
            c.tokens = std::vector<int64_t>{3, 16, 255, 1024}[k % 4];
            c.ldxPad = (k % 2) ? 16 : 0;
            // A bound below most groups' amax / QMAX so that it bites.
            c.scaleUb = 0.5f * 4.0f / quantMax(out);
            c.seed = seed++;
            cases.push_back(c);
            ++k;
          }
  // Every token count at two shapes. 8192 x 4097 is just over the
  // very-many-token limit (2^25 elements): the bulk shape, by T.
  static_assert(int64_t(8192) * 4097 > regimeMaxElements(Regime::ManyTokens) &&
                    int64_t(8192) * 4096 == regimeMaxElements(Regime::ManyTokens),
                "the last token count must cross into the bulk regime");
  for (int64_t t : kTokens)
    for (auto [h, g] : {std::pair<int, int>{8192, 128}, {18432, 96}}) {
      GpuCase c;
      c.spec = makeSpec(h, g, InDtype::BF16, OutDtype::FP8E4M3,
                        t % 2 ? ScaleLayout::ColTma : ScaleLayout::Row, false, false);
      c.tokens = t;
      c.seed = seed++;
      cases.push_back(c);
    }
  // Special rows: zeros, NaN, Inf, huge and mixed values, for every output type.
  for (OutDtype out : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8})
    for (bool pow2 : {false, true})
      for (InDtype in : {InDtype::BF16, InDtype::FP32}) {
        GpuCase c;
        c.spec = makeSpec(2048, 128, in, out, pow2 ? ScaleLayout::Ue8m0Packed : ScaleLayout::Col,
                          pow2, !pow2);
        c.scaleUb = 1e30f; // bound present but not binding
        c.tokens = 8;
        c.specialRows = {{0, ref::RowPattern::Zeros}, {2, ref::RowPattern::NaNs},
                         {3, ref::RowPattern::Infs},  {5, ref::RowPattern::Huge},
                         {6, ref::RowPattern::Edges}, {7, ref::RowPattern::Mixed}};
        c.seed = seed++;
        cases.push_back(c);
      }
  // The limits of the fast division (see RowPattern::Edges), with a scale
  // bound that bites, so that groups with huge y take the exact quantization.
  for (OutDtype out : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8})
    for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32}) {
      GpuCase c;
      c.spec = makeSpec(4096, 128, in, out, ScaleLayout::Row, false, true);
      c.scaleUb = 1e-3f;
      c.tokens = 4;
      c.specialRows = {{1, ref::RowPattern::Edges}, {3, ref::RowPattern::Mixed}};
      c.seed = seed++;
      cases.push_back(c);
    }
  // The very-many-token shapes (blocks of 8192 elements where that takes
  // at most 512 threads: G = 128 here, the many-token shape at G = 32 and
  // 64) given explicitly, so that few tokens reach them; the last block is
  // partial and column layouts number tasks down the columns.
  k = 0;
  for (int g : {32, 64, 128})
    for (ScaleLayout layout : {ScaleLayout::Row, ScaleLayout::ColTma}) {
      GpuCase c;
      c.spec = makeSpec(2304, g, k % 2 ? InDtype::FP16 : InDtype::BF16,
                        k % 3 == 2 ? OutDtype::INT8 : OutDtype::FP8E4M3, layout, false, false);
      c.spec.shape = chooseLaunchShape(c.spec, Regime::VeryManyTokens);
      c.tokens = 77;
      c.ldxPad = (k % 2) ? 8 : 0;
      c.seed = seed++;
      cases.push_back(c);
      ++k;
    }
  // Masked MoE batches.
  for (ScaleLayout layout : {ScaleLayout::Row, ScaleLayout::ColTma}) {
    GpuCase c;
    c.spec = makeSpec(2048, 128, InDtype::BF16, OutDtype::FP8E4M3, layout, false, false);
    c.spec.masked = true;
    c.tokens = 37;
    c.experts = 4;
    c.maskedM = {37, 0, 5, 20};
    c.seed = seed++;
    cases.push_back(c);
  }
  appendActivationCases(cases, seed);
  appendMinScaleCases(cases, seed);
  return cases;
}

const std::vector<GpuCase>& allCases() {
  static const std::vector<GpuCase> cases = buildCases();
  return cases;
}

// Compiles every case's kernel up front on all cores, so the tests
// themselves measure nothing but correctness.
void compileUpFront(const std::vector<GpuCase>& cases) {
  GpuEnv& env = GpuEnv::get();
  if (!env.skipReason.empty())
    return;
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  // Every regime's variant of the device's plan, not only the one a new
  // spec's first getKernel compiles: otherwise a case would launch the
  // many-token variant standing in for its own regime's (runCase waits for
  // the variants too) and test a kernel its T does not select.
  auto profile = env.service->deviceProfile(0);
  const unsigned n = std::max(2u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < n; ++i)
    pool.emplace_back([&] {
      for (size_t c; (c = next++) < cases.size();) {
        KernelSpec s = cases[c].spec;
        s.arch = env.arch;
        auto plan =
            profile ? env.service->planner().plan(s, *profile) : env.service->planner().plan(s);
        if (!plan) {
          llvm::consumeError(plan.takeError()); // reported by the test itself
          continue;
        }
        for (const KernelSpec& v : plan->variants)
          if (auto k = env.service->compile(v); !k)
            llvm::consumeError(k.takeError());
      }
    });
  for (auto& t : pool)
    t.join();
  if (!profile)
    llvm::consumeError(profile.takeError()); // reported by the tests themselves
}

/// One case against the reference, with the allowances it used reported.
void expectMatchesReference(const GpuCase& c) {
  ref::CompareReport r = runCase(c);
  ::testing::Test::RecordProperty("allowance_used", std::to_string(r.allowanceUsed));
  EXPECT_TRUE(r.ok()) << c.name() << ": " << r.summary();
  EXPECT_GT(r.elements, 0) << c.name();
  if (r.allowanceUsed || r.scaleAllowanceUsed)
    std::printf("[allowance] %s: %s\n", c.name().c_str(), r.summary().c_str());
}

class GpuKernel : public ::testing::TestWithParam<size_t> {
protected:
  static void SetUpTestSuite() { compileUpFront(allCases()); }
};

TEST_P(GpuKernel, MatchesReference) {
  BQJIT_REQUIRE_GPU_ENV();
  expectMatchesReference(allCases()[GetParam()]);
}

// Runs without a GPU: the case list itself. Every pair of values of
// activation, gate_up, input type, output type and rounding (floor with fp8
// outputs only) appears in some case, odd G and odd T among them.
TEST(GpuKernelCases, ActivationCasesArePairwise) {
  std::set<std::string> pairs;
  std::set<int> groups;
  bool oddT = false, specialFloor = false, specialInterleaved = false;
  for (const GpuCase& c : allCases()) {
    const KernelSpec& s = c.spec;
    const std::string v[] = {std::string("act=") + toString(s.activationForm().activation),
                             std::string("gu=") + toString(s.gateUp),
                             std::string("in=") + toString(s.inDtype),
                             std::string("out=") + toString(s.outDtype),
                             std::string("round=") + toString(s.scaleRounding)};
    for (const auto& a : v)
      for (const auto& b : v)
        if (a < b)
          pairs.insert(a + " " + b);
    if (s.activationForm().activation != Activation::Silu || s.gateUp != GateUp::Split) {
      groups.insert(s.groupSize);
      oddT |= c.tokens % 2 == 1;
      specialFloor |= !c.specialRows.empty() && s.scaleRounding == ScaleRounding::Floor;
      specialInterleaved |= !c.specialRows.empty() && s.gateUp == GateUp::Interleaved;
    }
  }
  const std::vector<std::vector<std::string>> axes = {
      {"act=silu", "act=swiglu", "act=gelu_tanh", "act=gelu"},
      {"gu=split", "gu=interleaved"},
      {"in=bf16", "in=fp16", "in=fp32"},
      {"out=fp8_e4m3", "out=fp8_e5m2", "out=int8"},
      {"round=ceil", "round=floor"}};
  int missing = 0;
  for (size_t x = 0; x < axes.size(); ++x)
    for (size_t y = x + 1; y < axes.size(); ++y)
      for (const auto& a : axes[x])
        for (const auto& b : axes[y]) {
          if ((a == "out=int8" || b == "out=int8") && (a == "round=floor" || b == "round=floor"))
            continue; // rejected by the spec
          const std::string key = a < b ? a + " " + b : b + " " + a;
          if (!pairs.count(key)) {
            ADD_FAILURE() << "no case has " << key;
            ++missing;
          }
        }
  EXPECT_EQ(missing, 0);
  for (int g : {48, 96, 160})
    EXPECT_TRUE(groups.count(g)) << "G " << g;
  EXPECT_TRUE(oddT);
  EXPECT_TRUE(specialFloor);
  EXPECT_TRUE(specialInterleaved);
  // Every case is a valid spec.
  for (const GpuCase& c : allCases()) {
    llvm::Error err = c.spec.validate();
    EXPECT_FALSE(bool(err)) << c.name() << ": " << consumeToString(std::move(err));
  }
}

// Runs without a GPU: in every min_scale case the reference puts some groups
// at the floor (so the GPU test checks the field, not the default), and the
// scales there are the floor (its power-of-two ceiling with ue8m0).
TEST(GpuKernelCases, MinScaleCasesHaveGroupsAtTheFloor) {
  int withField = 0;
  for (const GpuCase& c : allCases()) {
    if (!c.spec.minScale)
      continue;
    ++withField;
    SCOPED_TRACE(c.name());
    ASSERT_FALSE(bool(c.spec.validate()));
    ref::Problem p;
    p.spec = c.spec;
    p.tokens = c.tokens;
    p.ldx = 2 * static_cast<int64_t>(c.spec.hidden) + c.ldxPad;
    p.scaleUb = c.scaleUb;
    p.numExperts = c.experts;
    p.maskedM = c.maskedM;
    std::vector<uint8_t> x =
        ref::makeInput(p.spec, c.tokens, p.ldx, c.experts, c.seed, c.inputScale);
    for (const auto& r : c.specialRows)
      ref::fillRow(p.spec, x.data(), r.row, p.ldx, r.pattern);
    const ref::Result r = ref::run(p, x.data());
    const float floor = c.spec.minScaleValue();
    EXPECT_NE(floor, minScale(c.spec.outDtype));
    int64_t atFloor = 0, below = 0;
    for (size_t i = 0; i < r.scaleValue.size(); ++i) {
      atFloor += r.scaleValue[i] == floor;
      below += r.scaleValue[i] > 0.0f && r.scaleValue[i] < floor; // 0: a masked row
    }
    EXPECT_GT(atFloor, 0);
    EXPECT_EQ(below, 0);
  }
  EXPECT_EQ(withField, 11);
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuKernel, ::testing::Range<size_t>(0, allCases().size()),
                         [](const ::testing::TestParamInfo<size_t>& info) {
                           const KernelSpec& s = allCases()[info.param].spec;
                           std::string n =
                               "c" + std::to_string(info.param) + "_H" + std::to_string(s.hidden) +
                               "_G" + std::to_string(s.groupSize) + "_" + toString(s.inDtype) +
                               "_" + toString(s.outDtype) + "_" + toString(s.scaleLayout) + "_T" +
                               std::to_string(allCases()[info.param].tokens);
                           const ActivationForm form = s.activationForm();
                           if (form.activation != Activation::Silu)
                             n += std::string("_") + toString(form.activation);
                           if (s.gateUp != GateUp::Split)
                             n += "_interleaved";
                           if (s.scaleRounding != ScaleRounding::Ceil)
                             n += "_floor";
                           if (s.minScale)
                             n += "_minscale";
                           return n;
                         });

// ---- fp4_e2m1: NVFP4, MXFP4 and swizzled_128x4 (docs/contract.md section 8) -------------
//
// Both formats (MXFP4 under ceil and floor) x every input type x the odd token
// counts 1, 3, 127, 129 and 4097, at H whose group count is not a multiple of
// 4 (swizzled_128x4 then has padding columns) and at real shapes; the bytes
// and swizzled_128x4 layouts (MXFP4 also row and ue8m0_packed); global
// scales that put block scales in the normal E4M3 range, at 448 (groups
// saturate) and among E4M3 subnormals; zero, huge and edge rows (no NaN: the
// e2m1 code of a NaN is not specified); masked batches; MXFP8 and other E8M0
// outputs in swizzled_128x4.

enum class Fp4Format { Nvfp4, MxCeil, MxFloor };

KernelSpec fp4Spec(Fp4Format f, int h, InDtype in, ScaleLayout layout) {
  KernelSpec s = makeSpec(h, f == Fp4Format::Nvfp4 ? 16 : 32, in, OutDtype::FP4E2M1, layout,
                          f != Fp4Format::Nvfp4, false);
  s.scaleRounding = f == Fp4Format::MxFloor ? ScaleRounding::Floor : ScaleRounding::Ceil;
  return s;
}

// Global scales: vLLM's 448 * 6 / amax for a tensor amax of 64 (block scales
// in E4M3's normal range for this input), one that drives every block scale
// to 448 (and most groups to saturate), one that puts them among E4M3's
// subnormals (below 2^-6).
const float kGlobalScales[] = {448.0f * 6.0f / 64.0f, 448.0f * 6.0f, 1e-3f};

std::vector<GpuCase> buildFp4Cases() {
  std::vector<GpuCase> cases;
  uint64_t seed = 5000;
  const int64_t tokens[] = {1, 3, 127, 129, 4097};
  // NG = 129, 448, 7 and 320 at G = 16; 90, 128, 65 at G = 32.
  const int nvHidden[] = {2064, 7168, 112, 5120};
  const int mxHidden[] = {2880, 4096, 2080};
  int k = 0;
  for (Fp4Format f : {Fp4Format::Nvfp4, Fp4Format::MxCeil, Fp4Format::MxFloor})
    for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32})
      for (int64_t t : tokens) {
        const bool nv = f == Fp4Format::Nvfp4;
        // The largest T at the shapes with padding columns, to bound the reference's time.
        const int h = t == 4097 ? (nv ? 2064 : 2880) : nv ? nvHidden[k % 4] : mxHidden[k % 3];
        ScaleLayout layout = k % 2 ? ScaleLayout::Bytes : ScaleLayout::Swizzled128x4;
        if (!nv && k % 5 == 4)
          layout = k % 2 ? ScaleLayout::Row : ScaleLayout::Ue8m0Packed;
        GpuCase c;
        c.spec = fp4Spec(f, h, in, layout);
        c.tokens = t;
        c.ldxPad = k % 3 == 1 ? 8 : 0;
        c.globalScale = kGlobalScales[k % 3];
        if (t >= 9)
          c.specialRows = {{0, ref::RowPattern::Zeros},
                           {2, ref::RowPattern::Huge},
                           {5, ref::RowPattern::Edges},
                           {8, ref::RowPattern::Zeros}};
        c.seed = seed++;
        cases.push_back(c);
        ++k;
      }
  // Every global scale at every input type for NVFP4 in swizzled_128x4, T = 129
  // (a second 128-row band of which one row is live).
  for (float gs : kGlobalScales)
    for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32}) {
      GpuCase c;
      c.spec = fp4Spec(Fp4Format::Nvfp4, 2064, in, ScaleLayout::Swizzled128x4);
      c.tokens = 129;
      c.globalScale = gs;
      c.specialRows = {{1, ref::RowPattern::Zeros}, {128, ref::RowPattern::Huge}};
      c.seed = seed++;
      cases.push_back(c);
    }
  // Masked batches, swizzled per expert: a live row count across a 128-row
  // band, an empty expert, one live row.
  for (Fp4Format f : {Fp4Format::Nvfp4, Fp4Format::MxCeil, Fp4Format::MxFloor}) {
    GpuCase c;
    c.spec =
        fp4Spec(f, f == Fp4Format::Nvfp4 ? 2064 : 2880, InDtype::BF16, ScaleLayout::Swizzled128x4);
    c.spec.masked = true;
    c.tokens = 200;
    c.experts = 4;
    c.maskedM = {200, 0, 129, 1};
    c.globalScale = kGlobalScales[0];
    c.specialRows = {{3, ref::RowPattern::Zeros}, {200 + 7, ref::RowPattern::Huge}};
    c.seed = seed++;
    cases.push_back(c);
  }
  {
    GpuCase c;
    c.spec = fp4Spec(Fp4Format::Nvfp4, 7168, InDtype::FP16, ScaleLayout::Bytes);
    c.spec.masked = true;
    c.tokens = 37;
    c.experts = 3;
    c.maskedM = {37, 5, 0};
    c.globalScale = kGlobalScales[2];
    c.seed = seed++;
    cases.push_back(c);
  }
  // gelu_tanh's tail rows (RowPattern::Tails): FP4 has no floor on its
  // scales, so its division stays scaled for fp16 and fp32 inputs, where the
  // tail reaches codes (MXFP4's scale follows a tiny amax down to 2^-127).
  for (auto [f, in] :
       {std::pair{Fp4Format::Nvfp4, InDtype::FP32}, {Fp4Format::MxCeil, InDtype::FP16}}) {
    GpuCase c;
    c.spec = fp4Spec(f, f == Fp4Format::Nvfp4 ? 2064 : 2880, in, ScaleLayout::Swizzled128x4);
    setActivation(c.spec, Activation::GeluTanh, 0);
    c.tokens = 9;
    c.globalScale = kGlobalScales[0];
    c.specialRows = {{0, ref::RowPattern::Tails}, {4, ref::RowPattern::Tails}};
    c.seed = seed++;
    cases.push_back(c);
  }
  // gpt-oss's activation on interleaved gate/up, both formats; MXFP4 with a
  // binding scale bound under ceil.
  for (Fp4Format f : {Fp4Format::Nvfp4, Fp4Format::MxFloor}) {
    GpuCase c;
    c.spec = fp4Spec(f, 2880, InDtype::BF16,
                     f == Fp4Format::Nvfp4 ? ScaleLayout::Swizzled128x4 : ScaleLayout::Bytes);
    setActivation(c.spec, Activation::Swiglu, 0);
    c.spec.gateUp = GateUp::Interleaved;
    c.tokens = 33;
    c.globalScale = kGlobalScales[0];
    c.specialRows = {{3, ref::RowPattern::Zeros}};
    c.seed = seed++;
    cases.push_back(c);
  }
  {
    GpuCase c;
    c.spec = fp4Spec(Fp4Format::MxCeil, 4096, InDtype::FP32, ScaleLayout::Swizzled128x4);
    c.spec.hasScaleUb = true;
    c.scaleUb = 0.25f; // below most groups' amax / 6: elements saturate
    c.tokens = 130;
    c.seed = seed++;
    cases.push_back(c);
  }
  // swizzled_128x4 in blocks of 8 rows (version 16: 256-thread blocks whose
  // warps each take one row of whole quads, the block's scale bytes staged in
  // shared memory and stored a sector at a time), at the H200's FP4 shapes
  // given explicitly (so that any T reaches them): a partial second band, a
  // single row, every global scale, fp32 in teams of 4, and MXFP8.
  struct Tiled {
    Fp4Format f;
    int h;
    InDtype in;
    LaunchShape shape;
    int64_t tokens;
    OutDtype out;
  };
  const Tiled tiled[] = {
      {Fp4Format::Nvfp4, 7168, InDtype::BF16, LaunchShape{1, 8, 256, 6}, 300, OutDtype::FP4E2M1},
      {Fp4Format::Nvfp4, 5120, InDtype::FP16, LaunchShape{1, 8, 256, 6}, 1, OutDtype::FP4E2M1},
      {Fp4Format::Nvfp4, 2048, InDtype::BF16, LaunchShape{1, 8, 256, 6}, 129, OutDtype::FP4E2M1},
      {Fp4Format::MxFloor, 4096, InDtype::BF16, LaunchShape{2, 8, 128, 6}, 257, OutDtype::FP4E2M1},
      {Fp4Format::MxCeil, 4096, InDtype::FP32, LaunchShape{4, 4, 64}, 200, OutDtype::FP4E2M1},
      {Fp4Format::MxFloor, 4096, InDtype::BF16, LaunchShape{2, 8, 128}, 131, OutDtype::FP8E4M3},
      // A block's columns continuing in the next row pair (kCols does not
      // divide the padded groups of a row: 180 and 252 by 32, 92 by 16),
      // padding columns among them at H = 4000 and 2880 (G = 32).
      {Fp4Format::Nvfp4, 2880, InDtype::BF16, LaunchShape{1, 8, 256, 6}, 300, OutDtype::FP4E2M1},
      {Fp4Format::Nvfp4, 4000, InDtype::FP16, LaunchShape{1, 8, 256, 6}, 129, OutDtype::FP4E2M1},
      {Fp4Format::MxCeil, 2880, InDtype::BF16, LaunchShape{2, 8, 128, 6}, 131, OutDtype::FP4E2M1},
      {Fp4Format::MxFloor, 2880, InDtype::BF16, LaunchShape{2, 8, 128}, 1, OutDtype::FP8E4M3},
      // Rows of fewer groups than a block's columns: a block takes 4 row pairs.
      {Fp4Format::Nvfp4, 96, InDtype::BF16, LaunchShape{1, 8, 256, 6}, 33, OutDtype::FP4E2M1},
      // Decode sizes in the few-token shapes: one partial band (64 and 97
      // rows), whose row pairs leave padding warps in every block.
      {Fp4Format::Nvfp4, 25600, InDtype::BF16, LaunchShape{2, 8, 128}, 64, OutDtype::FP4E2M1},
      {Fp4Format::MxCeil, 14336, InDtype::BF16, LaunchShape{4, 4, 64, 8}, 97, OutDtype::FP4E2M1},
      // Grids over the live row pairs of a partial band (thirty-first
      // session): 15 of 16 pairs (T = 30), all 16 (31), and 3 (T = 5) where
      // a block's 4 row pairs run into the zeroed ones; task order (128-thread
      // blocks) at 9 of 16.
      {Fp4Format::MxCeil, 2880, InDtype::BF16, LaunchShape{2, 8, 128, 6}, 30, OutDtype::FP4E2M1},
      {Fp4Format::Nvfp4, 7168, InDtype::FP16, LaunchShape{1, 8, 256, 6}, 31, OutDtype::FP4E2M1},
      {Fp4Format::Nvfp4, 96, InDtype::BF16, LaunchShape{1, 8, 256, 6}, 5, OutDtype::FP4E2M1},
      {Fp4Format::MxFloor, 2880, InDtype::BF16, LaunchShape{4, 8, 32}, 17, OutDtype::FP8E4M3}};
  int n = 0;
  for (const Tiled& tc : tiled) {
    GpuCase c;
    c.spec = fp4Spec(tc.f, tc.h, tc.in, ScaleLayout::Swizzled128x4);
    c.spec.outDtype = tc.out;
    c.spec.shape = tc.shape;
    c.tokens = tc.tokens;
    c.globalScale = kGlobalScales[n % 3];
    if (tc.tokens >= 9)
      c.specialRows = {
          {0, ref::RowPattern::Zeros}, {3, ref::RowPattern::Huge}, {7, ref::RowPattern::Edges}};
    c.seed = seed++;
    cases.push_back(c);
    ++n;
  }
  // E8M0 outputs of 8 bits in swizzled_128x4: MXFP8 (floor), e5m2 and int8 under ceil.
  int m = 0;
  for (OutDtype out : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8}) {
    GpuCase c;
    c.spec = makeSpec(2880, 32, InDtype::BF16, out, ScaleLayout::Swizzled128x4, true, false);
    c.spec.scaleRounding = out == OutDtype::FP8E4M3 ? ScaleRounding::Floor : ScaleRounding::Ceil;
    c.spec.masked = m == 2;
    c.tokens = m == 2 ? 150 : std::vector<int64_t>{127, 4097}[m];
    if (c.spec.masked) {
      c.experts = 2;
      c.maskedM = {150, 77};
    }
    c.specialRows = {{0, ref::RowPattern::Zeros}, {1, ref::RowPattern::Mixed}};
    c.seed = seed++;
    cases.push_back(c);
    ++m;
  }
  return cases;
}

const std::vector<GpuCase>& fp4Cases() {
  static const std::vector<GpuCase> cases = buildFp4Cases();
  return cases;
}

class GpuKernelFp4 : public ::testing::TestWithParam<size_t> {
protected:
  static void SetUpTestSuite() { compileUpFront(fp4Cases()); }
};

TEST_P(GpuKernelFp4, MatchesReference) {
  BQJIT_REQUIRE_GPU_ENV();
  expectMatchesReference(fp4Cases()[GetParam()]);
}

// Runs without a GPU: the FP4 case list covers what issue 18 asks for.
TEST(GpuKernelFp4Cases, CoverFormatsDtypesTokensPaddingAndGlobalScales) {
  std::set<std::string> seen;
  for (const GpuCase& c : fp4Cases()) {
    const KernelSpec& s = c.spec;
    llvm::Error err = s.validate();
    EXPECT_FALSE(bool(err)) << c.name() << ": " << consumeToString(std::move(err));
    if (s.outDtype != OutDtype::FP4E2M1) {
      seen.insert(std::string("e8m0 swizzled ") + toString(s.outDtype));
      continue;
    }
    const std::string fmt =
        s.isNvfp4() ? "nvfp4" : std::string("mxfp4 ") + toString(s.scaleRounding);
    seen.insert(fmt + " " + toString(s.inDtype));
    seen.insert(fmt + " T=" + std::to_string(c.tokens));
    seen.insert(fmt + " " + toString(s.scaleLayout));
    if (s.numGroups() % 4 != 0 && s.scaleLayout == ScaleLayout::Swizzled128x4)
      seen.insert(fmt + " padding columns");
    if (s.masked && s.scaleLayout == ScaleLayout::Swizzled128x4)
      seen.insert(fmt + " masked swizzled");
    // The template's SwizzleTiles::kOn, for these cases' shapes (none across groups).
    const int ngp = (s.numGroups() + 3) / 4 * 4;
    if (s.shape && s.scaleLayout == ScaleLayout::Swizzled128x4 && !s.masked &&
        s.shape->teamSlot() == s.shape->threadsPerGroup && s.shape->threadsPerBlock() == 256 &&
        s.shape->groupsPerBlock >= 32 && (s.shape->groupsPerBlock / 8) % 4 == 0 &&
        64 % (s.shape->groupsPerBlock / 8) == 0) {
      seen.insert(fmt + (ngp % (s.shape->groupsPerBlock / 8) == 0
                             ? " swizzled in blocks of 8 rows"
                             : " swizzled in blocks of 8 rows across row pairs"));
      // A partial band whose grid leaves row pairs out (zeroed instead).
      if (c.tokens % 128 >= 1 && c.tokens % 128 <= 30)
        seen.insert(fmt + " partial band in blocks of 8 rows");
    }
    if (s.isNvfp4())
      seen.insert("gs " + std::to_string(c.globalScale));
    for (const SpecialRow& r : c.specialRows)
      if (r.pattern == ref::RowPattern::Zeros)
        seen.insert(fmt + " zero groups");
  }
  std::vector<std::string> wanted = {"e8m0 swizzled fp8_e4m3", "e8m0 swizzled fp8_e5m2",
                                     "e8m0 swizzled int8"};
  for (const char* fmt : {"nvfp4", "mxfp4 ceil", "mxfp4 floor"}) {
    for (const char* in : {"bf16", "fp16", "fp32"})
      wanted.push_back(std::string(fmt) + " " + in);
    for (const char* t : {"1", "3", "127", "129", "4097"})
      wanted.push_back(std::string(fmt) + " T=" + t);
    for (const char* what : {"bytes", "swizzled_128x4", "padding columns", "masked swizzled",
                             "zero groups", "swizzled in blocks of 8 rows"})
      wanted.push_back(std::string(fmt) + " " + what);
  }
  for (const char* fmt : {"nvfp4", "mxfp4 ceil"}) {
    wanted.push_back(std::string(fmt) + " swizzled in blocks of 8 rows across row pairs");
    wanted.push_back(std::string(fmt) + " partial band in blocks of 8 rows");
  }
  for (float gs : kGlobalScales)
    wanted.push_back("gs " + std::to_string(gs));
  for (const std::string& w : wanted)
    EXPECT_TRUE(seen.count(w)) << "no FP4 case has " << w;
}

INSTANTIATE_TEST_SUITE_P(Fp4, GpuKernelFp4, ::testing::Range<size_t>(0, fp4Cases().size()),
                         [](const ::testing::TestParamInfo<size_t>& info) {
                           const GpuCase& c = fp4Cases()[info.param];
                           const KernelSpec& s = c.spec;
                           std::string n =
                               "c" + std::to_string(info.param) + "_H" + std::to_string(s.hidden) +
                               "_G" + std::to_string(s.groupSize) + "_" + toString(s.inDtype) +
                               "_" + toString(s.outDtype) + "_" + toString(s.scaleLayout) + "_T" +
                               std::to_string(c.tokens);
                           if (s.isNvfp4())
                             n += "_nvfp4";
                           else if (s.outDtype == OutDtype::FP4E2M1)
                             n += std::string("_mxfp4_") + toString(s.scaleRounding);
                           if (s.masked)
                             n += "_masked";
                           return n;
                         });

// ---- q aligned only as far as the launch requires -------------------------------------
//
// A launch checks q against the widest store of its shapes (a vector's codes),
// no more: a q offset by exactly that alignment from an aligned buffer must
// give the same result as an aligned one, and the bytes before it must stay
// unwritten. Shapes whose team stores less than a sector a step (teams of 1,
// 2 and 4 with 2 and 4 steps: NVFP4, MXFP4, MXFP8 split and interleaved,
// G = 64 in teams of 4), masked and swizzled among them. (A version of the
// template that gathered such stores across a team's lanes into one wide
// store passed these and was no faster on the H200: bench/NOTES.md.)

std::vector<GpuCase> buildOffsetQCases() {
  std::vector<GpuCase> cases;
  auto shaped = [](KernelSpec s, int tpg, int vec, int gpb) {
    LaunchShape shape{tpg, vec, gpb};
    shape.minBlocksPerSm = deriveMinBlocksPerSm(s, shape);
    s.shape = shape;
    return s;
  };
  std::vector<std::pair<KernelSpec, int64_t>> specs; // spec, the launch's q alignment
  KernelSpec oss =
      makeSpec(2880, 32, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::Bytes, true, false);
  setActivation(oss, Activation::Swiglu, 0);
  oss.gateUp = GateUp::Interleaved;
  oss.scaleRounding = ScaleRounding::Floor;
  specs.push_back({shaped(oss, 2, 8, 128), 8}); // 4 steps of 4 bytes a lane
  KernelSpec mxfp8 =
      makeSpec(4096, 32, InDtype::FP16, OutDtype::FP8E5M2, ScaleLayout::Bytes, true, false);
  mxfp8.scaleRounding = ScaleRounding::Floor;
  specs.push_back({shaped(mxfp8, 2, 8, 128), 8}); // 2 steps of 8 bytes
  KernelSpec nvfp4 = makeSpec(2064, 16, InDtype::BF16, OutDtype::FP4E2M1,
                              ScaleLayout::Swizzled128x4, false, false);
  specs.push_back({shaped(nvfp4, 1, 8, 256), 4}); // one lane, 2 steps of 4 bytes
  KernelSpec mxfp4 =
      makeSpec(2880, 32, InDtype::BF16, OutDtype::FP4E2M1, ScaleLayout::Bytes, true, false);
  specs.push_back({shaped(mxfp4, 2, 4, 128), 2}); // 4 steps of 2 bytes
  specs.push_back({shaped(mxfp4, 2, 8, 128), 4}); // 2 steps of 4 bytes
  KernelSpec g64 =
      makeSpec(2048, 64, InDtype::BF16, OutDtype::INT8, ScaleLayout::Col, false, false);
  specs.push_back({shaped(g64, 4, 4, 64), 4}); // teams of 4, 4 steps of 4 bytes
  KernelSpec masked =
      makeSpec(2880, 32, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::Swizzled128x4, true, false);
  masked.masked = true;
  specs.push_back({shaped(masked, 2, 8, 128), 8});
  uint64_t seed = 7000;
  for (const auto& [spec, align] : specs)
    for (int64_t offset : {int64_t(0), align})
      for (int64_t tokens : {int64_t(129), int64_t(1023)}) {
        GpuCase c;
        c.spec = spec;
        c.tokens = tokens;
        c.qOffset = offset;
        c.seed = seed++;
        if (spec.isNvfp4())
          c.globalScale = kGlobalScales[0];
        if (spec.masked) {
          c.experts = 3;
          c.maskedM = {static_cast<int32_t>(tokens), 0, static_cast<int32_t>(tokens / 2)};
        }
        cases.push_back(c);
      }
  return cases;
}

const std::vector<GpuCase>& offsetQCases() {
  static const std::vector<GpuCase> cases = buildOffsetQCases();
  return cases;
}

class GpuKernelOffsetQ : public ::testing::TestWithParam<size_t> {
protected:
  static void SetUpTestSuite() { compileUpFront(offsetQCases()); }
};

TEST_P(GpuKernelOffsetQ, MatchesReferenceAtAlignedAndOffsetQ) {
  BQJIT_REQUIRE_GPU_ENV();
  expectMatchesReference(offsetQCases()[GetParam()]);
}

INSTANTIATE_TEST_SUITE_P(OffsetQ, GpuKernelOffsetQ,
                         ::testing::Range<size_t>(0, offsetQCases().size()),
                         [](const ::testing::TestParamInfo<size_t>& info) {
                           const GpuCase& c = offsetQCases()[info.param];
                           const KernelSpec& s = c.spec;
                           return "c" + std::to_string(info.param) + "_G" +
                                  std::to_string(s.groupSize) + "_" + toString(s.outDtype) +
                                  "_tpg" + std::to_string(s.shape->threadsPerGroup) + "_vec" +
                                  std::to_string(s.shape->vecWidth) + "_T" +
                                  std::to_string(c.tokens) + "_q" + std::to_string(c.qOffset);
                         });

// Teams across groups (templates/geometry.cuh, Geometry::kAcross):
// where a team's step would read one 32-byte sector of a line no other team
// reads in that instruction (interleaved gate/up at G = 32 in teams of 2),
// a team of 4 threads takes 2 consecutive groups of a row, two steps in each
// (fp32 input: four steps in each), so that requests carry two sectors.
// Each case below is such a shape (H / 32 and the groups a block multiples
// of 2, a row-major scale layout; H = 2880 is gpt-oss's 90 groups a row, and
// at 2048 and 3072 the rule must take 2 groups although 4 would fit). One
// thread a group with 16-byte steps needs 4 groups (one step in each) for
// two sectors. The cases cover every scale rule (floor, ceil, fp32
// with and without a bound), byte, fp32 and swizzled scales with their
// padding rows and columns, NVFP4's sibling MXFP4, masked batches, strided
// rows, gelu (no exact path) and the sigmoid family's exact path (special
// rows with NaN, infinite and huge gates in some of a team's groups), at
// T = 1, 129 and 1023.
std::vector<GpuCase> buildAcrossCases() {
  std::vector<GpuCase> cases;
  auto across = [](KernelSpec s) {
    s.gateUp = GateUp::Interleaved;
    // 16-byte vectors (fp32 input: 8 steps, 4 in each of a team's groups).
    LaunchShape shape{2, s.inDtype == InDtype::FP32 ? 4 : 8, 128};
    shape.minBlocksPerSm = deriveMinBlocksPerSm(s, shape);
    s.shape = shape;
    return s;
  };
  std::vector<KernelSpec> specs;
  KernelSpec oss =
      makeSpec(3072, 32, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::Bytes, true, false);
  setActivation(oss, Activation::Swiglu, 0);
  oss.scaleRounding = ScaleRounding::Floor;
  specs.push_back(across(oss)); // gpt-oss's MXFP8 at a width with 96 groups
  KernelSpec ceilSwizzled =
      makeSpec(2048, 32, InDtype::FP16, OutDtype::FP8E5M2, ScaleLayout::Swizzled128x4, true, false);
  setActivation(ceilSwizzled, Activation::Swiglu, 1);
  specs.push_back(across(ceilSwizzled));
  specs.push_back(
      across(makeSpec(4096, 32, InDtype::BF16, OutDtype::INT8, ScaleLayout::Row, false, false)));
  specs.push_back(
      across(makeSpec(2048, 32, InDtype::FP16, OutDtype::FP8E4M3, ScaleLayout::Row, true, true)));
  specs.push_back(
      across(makeSpec(2048, 32, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::Row, false, true)));
  KernelSpec mxfp4 =
      makeSpec(3072, 32, InDtype::BF16, OutDtype::FP4E2M1, ScaleLayout::Swizzled128x4, true, false);
  setActivation(mxfp4, Activation::Swiglu, 0);
  specs.push_back(across(mxfp4));
  KernelSpec gelu =
      makeSpec(2048, 32, InDtype::BF16, OutDtype::FP8E4M3, ScaleLayout::Bytes, true, false);
  gelu.activation = Activation::Gelu;
  gelu.scaleRounding = ScaleRounding::Floor;
  specs.push_back(across(gelu));
  KernelSpec masked = oss;
  masked.masked = true;
  masked.scaleLayout = ScaleLayout::Swizzled128x4;
  specs.push_back(across(masked));
  // fp32 input: 8 steps of 2 columns, 4 in each of a team's 2 groups.
  specs.push_back(
      across(makeSpec(3072, 32, InDtype::FP32, OutDtype::INT8, ScaleLayout::Row, false, false)));
  // Two groups a team (H = 2880: 90 groups a row): gpt-oss's own MXFP8,
  // MXFP4 with swizzled_128x4's padding columns (90 is not a multiple of 4)
  // in masked batches, and fp32 input (4 steps in each group).
  KernelSpec oss2880 = oss;
  oss2880.hidden = 2880;
  specs.push_back(across(oss2880));
  KernelSpec mxfp4Masked = mxfp4;
  mxfp4Masked.hidden = 2880;
  mxfp4Masked.masked = true;
  specs.push_back(across(mxfp4Masked));
  specs.push_back(
      across(makeSpec(2880, 32, InDtype::FP32, OutDtype::FP8E4M3, ScaleLayout::Row, true, false)));
  // One thread a group: teams of 4 threads across 4 groups, one step in each.
  KernelSpec single = across(oss);
  single.shape->threadsPerGroup = 1;
  single.shape->minBlocksPerSm = deriveMinBlocksPerSm(single, *single.shape);
  specs.push_back(single);
  uint64_t seed = 9000;
  for (const KernelSpec& spec : specs)
    for (int64_t tokens : {int64_t(1), int64_t(129), int64_t(1023)}) {
      GpuCase c;
      c.spec = spec;
      c.tokens = tokens;
      c.seed = seed++;
      c.ldxPad = tokens == 129 ? 24 : 0;
      if (spec.hasScaleUb)
        c.scaleUb = 0.05f;
      if (tokens > 1)
        c.specialRows = {{0, ref::RowPattern::Limits}, {1, ref::RowPattern::NaNs},
                         {2, ref::RowPattern::Infs},   {3, ref::RowPattern::Huge},
                         {5, ref::RowPattern::Zeros},  {7, ref::RowPattern::Mixed}};
      if (spec.masked) {
        c.experts = 3;
        c.maskedM = {static_cast<int32_t>(tokens), 0, static_cast<int32_t>(tokens / 2)};
      }
      cases.push_back(c);
    }
  return cases;
}

const std::vector<GpuCase>& acrossCases() {
  static const std::vector<GpuCase> cases = buildAcrossCases();
  return cases;
}

class GpuKernelAcrossGroups : public ::testing::TestWithParam<size_t> {
protected:
  static void SetUpTestSuite() { compileUpFront(acrossCases()); }
};

TEST_P(GpuKernelAcrossGroups, MatchesReferenceWithTeamsAcrossGroups) {
  BQJIT_REQUIRE_GPU_ENV();
  expectMatchesReference(acrossCases()[GetParam()]);
}

INSTANTIATE_TEST_SUITE_P(Across, GpuKernelAcrossGroups,
                         ::testing::Range<size_t>(0, acrossCases().size()),
                         [](const ::testing::TestParamInfo<size_t>& info) {
                           const GpuCase& c = acrossCases()[info.param];
                           const KernelSpec& s = c.spec;
                           return "c" + std::to_string(info.param) + "_H" +
                                  std::to_string(s.hidden) + "_" + toString(s.outDtype) + "_" +
                                  toString(s.scaleLayout) + (s.masked ? "_masked" : "") + "_T" +
                                  std::to_string(c.tokens);
                         });

} // namespace
} // namespace bqjit::test
