// The cache key: stable across releases (golden value) and sensitive to every
// input that changes the cubin (docs/contract.md section 4).
#include "jit/cache_key.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "jit/compiler.hpp"
#include "planner/launch_heuristic.hpp"

namespace bqjit {
namespace {

const char* const kSpec =
    R"({"arch":"sm_90","group_size":128,"hidden":7168,"in_dtype":"bf16","launch":)"
    R"({"groups_per_block":32,"threads_per_group":8,"vec_width":8},"masked":false,)"
    R"("out_dtype":"fp8_e4m3","scale_layout":"row","scale_ub":false,"ue8m0":false})";

KeyInputs fixedInputs() {
  KeyInputs in;
  in.canonicalSpec = kSpec;
  in.templateSource = TextDigest::of("template v1");
  in.generatedSource = "source v1";
  in.options = {"--gpu-architecture=sm_90", "--std=c++17", "--fmad=false", "--prec-div=true",
                "--prec-sqrt=true",         "--ftz=false", "-Xptxas=-v"};
  in.nvrtcIdentity = "13.0 (V13.0.88 CL-36424714)";
  in.arch = "sm_90";
  in.formatVersion = 2;
  return in;
}

bool isKey(const std::string& key) {
  return key.size() == 32 && key.find_first_not_of("0123456789abcdef") == std::string::npos;
}

TEST(CacheKey, GoldenValue) {
  // Computed once and pasted: a change means every user's cache is
  // invalidated, which must be deliberate (bump kCacheFormatVersion then).
  // Format 2: the generated source (the spec as named constants, with the
  // occupancy the planner derives) joined the key.
  const std::string key = computeCacheKey(fixedInputs());
  EXPECT_EQ(key, "ac5407f1628464ffa585da0f5cfca4be");
  EXPECT_TRUE(isKey(key)) << key;
  // The same inputs always give the same key.
  EXPECT_EQ(computeCacheKey(fixedInputs()), key);
}

TEST(CacheKey, GoldenCanonicalText) {
  EXPECT_EQ(fixedInputs().canonical(),
            std::string(R"x({"arch":"sm_90","format":2,"nvrtc":"13.0 (V13.0.88 CL-36424714)",)x"
                        R"("options":["--gpu-architecture=sm_90","--std=c++17","--fmad=false",)"
                        R"("--prec-div=true","--prec-sqrt=true","--ftz=false","-Xptxas=-v"],)"
                        R"("source_bytes":9,"source_xxh3":")") +
                checksum64("source v1", 9) + R"(","spec":)" + kSpec +
                R"(,"template_bytes":11,"template_xxh3":")" + checksum64("template v1", 11) +
                R"("})");
}

TEST(CacheKey, Checksum64) {
  EXPECT_EQ(checksum64("", 0), "2d06800538d394c2"); // XXH3-64 of nothing
  const std::string a = checksum64("abc", 3);
  EXPECT_EQ(a.size(), 16u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, checksum64("abd", 3));
  EXPECT_NE(a, checksum64("abc", 2));
}

TEST(CacheKey, EveryInputChangesTheKey) {
  const KeyInputs base = fixedInputs();
  std::vector<std::pair<std::string, KeyInputs>> variants;
  auto add = [&](const std::string& what, auto mutate) {
    KeyInputs in = base;
    mutate(in);
    variants.emplace_back(what, in);
  };
  add("spec hidden", [](KeyInputs& in) {
    in.canonicalSpec = std::string(kSpec);
    in.canonicalSpec.replace(in.canonicalSpec.find("7168"), 4, "7296");
  });
  add("spec launch", [](KeyInputs& in) {
    in.canonicalSpec = std::string(kSpec);
    in.canonicalSpec.replace(in.canonicalSpec.find("\"groups_per_block\":32"), 21,
                             "\"groups_per_block\":16");
  });
  add("spec ue8m0", [](KeyInputs& in) {
    in.canonicalSpec.replace(in.canonicalSpec.find("\"ue8m0\":false"), 13, "\"ue8m0\":true");
  });
  add("template text", [](KeyInputs& in) { in.templateSource = TextDigest::of("template v2"); });
  add("template length", [](KeyInputs& in) { in.templateSource = TextDigest::of("template v1 "); });
  add("generated source", [](KeyInputs& in) { in.generatedSource = "source v2"; });
  for (size_t i = 0; i < base.options.size(); ++i)
    add("option " + base.options[i], [i](KeyInputs& in) { in.options[i] += "x"; });
  add("dropped option", [](KeyInputs& in) { in.options.pop_back(); });
  add("fast math", [](KeyInputs& in) { in.options.push_back("--use_fast_math"); });
  add("fmad on", [](KeyInputs& in) { in.options[2] = "--fmad=true"; });
  add("option order", [](KeyInputs& in) { std::swap(in.options[1], in.options[2]); });
  add("nvrtc identity", [](KeyInputs& in) { in.nvrtcIdentity = "13.0 (V13.0.89 CL-36424714)"; });
  add("nvrtc version", [](KeyInputs& in) { in.nvrtcIdentity = "13.1 (V13.0.88 CL-36424714)"; });
  add("arch sm_90a", [](KeyInputs& in) { in.arch = "sm_90a"; });
  add("format version", [](KeyInputs& in) { in.formatVersion = 3; });

  const std::string baseKey = computeCacheKey(base);
  std::set<std::string> keys{baseKey};
  for (const auto& [what, in] : variants) {
    const std::string key = computeCacheKey(in);
    EXPECT_TRUE(isKey(key)) << what << ": " << key;
    EXPECT_NE(key, baseKey) << what << " does not change the key";
    EXPECT_TRUE(keys.insert(key).second) << what << " collides with another variant";
  }
}

TEST(CacheKey, OptionSplitIsNotAmbiguous) {
  // Joining options naively would make these two equal.
  KeyInputs a = fixedInputs(), b = fixedInputs();
  a.options = {"-a -b"};
  b.options = {"-a", "-b"};
  EXPECT_NE(computeCacheKey(a), computeCacheKey(b));
}

// ---- Compiler::identify ---------------------------------------------------------

class CompilerKey : public testing::Test {
protected:
  void SetUp() override {
    auto c = Compiler::create();
    ASSERT_TRUE(bool(c)) << consumeToString(c.takeError());
    compiler_.emplace(std::move(*c));
  }
  static KernelSpec spec(const std::string& arch = "sm_90") {
    KernelSpec s;
    s.hidden = 7168;
    s.groupSize = 128;
    s.arch = arch;
    s.shape = chooseLaunchShape(s);
    return s;
  }
  std::string cacheKey(const KernelSpec& s) const {
    auto id = compiler_->identify(s);
    if (!id) {
      ADD_FAILURE() << consumeToString(id.takeError());
      return "";
    }
    return id->key;
  }
  std::optional<Compiler> compiler_;
};

TEST_F(CompilerKey, IdentityLooksRight) {
  const std::string id = compiler_->identity().toString();
  EXPECT_GE(compiler_->identity().major, 11);
  EXPECT_NE(id.find(" (V"), std::string::npos) << id;
  EXPECT_NE(id.find("CL-"), std::string::npos) << id;
}

TEST_F(CompilerKey, ArchSuffixChangesKey) {
  const std::string k90 = cacheKey(spec("sm_90"));
  const std::string k90a = cacheKey(spec("sm_90a"));
  EXPECT_TRUE(isKey(k90));
  EXPECT_TRUE(isKey(k90a));
  EXPECT_NE(k90, k90a);
  EXPECT_NE(k90, cacheKey(spec("sm_80")));
}

TEST_F(CompilerKey, LaunchShapeChangesKey) {
  KernelSpec a = spec(), b = spec();
  a.shape = LaunchShape{8, 8, 32, 0};
  b.shape = LaunchShape{16, 8, 16, 0};
  EXPECT_NE(cacheKey(a), cacheKey(b));
  b.shape = LaunchShape{8, 8, 16, 0};
  EXPECT_NE(cacheKey(a), cacheKey(b));
  b.shape = LaunchShape{8, 8, 32, 2}; // occupancy promised to ptxas
  EXPECT_NE(cacheKey(a), cacheKey(b));
}

TEST_F(CompilerKey, EqualSpecsGiveEqualKeys) {
  KernelSpec a = spec();
  auto b = KernelSpec::fromFields({{"H", "7168"},
                                   {"G", "128"},
                                   {"arch", "sm_90"},
                                   {"tpg", std::to_string(a.shape->threadsPerGroup)},
                                   {"vec", std::to_string(a.shape->vecWidth)},
                                   {"gpb", std::to_string(a.shape->groupsPerBlock)},
                                   {"mbs", std::to_string(a.shape->minBlocksPerSm)}});
  ASSERT_TRUE(bool(b)) << consumeToString(b.takeError());
  EXPECT_EQ(cacheKey(a), cacheKey(*b));
  // A second compiler (same NVRTC) agrees.
  auto other = Compiler::create();
  ASSERT_TRUE(bool(other));
  auto otherId = other->identify(a);
  ASSERT_TRUE(bool(otherId));
  EXPECT_EQ(otherId->key, cacheKey(a));
}

TEST_F(CompilerKey, EverySpecFieldChangesKey) {
  const KernelSpec base = spec();
  std::vector<KernelSpec> variants(8, base);
  variants[0].hidden = 7296;
  variants[1].groupSize = 64;
  variants[2].inDtype = InDtype::FP16;
  variants[3].outDtype = OutDtype::INT8;
  variants[4].scaleLayout = ScaleLayout::Col;
  variants[5].ue8m0 = true;
  variants[6].hasScaleUb = true;
  variants[7].masked = true;
  std::set<std::string> keys{cacheKey(base)};
  for (const auto& v : variants)
    EXPECT_TRUE(keys.insert(cacheKey(v)).second) << v.label();
}

TEST_F(CompilerKey, EveryActivationFieldChangesKey) {
  const KernelSpec base = spec();
  std::vector<KernelSpec> variants(9, base);
  variants[0].activation = Activation::Swiglu;
  variants[0].alpha = 1.702f;
  variants[1].activation = Activation::Swiglu;
  variants[1].alpha = std::nextafter(1.702f, 2.0f); // one fp32 ulp apart
  variants[2].activation = Activation::Swiglu;
  variants[2].beta = 1.0f;
  variants[3].activation = Activation::Swiglu;
  variants[3].limit = 7.0f;
  variants[4].activation = Activation::GeluTanh;
  variants[5].activation = Activation::Gelu;
  variants[6].gateUp = GateUp::Interleaved;
  variants[7].ue8m0 = true;
  variants[7].scaleRounding = ScaleRounding::Floor;
  variants[8].ue8m0 = true;
  variants[8].scaleLayout = ScaleLayout::Bytes;
  std::set<std::string> keys{cacheKey(base)};
  for (const auto& v : variants)
    EXPECT_TRUE(keys.insert(cacheKey(v)).second) << v.label();
}

// docs/contract.md section 6: swiglu with alpha 1, beta 0 and no limit is silu, one
// canonical form and one key.
TEST_F(CompilerKey, SwigluWithDefaultParametersHasTheKeyOfSilu) {
  KernelSpec swiglu = spec();
  swiglu.activation = Activation::Swiglu;
  swiglu.alpha = 1.0f;
  swiglu.beta = -0.0f;
  EXPECT_EQ(cacheKey(swiglu), cacheKey(spec()));
  auto parsed = KernelSpec::fromJson(
      nlohmann::json::parse(R"({"hidden":7168,"activation":"swiglu","alpha":1,"beta":0.0})"));
  ASSERT_TRUE(bool(parsed)) << consumeToString(parsed.takeError());
  parsed->shape = spec().shape;
  EXPECT_EQ(cacheKey(*parsed), cacheKey(spec()));
}

// min_scale is part of the key; spelled out at its default, it is the key of
// the spec without it (one canonical form, the old keys unchanged).
TEST_F(CompilerKey, MinScaleChangesKeyOnlyAwayFromItsDefault) {
  KernelSpec floored = spec();
  floored.minScale = 0x1.f6a246p-43f; // fl32(1e-10 / 448)
  KernelSpec nextUlp = spec();
  nextUlp.minScale = std::nextafter(0x1.f6a246p-43f, 1.0f);
  KernelSpec spelledDefault = spec();
  spelledDefault.minScale = minScale(OutDtype::FP8E4M3);
  std::set<std::string> keys{cacheKey(spec())};
  EXPECT_TRUE(keys.insert(cacheKey(floored)).second);
  EXPECT_TRUE(keys.insert(cacheKey(nextUlp)).second);
  EXPECT_EQ(cacheKey(spelledDefault), cacheKey(spec()));
  auto parsed =
      KernelSpec::fromJson(nlohmann::json::parse(R"({"hidden":7168,"min_scale":2.2321428e-13})"));
  ASSERT_TRUE(bool(parsed)) << consumeToString(parsed.takeError());
  parsed->shape = spec().shape;
  EXPECT_EQ(cacheKey(*parsed), cacheKey(floored));
}

TEST_F(CompilerKey, OptionsFollowArchAndForbidFastMath) {
  const auto opts = Compiler::options(spec("sm_90a"));
  ASSERT_FALSE(opts.empty());
  EXPECT_EQ(opts.front(), "--gpu-architecture=sm_90a");
  for (const auto& o : opts) {
    EXPECT_EQ(o.find("fast"), std::string::npos) << o;
    EXPECT_NE(o, "--fmad=true");
    EXPECT_NE(o, "--ftz=true");
  }
  auto has = [&](const char* o) { return std::find(opts.begin(), opts.end(), o) != opts.end(); };
  EXPECT_TRUE(has("--fmad=false"));
  EXPECT_TRUE(has("--prec-div=true"));
  EXPECT_TRUE(has("-Xptxas=-v"));
}

} // namespace
} // namespace bqjit
