// KernelSpec: validation rules (docs/contract.md section 4), JSON and field parsing,
// the canonical form.
#include "bqjit/kernel_spec.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

KernelSpec baseSpec() {
  KernelSpec s;
  s.hidden = 7168;
  s.groupSize = 128;
  return s;
}

/// Validates; expects an InvalidSpec error and returns its message ("" on success).
std::string invalidMessage(const KernelSpec& spec) {
  llvm::Error err = spec.validate();
  if (!err)
    return "";
  std::string message;
  ErrorCode code = consumeError(std::move(err), &message);
  EXPECT_EQ(code, ErrorCode::InvalidSpec) << message;
  return message;
}

/// Checks the message names the field, the value and (a phrase of) the rule.
void expectRejected(const KernelSpec& spec, const std::string& field, const std::string& value,
                    const std::string& rule) {
  const std::string m = invalidMessage(spec);
  ASSERT_FALSE(m.empty()) << "accepted: " << spec.canonical();
  EXPECT_TRUE(contains(m, "'" + field + "'"));
  EXPECT_TRUE(contains(m, "= " + value));
  EXPECT_TRUE(contains(m, rule));
}

std::string parseError(llvm::Expected<KernelSpec> spec,
                       ErrorCode expected = ErrorCode::InvalidSpec) {
  if (spec) {
    ADD_FAILURE() << "parsed: " << spec->canonical();
    return "";
  }
  std::string message;
  ErrorCode code = consumeError(spec.takeError(), &message);
  EXPECT_EQ(code, expected) << message;
  return message;
}

KernelSpec withShape(KernelSpec s, int tpg, int vec, int gpb) {
  s.shape = LaunchShape{tpg, vec, gpb};
  return s;
}

// ---- success -----------------------------------------------------------------

TEST(KernelSpecValidate, DefaultSpecWithHiddenIsValid) {
  KernelSpec s = baseSpec();
  EXPECT_EQ(invalidMessage(s), "");
  EXPECT_EQ(s.numGroups(), 56);
  EXPECT_EQ(s.label(), "H=7168 G=128 bf16->fp8_e4m3 row sm_90");
}

TEST(KernelSpecValidate, FullySpecifiedSpecIsValid) {
  KernelSpec s = baseSpec();
  s.inDtype = InDtype::FP32;
  s.outDtype = OutDtype::INT8;
  s.scaleLayout = ScaleLayout::Ue8m0Packed;
  s.ue8m0 = true;
  s.hasScaleUb = true;
  s.masked = true;
  s.arch = "sm_100f";
  s.shape = LaunchShape{32, 4, 8};
  EXPECT_EQ(invalidMessage(s), "");
}

TEST(KernelSpecValidate, HiddenOfMaximumAccepted) {
  KernelSpec s = baseSpec();
  s.hidden = 65536;
  EXPECT_EQ(invalidMessage(s), "");
  s.groupSize = 1024;
  EXPECT_EQ(invalidMessage(s), "");
  s.groupSize = 16;
  EXPECT_EQ(invalidMessage(s), "");
}

TEST(KernelSpecValidate, NonPowerOfTwoGroupsAccepted) {
  for (int g : {48, 96, 192, 320, 17, 1000}) {
    KernelSpec s = baseSpec();
    s.groupSize = g;
    s.hidden = g * 7;
    EXPECT_EQ(invalidMessage(s), "") << "G=" << g;
  }
}

TEST(KernelSpecValidate, ArchSpellingsAccepted) {
  for (const char* arch :
       {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_100a", "sm_100f", "sm_120"}) {
    KernelSpec s = baseSpec();
    s.arch = arch;
    EXPECT_EQ(invalidMessage(s), "") << arch;
  }
}

// ---- one test per rule ---------------------------------------------------------

TEST(KernelSpecValidate, HiddenZeroRejected) {
  KernelSpec s = baseSpec();
  s.hidden = 0;
  expectRejected(s, "hidden", "0", "must be in 1..65536");
}

TEST(KernelSpecValidate, HiddenTooLargeRejected) {
  KernelSpec s = baseSpec();
  s.hidden = 65537;
  s.groupSize = 65537; // G's own range check must not be what fires first
  expectRejected(s, "hidden", "65537", "must be in 1..65536");
}

TEST(KernelSpecValidate, NegativeHiddenRejected) {
  KernelSpec s = baseSpec();
  s.hidden = -128;
  expectRejected(s, "hidden", "-128", "must be in 1..65536");
}

TEST(KernelSpecValidate, GroupSizeBelowMinimumRejected) {
  KernelSpec s = baseSpec();
  s.groupSize = 15;
  s.hidden = 15 * 8;
  expectRejected(s, "group_size", "15", "must be in 16..1024");
}

TEST(KernelSpecValidate, GroupSizeAboveMaximumRejected) {
  KernelSpec s = baseSpec();
  s.groupSize = 1025;
  s.hidden = 1025 * 2;
  expectRejected(s, "group_size", "1025", "must be in 16..1024");
}

TEST(KernelSpecValidate, GroupNotDividingHiddenRejected) {
  KernelSpec s = baseSpec();
  s.hidden = 1000;
  s.groupSize = 128;
  expectRejected(s, "group_size", "128", "must divide hidden (1000)");
  s.hidden = 7168;
  s.groupSize = 96; // 7168 = 74.67 * 96
  expectRejected(s, "group_size", "96", "must divide hidden (7168)");
}

TEST(KernelSpecValidate, PackedLayoutWithoutUe8m0Rejected) {
  KernelSpec s = baseSpec();
  s.scaleLayout = ScaleLayout::Ue8m0Packed;
  s.ue8m0 = false;
  expectRejected(s, "ue8m0", "false", "must be true when scale_layout is ue8m0_packed");
  s.ue8m0 = true;
  EXPECT_EQ(invalidMessage(s), "");
}

TEST(KernelSpecValidate, ArchWithoutUnderscoreRejected) {
  KernelSpec s = baseSpec();
  s.arch = "sm90";
  expectRejected(s, "arch", "'sm90'", "must look like sm_90");
}

TEST(KernelSpecValidate, ArchBeforeAmpereRejected) {
  KernelSpec s = baseSpec();
  s.arch = "sm_75";
  expectRejected(s, "arch", "'sm_75'", "must be sm_80 or newer");
}

TEST(KernelSpecValidate, VirtualArchRejected) {
  KernelSpec s = baseSpec();
  s.arch = "compute_90";
  expectRejected(s, "arch", "'compute_90'", "must look like sm_90");
}

TEST(KernelSpecValidate, OtherMalformedArchsRejected) {
  for (const char* arch :
       {"", "sm_", "sm_a", "sm_9x", "sm_90b", "sm_90aa", "SM_90", "sm_ 90", "sm_999999999999"}) {
    KernelSpec s = baseSpec();
    s.arch = arch;
    const std::string m = invalidMessage(s);
    EXPECT_TRUE(contains(m, "'arch'")) << "arch '" << arch << "' -> " << m;
  }
}

TEST(KernelSpecValidate, VecWidthNotPowerOfTwoRejected) {
  expectRejected(withShape(baseSpec(), 8, 3, 8), "launch.vec_width", "3", "must be a power of two");
  expectRejected(withShape(baseSpec(), 8, 0, 8), "launch.vec_width", "0", "must be a power of two");
}

TEST(KernelSpecValidate, VecWidthTooWideForDtypeRejected) {
  // bf16: 16 * 2 bytes = 32 > 16.
  expectRejected(withShape(baseSpec(), 8, 16, 8), "launch.vec_width", "16",
                 "vec_width * sizeof(bf16) <= 16 bytes");
  KernelSpec f32 = baseSpec();
  f32.inDtype = InDtype::FP32;
  expectRejected(withShape(f32, 8, 8, 8), "launch.vec_width", "8",
                 "vec_width * sizeof(fp32) <= 16 bytes");
  EXPECT_EQ(invalidMessage(withShape(f32, 8, 4, 8)), "");
}

TEST(KernelSpecValidate, VecWidthNotDividingGroupRejected) {
  KernelSpec s = baseSpec();
  s.groupSize = 20;
  s.hidden = 160;
  expectRejected(withShape(s, 1, 8, 8), "launch.vec_width", "8", "must divide group_size (20)");
  EXPECT_EQ(invalidMessage(withShape(s, 1, 4, 8)), "");
}

TEST(KernelSpecValidate, ThreadsPerGroupMustDivideVectorsNotBeAPowerOfTwo) {
  // 3 threads cannot share 16 vectors; 12 threads share G = 96's 12 vectors.
  expectRejected(withShape(baseSpec(), 3, 8, 8), "launch.threads_per_group", "3",
                 "must divide the group's 16 vectors");
  KernelSpec s = baseSpec();
  s.groupSize = 96;
  s.hidden = 96 * 8;
  EXPECT_EQ(invalidMessage(withShape(s, 12, 8, 16)), "");
  EXPECT_EQ(withShape(s, 12, 8, 16).shape->threadsPerBlock(), 256); // 12 lanes in a 16-lane slot
}

TEST(KernelSpecValidate, ThreadsPerGroupAboveWarpRejected) {
  KernelSpec s = baseSpec();
  s.groupSize = 1024;
  s.hidden = 8192; // 1024 / 8 = 128 vectors: 64 would divide them
  expectRejected(withShape(s, 64, 8, 4), "launch.threads_per_group", "64", "must be in 1..32");
}

TEST(KernelSpecValidate, ThreadsPerGroupNotDividingVectorsRejected) {
  KernelSpec s = baseSpec();
  s.groupSize = 48;
  s.hidden = 48 * 8; // 48 / 8 = 6 vectors
  expectRejected(withShape(s, 4, 8, 8), "launch.threads_per_group", "4",
                 "must divide the group's 6 vectors");
  EXPECT_EQ(invalidMessage(withShape(s, 2, 8, 8)), "");
  // More threads than vectors.
  expectRejected(withShape(baseSpec(), 32, 8, 8), "launch.threads_per_group", "32",
                 "must divide the group's 16 vectors");
}

TEST(KernelSpecValidate, ZeroGroupsPerBlockRejected) {
  expectRejected(withShape(baseSpec(), 8, 8, 0), "launch.groups_per_block", "0", "must be >= 1");
}

TEST(KernelSpecValidate, TooManyThreadsPerBlockRejected) {
  expectRejected(withShape(baseSpec(), 16, 8, 65), "launch.groups_per_block", "65",
                 "groups_per_block * threads_per_group (rounded up to a power of two) <= 1024");
  EXPECT_EQ(invalidMessage(withShape(baseSpec(), 16, 8, 64)), "");
}

// ---- fromJson --------------------------------------------------------------------

TEST(KernelSpecJson, MinimalObjectGetsDefaults) {
  auto s = KernelSpec::fromJson({{"hidden", 2048}});
  ASSERT_TRUE(bool(s)) << consumeToString(s.takeError());
  EXPECT_EQ(s->hidden, 2048);
  EXPECT_EQ(s->groupSize, 128);
  EXPECT_EQ(s->inDtype, InDtype::BF16);
  EXPECT_EQ(s->outDtype, OutDtype::FP8E4M3);
  EXPECT_EQ(s->scaleLayout, ScaleLayout::Row);
  EXPECT_FALSE(s->ue8m0);
  EXPECT_FALSE(s->hasScaleUb);
  EXPECT_FALSE(s->masked);
  EXPECT_EQ(s->arch, "sm_90");
  EXPECT_FALSE(s->shape.has_value());
}

TEST(KernelSpecJson, EveryFieldParsed) {
  nlohmann::json j = {
      {"hidden", 2304},
      {"group_size", 96},
      {"in_dtype", "fp16"},
      {"out_dtype", "fp8_e5m2"},
      {"scale_layout", "col_tma"},
      {"ue8m0", true},
      {"scale_ub", true},
      {"masked", true},
      {"arch", "sm_90a"},
      {"launch", {{"threads_per_group", 4}, {"vec_width", 8}, {"groups_per_block", 16}}}};
  auto s = KernelSpec::fromJson(j);
  ASSERT_TRUE(bool(s)) << consumeToString(s.takeError());
  EXPECT_EQ(s->hidden, 2304);
  EXPECT_EQ(s->groupSize, 96);
  EXPECT_EQ(s->inDtype, InDtype::FP16);
  EXPECT_EQ(s->outDtype, OutDtype::FP8E5M2);
  EXPECT_EQ(s->scaleLayout, ScaleLayout::ColTma);
  EXPECT_TRUE(s->ue8m0);
  EXPECT_TRUE(s->hasScaleUb);
  EXPECT_TRUE(s->masked);
  EXPECT_EQ(s->arch, "sm_90a");
  ASSERT_TRUE(s->shape.has_value());
  EXPECT_EQ(*s->shape, (LaunchShape{4, 8, 16}));
}

TEST(KernelSpecJson, UnknownFieldRejected) {
  const std::string m = parseError(KernelSpec::fromJson({{"hidden", 7168}, {"grup_size", 64}}));
  EXPECT_TRUE(contains(m, "'grup_size'"));
  EXPECT_TRUE(contains(m, "= 64"));
  EXPECT_TRUE(contains(m, "unknown field"));
}

TEST(KernelSpecJson, WrongTypesRejected) {
  struct Case {
    nlohmann::json j;
    std::string field, value, rule;
  };
  const Case cases[] = {
      {{{"hidden", "7168"}}, "hidden", "\"7168\"", "must be an integer"},
      {{{"hidden", 7168.5}}, "hidden", "7168.5", "must be an integer"},
      {{{"hidden", 1ll << 40}}, "hidden", "1099511627776", "must fit in 32 bits"},
      {{{"hidden", 18446744073709551615ull}},
       "hidden",
       "18446744073709551615",
       "must fit in 32 bits"},
      {{{"hidden", 7168},
        {"launch",
         {{"threads_per_group", 8}, {"vec_width", 4294967304ull}, {"groups_per_block", 8}}}},
       "launch.vec_width",
       "4294967304",
       "must fit in 32 bits"},
      {{{"hidden", 7168}, {"group_size", true}}, "group_size", "true", "must be an integer"},
      {{{"hidden", 7168}, {"in_dtype", 1}}, "in_dtype", "1", "must be a string"},
      {{{"hidden", 7168}, {"in_dtype", "bf17"}},
       "in_dtype",
       "'bf17'",
       "must be one of bf16, fp16, fp32"},
      {{{"hidden", 7168}, {"out_dtype", "fp8"}}, "out_dtype", "'fp8'", "must be one of"},
      {{{"hidden", 7168}, {"scale_layout", "column"}},
       "scale_layout",
       "'column'",
       "must be one of"},
      {{{"hidden", 7168}, {"ue8m0", 1}}, "ue8m0", "1", "must be true or false"},
      {{{"hidden", 7168}, {"scale_ub", "true"}}, "scale_ub", "\"true\"", "must be true or false"},
      {{{"hidden", 7168}, {"masked", nullptr}}, "masked", "null", "must be true or false"},
      {{{"hidden", 7168}, {"arch", 90}}, "arch", "90", "must be a string"},
      {{{"hidden", 7168}, {"launch", 3}}, "launch", "3", "must be an object"},
      {{{"hidden", 7168}, {"launch", {{"threads_per_group", 8}, {"vec_width", 8}}}},
       "launch.groups_per_block",
       "(missing)",
       "is required in launch"},
      {{{"hidden", 7168},
        {"launch", {{"threads_per_group", 8}, {"vec_width", "8"}, {"groups_per_block", 8}}}},
       "launch.vec_width",
       "\"8\"",
       "must be an integer"},
      {{{"hidden", 7168},
        {"launch",
         {{"threads_per_group", 8}, {"vec_width", 8}, {"groups_per_block", 8}, {"smem", 0}}}},
       "launch",
       "",
       "takes exactly threads_per_group, vec_width, groups_per_block"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.j.dump());
    const std::string m = parseError(KernelSpec::fromJson(c.j));
    EXPECT_TRUE(contains(m, "'" + c.field + "'"));
    EXPECT_TRUE(contains(m, "= " + c.value));
    EXPECT_TRUE(contains(m, c.rule));
  }
}

TEST(KernelSpecJson, NonObjectRejected) {
  const std::string m = parseError(KernelSpec::fromJson(nlohmann::json::array({7168})));
  EXPECT_TRUE(contains(m, "must be a JSON object"));
}

TEST(KernelSpecJson, MissingHiddenRejected) {
  const std::string m = parseError(KernelSpec::fromJson({{"group_size", 128}}));
  EXPECT_TRUE(contains(m, "'hidden'"));
  EXPECT_TRUE(contains(m, "(missing)"));
  EXPECT_TRUE(contains(m, "is required"));
}

TEST(KernelSpecJson, ParsedSpecIsValidated) {
  const std::string m = parseError(KernelSpec::fromJson({{"hidden", 1000}, {"group_size", 128}}));
  EXPECT_TRUE(contains(m, "'group_size' = 128: must divide hidden (1000)"));
  const std::string m2 = parseError(KernelSpec::fromJson({{"hidden", 7168}, {"arch", "sm_75"}}));
  EXPECT_TRUE(contains(m2, "'arch' = 'sm_75'"));
}

/// A value nested `depth` arrays deep, built without recursion (as a C++
/// caller of the public fromJson may).
nlohmann::json deepArray(int depth) {
  nlohmann::json root = nlohmann::json::array();
  nlohmann::json* at = &root;
  for (int i = 1; i < depth; ++i) {
    at->push_back(nlohmann::json::array());
    at = &at->back();
  }
  return root;
}

// fromJson is public: a C++ caller may hand it a value nested 100000 levels
// deep. Its messages used to dump() the value, recursing once per level
// until the stack overflowed (a segfault of the caller's process).
TEST(KernelSpecJson, DeepValueIsAnErrorNotACrash) {
  // Moved, never copied: a copy of such a value recurses as deep as it nests.
  const std::string notObject = parseError(KernelSpec::fromJson(deepArray(100000)));
  EXPECT_TRUE(contains(notObject, "'spec' = (an array nested more than 64 levels deep, not "
                                  "shown): must be a JSON object"));

  nlohmann::json hidden = nlohmann::json::object();
  hidden["hidden"] = deepArray(100000);
  const std::string m = parseError(KernelSpec::fromJson(hidden));
  EXPECT_TRUE(contains(m, "'hidden' = (an array nested more than 64 levels deep"));
  EXPECT_TRUE(contains(m, "must be an integer"));

  nlohmann::json unknown = {{"hidden", 7168}};
  unknown["colour"] = deepArray(100000);
  EXPECT_TRUE(contains(parseError(KernelSpec::fromJson(unknown)), "'colour' = (an array nested"));

  nlohmann::json launch = {{"hidden", 7168}};
  launch["launch"] = deepArray(100000);
  EXPECT_TRUE(contains(parseError(KernelSpec::fromJson(launch)), "'launch' = (an array nested"));
}

// A 100 KB value used to be copied whole into the message.
TEST(KernelSpecJson, LongValuesAreCutInMessages) {
  const std::string longText(100000, 'x');
  nlohmann::json wide = nlohmann::json::array();
  for (int i = 0; i < 20000; ++i)
    wide.push_back(i);
  struct Case {
    nlohmann::json j;
    std::string field;
  };
  const Case cases[] = {
      {{{"hidden", 7168}, {"in_dtype", longText}}, "'in_dtype' = 'xxxx"},
      {{{"hidden", 7168}, {"arch", longText}}, "'arch' = 'xxxx"},
      {{{"hidden", wide}}, "'hidden' = [0,1,2,"},
      {{{"hidden", 7168}, {longText, 1}}, "'xxxx"},
      {{{"hidden", 7168}, {"launch", {{"threads_per_group", 8}, {"vec_width", longText}}}},
       "'launch.vec_width' = \"xxxx"},
  };
  for (const Case& c : cases) {
    const std::string m = parseError(KernelSpec::fromJson(c.j));
    EXPECT_LT(m.size(), 600u) << m.substr(0, 600);
    EXPECT_TRUE(contains(m.substr(0, 600), c.field));
    EXPECT_TRUE(contains(m.substr(0, 600), " bytes)"));
  }
  const std::string fields = parseError(KernelSpec::fromFields({{"hidden", longText}}));
  EXPECT_LT(fields.size(), 600u);
  EXPECT_TRUE(contains(fields, "'hidden' = 'xxxx"));
  EXPECT_TRUE(contains(fields, "... (100000 bytes)': must be an integer"));
}

// ---- fromFields ------------------------------------------------------------------

TEST(KernelSpecFields, AliasesEqualLongNames) {
  auto shortForm = KernelSpec::fromFields({{"H", "2304"},
                                           {"G", "96"},
                                           {"in", "fp32"},
                                           {"out", "int8"},
                                           {"layout", "col"},
                                           {"ue8m0", "on"},
                                           {"scale_ub", "1"},
                                           {"masked", "false"},
                                           {"arch", "sm_80"},
                                           {"tpg", "8"},
                                           {"vec", "4"},
                                           {"gpb", "16"}});
  ASSERT_TRUE(bool(shortForm)) << consumeToString(shortForm.takeError());
  auto longForm = KernelSpec::fromFields({{"hidden", "2304"},
                                          {"group_size", "96"},
                                          {"in_dtype", "fp32"},
                                          {"out_dtype", "int8"},
                                          {"scale_layout", "col"},
                                          {"ue8m0", "true"},
                                          {"scale_ub", "on"},
                                          {"masked", "0"},
                                          {"arch", "sm_80"},
                                          {"threads_per_group", "8"},
                                          {"vec_width", "4"},
                                          {"groups_per_block", "16"}});
  ASSERT_TRUE(bool(longForm)) << consumeToString(longForm.takeError());
  EXPECT_EQ(shortForm->canonical(), longForm->canonical());
  EXPECT_EQ(shortForm->hidden, 2304);
  EXPECT_EQ(shortForm->groupSize, 96);
  EXPECT_EQ(shortForm->inDtype, InDtype::FP32);
  EXPECT_EQ(shortForm->outDtype, OutDtype::INT8);
  EXPECT_EQ(shortForm->scaleLayout, ScaleLayout::Col);
  EXPECT_TRUE(shortForm->ue8m0);
  EXPECT_TRUE(shortForm->hasScaleUb);
  EXPECT_FALSE(shortForm->masked);
  EXPECT_EQ(shortForm->arch, "sm_80");
  ASSERT_TRUE(shortForm->shape.has_value());
  EXPECT_EQ(*shortForm->shape, (LaunchShape{8, 4, 16}));
  // "group" is an alias too.
  auto group = KernelSpec::fromFields({{"H", "2304"}, {"group", "96"}});
  ASSERT_TRUE(bool(group));
  EXPECT_EQ(group->groupSize, 96);
}

TEST(KernelSpecFields, BadIntegerRejected) {
  for (const char* bad : {"7k", "", "7168 ", "0x1c00", "abc", "1e4"}) {
    const std::string m = parseError(KernelSpec::fromFields({{"H", bad}}));
    EXPECT_TRUE(contains(m, "'hidden' = '" + std::string(bad) + "': must be an integer")) << bad;
  }
  const std::string m = parseError(KernelSpec::fromFields({{"H", "7168"}, {"tpg", "eight"}}));
  EXPECT_TRUE(contains(m, "'threads_per_group' = 'eight': must be an integer"));
  const std::string big = parseError(KernelSpec::fromFields({{"H", "99999999999"}}));
  EXPECT_TRUE(contains(big, "'hidden'"));
  EXPECT_TRUE(contains(big, "must fit in 32 bits"));
}

TEST(KernelSpecFields, BadBoolRejected) {
  const std::string m = parseError(KernelSpec::fromFields({{"H", "7168"}, {"ue8m0", "yes"}}));
  EXPECT_TRUE(contains(m, "'ue8m0' = 'yes': must be true/false, on/off or 1/0"));
  const std::string m2 = parseError(KernelSpec::fromFields({{"H", "7168"}, {"masked", "TRUE"}}));
  EXPECT_TRUE(contains(m2, "'masked' = 'TRUE'"));
}

TEST(KernelSpecFields, UnknownFieldRejected) {
  const std::string m = parseError(KernelSpec::fromFields({{"H", "7168"}, {"hiden", "1"}}));
  EXPECT_TRUE(contains(m, "'hiden'"));
  EXPECT_TRUE(contains(m, "unknown field"));
}

TEST(KernelSpecFields, PartialLaunchRejected) {
  const std::string m = parseError(KernelSpec::fromFields({{"H", "7168"}, {"tpg", "8"}}));
  EXPECT_TRUE(contains(m, "is required in launch"));
}

// ---- canonical form ---------------------------------------------------------------

TEST(KernelSpecCanonical, PinnedText) {
  // Cache keys hash this text: a change here invalidates every cache.
  EXPECT_EQ(baseSpec().canonical(),
            R"({"arch":"sm_90","group_size":128,"hidden":7168,"in_dtype":"bf16","masked":false,)"
            R"("out_dtype":"fp8_e4m3","scale_layout":"row","scale_ub":false,"ue8m0":false})");
  EXPECT_EQ(
      withShape(baseSpec(), 8, 8, 32).canonical(),
      R"({"arch":"sm_90","group_size":128,"hidden":7168,"in_dtype":"bf16",)"
      R"("launch":{"groups_per_block":32,"threads_per_group":8,"vec_width":8},"masked":false,)"
      R"("out_dtype":"fp8_e4m3","scale_layout":"row","scale_ub":false,"ue8m0":false})");
}

TEST(KernelSpecCanonical, RoundTripThroughJson) {
  std::vector<KernelSpec> specs;
  specs.push_back(baseSpec());
  specs.push_back(withShape(baseSpec(), 4, 8, 64));
  KernelSpec odd = baseSpec();
  odd.hidden = 320 * 9;
  odd.groupSize = 320;
  odd.inDtype = InDtype::FP16;
  odd.outDtype = OutDtype::INT8;
  odd.scaleLayout = ScaleLayout::Ue8m0Packed;
  odd.ue8m0 = true;
  odd.hasScaleUb = true;
  odd.masked = true;
  odd.arch = "sm_90a";
  specs.push_back(odd);
  for (const KernelSpec& s : specs) {
    auto back = KernelSpec::fromJson(s.toJson());
    ASSERT_TRUE(bool(back)) << consumeToString(back.takeError());
    EXPECT_EQ(back->canonical(), s.canonical());
    EXPECT_TRUE(*back == s);
    auto reparsed = KernelSpec::fromJson(nlohmann::json::parse(s.canonical()));
    ASSERT_TRUE(bool(reparsed));
    EXPECT_EQ(reparsed->canonical(), s.canonical());
  }
}

TEST(KernelSpecCanonical, EqualSpecsBuiltDifferentlyAreByteIdentical) {
  KernelSpec byFields = baseSpec();
  byFields.hidden = 2048;
  byFields.scaleLayout = ScaleLayout::Col;
  byFields.arch = "sm_100";
  byFields.shape = LaunchShape{8, 8, 32};

  // Fields in another order, defaults spelled out.
  auto byJson = KernelSpec::fromJson(nlohmann::json::parse(
      R"({"launch":{"vec_width":8,"groups_per_block":32,"threads_per_group":8},"arch":"sm_100",)"
      R"("scale_layout":"col","masked":false,"hidden":2048,"in_dtype":"bf16"})"));
  ASSERT_TRUE(bool(byJson)) << consumeToString(byJson.takeError());
  auto byCommandLine = KernelSpec::fromFields({{"layout", "col"},
                                               {"H", "2048"},
                                               {"G", "128"},
                                               {"arch", "sm_100"},
                                               {"tpg", "8"},
                                               {"vec", "8"},
                                               {"gpb", "32"},
                                               {"ue8m0", "off"}});
  ASSERT_TRUE(bool(byCommandLine)) << consumeToString(byCommandLine.takeError());

  EXPECT_EQ(byFields.canonical(), byJson->canonical());
  EXPECT_EQ(byFields.canonical(), byCommandLine->canonical());
  EXPECT_TRUE(byFields == *byJson);

  KernelSpec other = byFields;
  other.shape = LaunchShape{8, 8, 16};
  EXPECT_NE(other.canonical(), byFields.canonical());
  EXPECT_TRUE(other != byFields);
  other.shape.reset();
  EXPECT_NE(other.canonical(), byFields.canonical());
}

TEST(KernelSpecCanonical, EveryFieldChangesCanonical) {
  const KernelSpec base = withShape(baseSpec(), 8, 8, 32);
  std::vector<KernelSpec> variants(10, base);
  variants[0].hidden = 7296;
  variants[1].groupSize = 64;
  variants[2].inDtype = InDtype::FP16;
  variants[3].outDtype = OutDtype::FP8E5M2;
  variants[4].scaleLayout = ScaleLayout::ColTma;
  variants[5].ue8m0 = true;
  variants[6].hasScaleUb = true;
  variants[7].masked = true;
  variants[8].arch = "sm_90a";
  variants[9].shape->groupsPerBlock = 16;
  for (size_t i = 0; i < variants.size(); ++i) {
    EXPECT_NE(variants[i].canonical(), base.canonical()) << i;
    for (size_t k = 0; k < i; ++k)
      EXPECT_NE(variants[i].canonical(), variants[k].canonical()) << i << " vs " << k;
  }
}

TEST(KernelSpecEnums, NamesRoundTrip) {
  for (InDtype d : {InDtype::BF16, InDtype::FP16, InDtype::FP32}) {
    auto p = parseInDtype(toString(d));
    ASSERT_TRUE(bool(p));
    EXPECT_EQ(*p, d);
  }
  for (OutDtype d : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8}) {
    auto p = parseOutDtype(toString(d));
    ASSERT_TRUE(bool(p));
    EXPECT_EQ(*p, d);
  }
  for (ScaleLayout l :
       {ScaleLayout::Row, ScaleLayout::Col, ScaleLayout::ColTma, ScaleLayout::Ue8m0Packed}) {
    auto p = parseScaleLayout(toString(l));
    ASSERT_TRUE(bool(p));
    EXPECT_EQ(*p, l);
  }
  EXPECT_EQ(dtypeBytes(InDtype::BF16), 2);
  EXPECT_EQ(dtypeBytes(InDtype::FP16), 2);
  EXPECT_EQ(dtypeBytes(InDtype::FP32), 4);
}

TEST(KernelSpecEnums, QuantConstantsMatchSpec) {
  EXPECT_EQ(quantMax(OutDtype::FP8E4M3), 448.0f);
  EXPECT_EQ(quantMax(OutDtype::FP8E5M2), 57344.0f);
  EXPECT_EQ(quantMax(OutDtype::INT8), 127.0f);
  EXPECT_EQ(minScale(OutDtype::FP8E4M3), 1.0f / (448.0f * 512.0f));
  EXPECT_EQ(minScale(OutDtype::FP8E5M2), 1.0f / (57344.0f * 512.0f));
  EXPECT_EQ(minScale(OutDtype::INT8), std::ldexp(1.0f, -23));
}

// ---- activations, gate_up, scale_rounding, bytes (docs/contract.md sections 6, 7) ----------

KernelSpec gptOss() {
  KernelSpec s = baseSpec();
  s.hidden = 2880;
  s.groupSize = 32;
  s.activation = Activation::Swiglu;
  s.alpha = 1.702f;
  s.beta = 1.0f;
  s.limit = 7.0f;
  s.gateUp = GateUp::Interleaved;
  s.scaleLayout = ScaleLayout::Bytes;
  s.ue8m0 = true;
  s.scaleRounding = ScaleRounding::Floor;
  return s;
}

TEST(KernelSpecActivation, EveryActivationAndGateUpIsValid) {
  for (Activation a :
       {Activation::Silu, Activation::Swiglu, Activation::GeluTanh, Activation::Gelu})
    for (GateUp g : {GateUp::Split, GateUp::Interleaved}) {
      KernelSpec s = baseSpec();
      s.activation = a;
      s.gateUp = g;
      EXPECT_EQ(invalidMessage(s), "") << toString(a) << " " << toString(g);
    }
  EXPECT_EQ(invalidMessage(gptOss()), "");
}

TEST(KernelSpecActivation, ParametersOnAnotherActivationRejected) {
  KernelSpec s = baseSpec();
  s.alpha = 1.702f;
  expectRejected(s, "alpha", "1.702", "applies only to activation swiglu (activation is silu)");
  s = baseSpec();
  s.activation = Activation::Gelu;
  s.beta = 1.0f;
  expectRejected(s, "beta", "1", "applies only to activation swiglu (activation is gelu)");
  s = baseSpec();
  s.activation = Activation::GeluTanh;
  s.limit = 7.0f;
  expectRejected(s, "limit", "7", "applies only to activation swiglu (activation is gelu_tanh)");
  // Even at the default value: given on silu, it would change nothing.
  s = baseSpec();
  s.alpha = 1.0f;
  expectRejected(s, "alpha", "1", "applies only to activation swiglu");
}

TEST(KernelSpecActivation, NonFiniteParametersRejected) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  KernelSpec s = gptOss();
  s.alpha = nan;
  expectRejected(s, "alpha", "nan", "must be a finite number");
  s = gptOss();
  s.beta = -inf;
  expectRejected(s, "beta", "-inf", "must be a finite number");
  s = gptOss();
  s.limit = inf;
  expectRejected(s, "limit", "inf", "must be a finite number > 0");
  s.limit = nan;
  expectRejected(s, "limit", "nan", "must be a finite number > 0");
}

TEST(KernelSpecActivation, LimitMustBePositive) {
  KernelSpec s = gptOss();
  s.limit = 0.0f;
  expectRejected(s, "limit", "0", "must be a finite number > 0 after rounding to fp32");
  s.limit = -7.0f;
  expectRejected(s, "limit", "-7", "must be a finite number > 0");
  s.limit = std::numeric_limits<float>::denorm_min();
  EXPECT_EQ(invalidMessage(s), "");
  // 1e-50 rounds to fp32 zero.
  const std::string m = parseError(KernelSpec::fromJson(
      {{"hidden", 2880}, {"group_size", 32}, {"activation", "swiglu"}, {"limit", 1e-50}}));
  EXPECT_TRUE(contains(m, "'limit' = 0: must be a finite number > 0 after rounding to fp32"));
}

TEST(KernelSpecRounding, FloorNeedsUe8m0) {
  KernelSpec s = baseSpec();
  s.scaleRounding = ScaleRounding::Floor;
  expectRejected(s, "scale_rounding", "'floor'", "needs ue8m0 true");
  s.ue8m0 = true;
  EXPECT_EQ(invalidMessage(s), "");
}

TEST(KernelSpecRounding, FloorWithInt8Rejected) {
  KernelSpec s = baseSpec();
  s.ue8m0 = true;
  s.scaleRounding = ScaleRounding::Floor;
  s.outDtype = OutDtype::INT8;
  expectRejected(s, "scale_rounding", "'floor'", "needs a floating-point out_dtype");
  s.outDtype = OutDtype::FP8E5M2;
  EXPECT_EQ(invalidMessage(s), "");
}

TEST(KernelSpecRounding, FloorWithScaleUbRejected) {
  KernelSpec s = baseSpec();
  s.ue8m0 = true;
  s.scaleRounding = ScaleRounding::Floor;
  s.hasScaleUb = true;
  expectRejected(s, "scale_ub", "true", "must be false with scale_rounding floor");
}

TEST(KernelSpecLayout, BytesNeedsUe8m0) {
  KernelSpec s = baseSpec();
  s.scaleLayout = ScaleLayout::Bytes;
  expectRejected(s, "ue8m0", "false", "must be true when scale_layout is bytes");
  s.ue8m0 = true;
  EXPECT_EQ(invalidMessage(s), "");
  EXPECT_TRUE(s.scalesAreBytes());
}

TEST(KernelSpecLayout, E8m0IsAnAliasOfBytes) {
  auto alias = KernelSpec::fromJson({{"hidden", 2048}, {"scale_layout", "e8m0"}, {"ue8m0", true}});
  ASSERT_TRUE(bool(alias)) << consumeToString(alias.takeError());
  EXPECT_EQ(alias->scaleLayout, ScaleLayout::Bytes);
  EXPECT_TRUE(contains(alias->canonical(), R"("scale_layout":"bytes")"));
  auto name = KernelSpec::fromJson({{"hidden", 2048}, {"scale_layout", "bytes"}, {"ue8m0", true}});
  ASSERT_TRUE(bool(name));
  EXPECT_EQ(alias->canonical(), name->canonical());
  auto parsed = parseScaleLayout("e8m0");
  ASSERT_TRUE(bool(parsed));
  EXPECT_EQ(*parsed, ScaleLayout::Bytes);
  EXPECT_STREQ(toString(ScaleLayout::Bytes), "bytes");
}

TEST(KernelSpecJson, NewFieldsParsed) {
  auto s = KernelSpec::fromJson(nlohmann::json::parse(
      R"({"hidden":2880,"group_size":32,"activation":"swiglu","alpha":1.702,"beta":1,)"
      R"("limit":7,"gate_up":"interleaved","scale_layout":"bytes","ue8m0":true,)"
      R"("scale_rounding":"floor"})"));
  ASSERT_TRUE(bool(s)) << consumeToString(s.takeError());
  EXPECT_TRUE(*s == gptOss());
  EXPECT_EQ(s->activation, Activation::Swiglu);
  EXPECT_EQ(*s->alpha, 1.702f);
  EXPECT_EQ(*s->beta, 1.0f);
  EXPECT_EQ(*s->limit, 7.0f);
  EXPECT_EQ(s->gateUp, GateUp::Interleaved);
  EXPECT_EQ(s->scaleRounding, ScaleRounding::Floor);
}

TEST(KernelSpecJson, NewFieldsWrongValuesRejected) {
  struct Case {
    nlohmann::json j;
    std::string field, value, rule;
  };
  const Case cases[] = {
      {{{"hidden", 7168}, {"activation", "relu"}},
       "activation",
       "'relu'",
       "must be one of silu, swiglu, gelu_tanh, gelu"},
      {{{"hidden", 7168}, {"activation", 1}}, "activation", "1", "must be a string"},
      {{{"hidden", 7168}, {"gate_up", "fused"}},
       "gate_up",
       "'fused'",
       "must be one of split, interleaved"},
      {{{"hidden", 7168}, {"scale_rounding", "rceil"}},
       "scale_rounding",
       "'rceil'",
       "must be one of ceil, floor"},
      {{{"hidden", 7168}, {"activation", "swiglu"}, {"alpha", "1.702"}},
       "alpha",
       "\"1.702\"",
       "must be a number"},
      {{{"hidden", 7168}, {"activation", "swiglu"}, {"beta", true}},
       "beta",
       "true",
       "must be a number"},
      {{{"hidden", 7168}, {"activation", "swiglu"}, {"limit", 1e39}},
       "limit",
       "1e+39",
       "must fit in fp32"},
      {{{"hidden", 7168}, {"alpha", 2}},
       "alpha",
       "2",
       "applies only to activation swiglu (activation is silu)"},
      {{{"hidden", 7168}, {"scale_layout", "bytes"}},
       "ue8m0",
       "false",
       "must be true when scale_layout is bytes"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.j.dump());
    const std::string m = parseError(KernelSpec::fromJson(c.j));
    EXPECT_TRUE(contains(m, "'" + c.field + "'")) << m;
    EXPECT_TRUE(contains(m, "= " + c.value)) << m;
    EXPECT_TRUE(contains(m, c.rule)) << m;
  }
}

TEST(KernelSpecJson, ParametersAreRoundedToFp32) {
  // 1.7020000000000001 and 1.702 are different doubles, one fp32.
  auto a = KernelSpec::fromJson(nlohmann::json::parse(
      R"({"hidden":2880,"group_size":32,"activation":"swiglu","alpha":1.7020000000000001})"));
  auto b = KernelSpec::fromJson(nlohmann::json::parse(
      R"({"hidden":2880,"group_size":32,"activation":"swiglu","alpha":1.70200001})"));
  ASSERT_TRUE(bool(a) && bool(b));
  EXPECT_EQ(*a->alpha, 1.702f);
  EXPECT_EQ(*b->alpha, 1.702f);
  EXPECT_EQ(a->canonical(), b->canonical());
  EXPECT_TRUE(contains(a->canonical(), R"("alpha":1.702,)"));
  // Just past FLT_MAX still rounds to FLT_MAX.
  auto big = KernelSpec::fromJson(
      {{"hidden", 2880}, {"group_size", 32}, {"activation", "swiglu"}, {"beta", 3.4028235e38}});
  ASSERT_TRUE(bool(big)) << consumeToString(big.takeError());
  EXPECT_EQ(*big->beta, std::numeric_limits<float>::max());
}

TEST(KernelSpecFields, NewFieldsFromTheCommandLine) {
  auto s = KernelSpec::fromFields({{"H", "2880"},
                                   {"G", "32"},
                                   {"act", "swiglu"},
                                   {"alpha", "1.702"},
                                   {"beta", "1"},
                                   {"limit", "7.0"},
                                   {"gate_up", "interleaved"},
                                   {"layout", "e8m0"},
                                   {"ue8m0", "1"},
                                   {"rounding", "floor"}});
  ASSERT_TRUE(bool(s)) << consumeToString(s.takeError());
  EXPECT_TRUE(*s == gptOss());
  EXPECT_EQ(s->canonical(), gptOss().canonical());
  auto longNames = KernelSpec::fromFields({{"hidden", "2880"},
                                           {"group_size", "32"},
                                           {"activation", "swiglu"},
                                           {"alpha", "0x1.b3b646p+0"},
                                           {"beta", "1e0"},
                                           {"limit", "7"},
                                           {"gate_up", "interleaved"},
                                           {"scale_layout", "bytes"},
                                           {"ue8m0", "true"},
                                           {"scale_rounding", "floor"}});
  ASSERT_TRUE(bool(longNames)) << consumeToString(longNames.takeError());
  EXPECT_EQ(longNames->canonical(), gptOss().canonical());
}

TEST(KernelSpecFields, BadNumbersRejected) {
  for (const char* bad : {"", "1.7x", " 1", "one", "1,5"}) {
    const std::string m =
        parseError(KernelSpec::fromFields({{"H", "2880"}, {"act", "swiglu"}, {"alpha", bad}}));
    EXPECT_TRUE(contains(m, "'alpha' = '" + std::string(bad) + "': must be a number")) << m;
  }
  const std::string nan =
      parseError(KernelSpec::fromFields({{"H", "2048"}, {"act", "swiglu"}, {"beta", "nan"}}));
  EXPECT_TRUE(contains(nan, "'beta' = nan: must be a finite number")) << nan;
  const std::string inf =
      parseError(KernelSpec::fromFields({{"H", "2048"}, {"act", "swiglu"}, {"limit", "inf"}}));
  EXPECT_TRUE(contains(inf, "'limit' = inf: must be a finite number > 0")) << inf;
  const std::string neg =
      parseError(KernelSpec::fromFields({{"H", "2048"}, {"act", "swiglu"}, {"limit", "-1"}}));
  EXPECT_TRUE(contains(neg, "'limit' = -1: must be a finite number > 0")) << neg;
}

TEST(KernelSpecCanonical, DefaultsOfNewFieldsKeepThePinnedText) {
  // Existing specs keep their canonical text (and so their cache keys):
  // silu, split and ceil are left out, spelled out or not.
  auto spelled = KernelSpec::fromJson(nlohmann::json::parse(
      R"({"hidden":7168,"activation":"silu","gate_up":"split","scale_rounding":"ceil"})"));
  ASSERT_TRUE(bool(spelled)) << consumeToString(spelled.takeError());
  EXPECT_EQ(spelled->canonical(), baseSpec().canonical());
  EXPECT_EQ(spelled->canonical(),
            R"({"arch":"sm_90","group_size":128,"hidden":7168,"in_dtype":"bf16","masked":false,)"
            R"("out_dtype":"fp8_e4m3","scale_layout":"row","scale_ub":false,"ue8m0":false})");
}

TEST(KernelSpecCanonical, PinnedTextOfGptOss) {
  EXPECT_EQ(gptOss().canonical(),
            R"({"activation":"swiglu","alpha":1.702,"arch":"sm_90","beta":1.0,"gate_up":)"
            R"("interleaved","group_size":32,"hidden":2880,"in_dtype":"bf16","limit":7.0,)"
            R"("masked":false,"out_dtype":"fp8_e4m3","scale_layout":"bytes",)"
            R"("scale_rounding":"floor","scale_ub":false,"ue8m0":true})");
  EXPECT_EQ(gptOss().label(),
            "H=2880 G=32 bf16->fp8_e4m3 bytes ue8m0 floor swiglu alpha=1.702 beta=1 limit=7 "
            "interleaved sm_90");
}

TEST(KernelSpecCanonical, SwigluWithDefaultParametersIsSilu) {
  KernelSpec silu = baseSpec();
  for (int variant = 0; variant < 4; ++variant) {
    KernelSpec s = baseSpec();
    s.activation = Activation::Swiglu;
    if (variant >= 1)
      s.alpha = 1.0f;
    if (variant >= 2)
      s.beta = 0.0f;
    if (variant >= 3)
      s.beta = -0.0f;
    EXPECT_EQ(invalidMessage(s), "");
    EXPECT_EQ(s.canonical(), silu.canonical()) << variant;
    EXPECT_TRUE(s == silu) << variant;
    EXPECT_EQ(s.hash(), silu.hash()) << variant;
    EXPECT_EQ(s.activationForm().activation, Activation::Silu);
  }
  auto parsed = KernelSpec::fromJson(
      nlohmann::json::parse(R"({"hidden":7168,"activation":"swiglu","alpha":1.0,"beta":0})"));
  ASSERT_TRUE(bool(parsed));
  EXPECT_EQ(parsed->canonical(), silu.canonical());
  // Any parameter that changes y keeps swiglu.
  KernelSpec clamped = baseSpec();
  clamped.activation = Activation::Swiglu;
  clamped.limit = 7.0f;
  EXPECT_TRUE(contains(clamped.canonical(), R"("activation":"swiglu")"));
  EXPECT_TRUE(contains(clamped.canonical(), R"("limit":7.0)"));
  EXPECT_FALSE(contains(clamped.canonical(), "alpha"));
  EXPECT_FALSE(clamped == silu);
}

TEST(KernelSpecCanonical, NewFieldsRoundTripThroughJson) {
  std::vector<KernelSpec> specs{gptOss()};
  KernelSpec gelu = baseSpec();
  gelu.activation = Activation::Gelu;
  gelu.gateUp = GateUp::Interleaved;
  specs.push_back(gelu);
  KernelSpec odd = gptOss();
  odd.alpha = 0.1f;
  odd.beta = -1e-7f;
  odd.limit = std::numeric_limits<float>::denorm_min();
  odd.shape = LaunchShape{4, 8, 16};
  specs.push_back(odd);
  for (const KernelSpec& s : specs) {
    SCOPED_TRACE(s.canonical());
    auto back = KernelSpec::fromJson(nlohmann::json::parse(s.canonical()));
    ASSERT_TRUE(bool(back)) << consumeToString(back.takeError());
    EXPECT_EQ(back->canonical(), s.canonical());
    EXPECT_TRUE(*back == s);
    EXPECT_EQ(back->hash(), s.hash());
  }
}

TEST(KernelSpecCanonical, EveryNewFieldChangesCanonicalAndHash) {
  const KernelSpec base = gptOss();
  std::vector<KernelSpec> variants(9, base);
  variants[0].activation = Activation::Silu;
  variants[0].alpha = variants[0].beta = variants[0].limit = std::nullopt;
  variants[1].activation = Activation::GeluTanh;
  variants[1].alpha = variants[1].beta = variants[1].limit = std::nullopt;
  variants[2].activation = Activation::Gelu;
  variants[2].alpha = variants[2].beta = variants[2].limit = std::nullopt;
  variants[3].alpha = 1.703f;
  variants[4].beta = std::nextafter(1.0f, 2.0f);
  variants[5].limit = std::nullopt;
  variants[6].gateUp = GateUp::Split;
  variants[7].scaleRounding = ScaleRounding::Ceil;
  variants[8].scaleLayout = ScaleLayout::Ue8m0Packed;
  for (size_t i = 0; i < variants.size(); ++i) {
    EXPECT_EQ(invalidMessage(variants[i]), "") << i;
    EXPECT_NE(variants[i].canonical(), base.canonical()) << i;
    EXPECT_FALSE(variants[i] == base) << i;
    EXPECT_NE(variants[i].hash(), base.hash()) << i;
    for (size_t k = 0; k < i; ++k)
      EXPECT_NE(variants[i].canonical(), variants[k].canonical()) << i << " vs " << k;
  }
}

TEST(KernelSpecCanonical, ShortestFloatText) {
  EXPECT_EQ(shortestFloatText(1.702f), "1.702");
  EXPECT_EQ(shortestFloatText(1.0f), "1");
  EXPECT_EQ(shortestFloatText(0.1f), "0.1");
  EXPECT_EQ(shortestFloatText(-0.0f), "-0");
  EXPECT_EQ(shortestFloatText(std::numeric_limits<float>::max()), "3.4028235e+38");
  EXPECT_EQ(shortestFloatText(std::numeric_limits<float>::denorm_min()), "1e-45");
  EXPECT_EQ(shortestFloatText(std::nextafter(1.0f, 2.0f)), "1.0000001");
  for (float v : {1.702f, 0.1f, 3.3333333f, 7.0f, 1e-30f, 123456.789f})
    EXPECT_EQ(std::strtof(shortestFloatText(v).c_str(), nullptr), v) << v;
}

TEST(KernelSpecEnums, NewNamesRoundTrip) {
  for (Activation a :
       {Activation::Silu, Activation::Swiglu, Activation::GeluTanh, Activation::Gelu}) {
    auto p = parseActivation(toString(a));
    ASSERT_TRUE(bool(p));
    EXPECT_EQ(*p, a);
  }
  for (GateUp g : {GateUp::Split, GateUp::Interleaved}) {
    auto p = parseGateUp(toString(g));
    ASSERT_TRUE(bool(p));
    EXPECT_EQ(*p, g);
  }
  for (ScaleRounding r : {ScaleRounding::Ceil, ScaleRounding::Floor}) {
    auto p = parseScaleRounding(toString(r));
    ASSERT_TRUE(bool(p));
    EXPECT_EQ(*p, r);
  }
  EXPECT_EQ(maxNormalExponent(OutDtype::FP8E4M3), 8);
  EXPECT_EQ(maxNormalExponent(OutDtype::FP8E5M2), 15);
}

// Found by fuzz_spec: a value that is not UTF-8 used to abort while the
// error message was built; it must be an error that still names the field.
TEST(KernelSpecFields, InvalidUtf8ValueIsAnErrorNotAnAbort) {
  auto spec = KernelSpec::fromFields({{"hidden", "7168"}, {"foo", "\xa0\xff"}});
  ASSERT_FALSE(bool(spec));
  std::string message;
  EXPECT_EQ(consumeError(spec.takeError(), &message), ErrorCode::InvalidSpec);
  EXPECT_TRUE(contains(message, "'foo'"));
  EXPECT_TRUE(contains(message, "unknown field"));
}

// ---- fp4_e2m1: NVFP4, MXFP4 and swizzled_128x4 (docs/contract.md section 8) ------------

KernelSpec nvfp4() {
  KernelSpec s = baseSpec();
  s.groupSize = 16;
  s.outDtype = OutDtype::FP4E2M1;
  s.scaleLayout = ScaleLayout::Swizzled128x4;
  return s;
}

KernelSpec mxfp4() {
  KernelSpec s = baseSpec();
  s.groupSize = 32;
  s.outDtype = OutDtype::FP4E2M1;
  s.ue8m0 = true;
  s.scaleLayout = ScaleLayout::Swizzled128x4;
  return s;
}

TEST(KernelSpecFp4, MinScaleDoesNotApply) {
  for (KernelSpec s : {nvfp4(), mxfp4()}) {
    s.minScale = 1e-6f;
    const std::string message = invalidMessage(s);
    EXPECT_TRUE(contains(message, "min_scale")) << message;
    EXPECT_TRUE(contains(message, "fp4_e2m1")) << message;
  }
}

TEST(KernelSpecFp4, NamesAndConstants) {
  auto d = parseOutDtype("fp4_e2m1");
  ASSERT_TRUE(bool(d));
  EXPECT_EQ(*d, OutDtype::FP4E2M1);
  EXPECT_STREQ(toString(OutDtype::FP4E2M1), "fp4_e2m1");
  auto l = parseScaleLayout("swizzled_128x4");
  ASSERT_TRUE(bool(l));
  EXPECT_EQ(*l, ScaleLayout::Swizzled128x4);
  EXPECT_STREQ(toString(ScaleLayout::Swizzled128x4), "swizzled_128x4");
  EXPECT_EQ(quantMax(OutDtype::FP4E2M1), 6.0f);
  EXPECT_EQ(minScale(OutDtype::FP4E2M1), std::ldexp(1.0f, -127));
  EXPECT_EQ(maxNormalExponent(OutDtype::FP4E2M1), 2);
  EXPECT_EQ(outBits(OutDtype::FP4E2M1), 4);
  EXPECT_EQ(outBits(OutDtype::FP8E4M3), 8);
  std::string message;
  auto bad = parseOutDtype("fp4");
  ASSERT_FALSE(bool(bad));
  consumeError(bad.takeError(), &message);
  EXPECT_TRUE(contains(message, "fp4_e2m1")) << message;
  auto badLayout = parseScaleLayout("swizzled");
  ASSERT_FALSE(bool(badLayout));
  consumeError(badLayout.takeError(), &message);
  EXPECT_TRUE(contains(message, "swizzled_128x4")) << message;
}

TEST(KernelSpecFp4, Nvfp4AndMxfp4AreValid) {
  for (ScaleLayout layout : {ScaleLayout::Bytes, ScaleLayout::Swizzled128x4})
    for (bool masked : {false, true})
      for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32}) {
        KernelSpec s = nvfp4();
        s.scaleLayout = layout;
        s.masked = masked;
        s.inDtype = in;
        EXPECT_EQ(invalidMessage(s), "") << s.label();
        EXPECT_TRUE(s.isNvfp4());
        EXPECT_TRUE(s.needsGlobalScale());
        EXPECT_TRUE(s.scalesAreBytes());
        EXPECT_EQ(s.outputRowBytes(), s.hidden / 2);
      }
  // MXFP4: every layout (fp32 powers of two in row / col / col_tma), both
  // roundings, a scale bound under ceil.
  for (ScaleLayout layout :
       {ScaleLayout::Row, ScaleLayout::Col, ScaleLayout::ColTma, ScaleLayout::Ue8m0Packed,
        ScaleLayout::Bytes, ScaleLayout::Swizzled128x4})
    for (ScaleRounding r : {ScaleRounding::Ceil, ScaleRounding::Floor}) {
      KernelSpec s = mxfp4();
      s.scaleLayout = layout;
      s.scaleRounding = r;
      EXPECT_EQ(invalidMessage(s), "") << s.label();
      EXPECT_FALSE(s.isNvfp4());
      EXPECT_FALSE(s.needsGlobalScale());
    }
  KernelSpec ub = mxfp4();
  ub.hasScaleUb = true;
  EXPECT_EQ(invalidMessage(ub), "");
  // Other activations and interleaved gate/up are orthogonal to the format.
  KernelSpec act = nvfp4();
  act.activation = Activation::Swiglu;
  act.limit = 7.0f;
  act.gateUp = GateUp::Interleaved;
  EXPECT_EQ(invalidMessage(act), "");
}

TEST(KernelSpecFp4, GroupSizesOtherThan16And32Rejected) {
  for (int g : {48, 64, 128, 96}) {
    KernelSpec s = nvfp4();
    s.groupSize = g;
    s.hidden = g * 48;
    expectRejected(s, "group_size", std::to_string(g),
                   "fp4_e2m1 needs G = 16 (NVFP4) or G = 32 with ue8m0 (MXFP4)");
    s.ue8m0 = true;
    expectRejected(s, "group_size", std::to_string(g), "fp4_e2m1 needs G = 16");
  }
  KernelSpec g16 = nvfp4();
  g16.ue8m0 = true;
  expectRejected(g16, "ue8m0", "true", "must be false for fp4_e2m1 with group_size 16");
  KernelSpec g32 = mxfp4();
  g32.ue8m0 = false;
  expectRejected(g32, "ue8m0", "false", "must be true for fp4_e2m1 with group_size 32");
}

TEST(KernelSpecFp4, Nvfp4Rejections) {
  KernelSpec ub = nvfp4();
  ub.hasScaleUb = true;
  expectRejected(ub, "scale_ub", "true", "must be false for NVFP4");
  for (ScaleLayout layout :
       {ScaleLayout::Row, ScaleLayout::Col, ScaleLayout::ColTma, ScaleLayout::Ue8m0Packed}) {
    KernelSpec s = nvfp4();
    s.scaleLayout = layout;
    expectRejected(s, "scale_layout", std::string("'") + toString(layout) + "'",
                   "must be bytes or swizzled_128x4");
  }
  KernelSpec floor = nvfp4();
  floor.scaleRounding = ScaleRounding::Floor;
  expectRejected(floor, "scale_rounding", "'floor'", "needs ue8m0 true");
}

TEST(KernelSpecFp4, SwizzledNeedsByteScales) {
  // fp32 scales (no ue8m0, not NVFP4) have no 128x4 layout, for every output.
  for (OutDtype out : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8}) {
    KernelSpec s = baseSpec();
    s.outDtype = out;
    s.scaleLayout = ScaleLayout::Swizzled128x4;
    expectRejected(s, "scale_layout", "'swizzled_128x4'", "needs ue8m0 true (E8M0)");
    // Every E8M0 output takes it: MXFP8, e5m2, int8 with power-of-two scales.
    s.ue8m0 = true;
    EXPECT_EQ(invalidMessage(s), "") << s.label();
    EXPECT_TRUE(s.scalesAreBytes());
  }
  KernelSpec mxfp8 = baseSpec();
  mxfp8.groupSize = 32;
  mxfp8.ue8m0 = true;
  mxfp8.scaleRounding = ScaleRounding::Floor;
  mxfp8.scaleLayout = ScaleLayout::Swizzled128x4;
  EXPECT_EQ(invalidMessage(mxfp8), "");
  // bytes without ue8m0 stays refused except for NVFP4.
  KernelSpec bytes = baseSpec();
  bytes.scaleLayout = ScaleLayout::Bytes;
  expectRejected(bytes, "ue8m0", "false", "only NVFP4 stores E4M3 bytes");
}

TEST(KernelSpecFp4, LaunchShapeMustMakeWholeBytes) {
  KernelSpec s = nvfp4();
  s.shape = LaunchShape{2, 8, 32};
  EXPECT_EQ(invalidMessage(s), "");
  s.shape = LaunchShape{16, 1, 32};
  expectRejected(s, "launch.vec_width", "1", "fp4_e2m1 packs two values a byte");
  s.shape = LaunchShape{8, 2, 32};
  EXPECT_EQ(invalidMessage(s), "");
  s.gateUp = GateUp::Interleaved;
  expectRejected(s, "launch.vec_width", "2", "vec_width >= 4 (gate_up interleaved)");
  s.shape = LaunchShape{4, 4, 32};
  EXPECT_EQ(invalidMessage(s), "");
  // The same shape is fine for an 8-bit output.
  KernelSpec fp8 = baseSpec();
  fp8.groupSize = 16;
  fp8.shape = LaunchShape{16, 1, 32};
  EXPECT_EQ(invalidMessage(fp8), "");
}

TEST(KernelSpecFp4, CanonicalJsonAndKey) {
  auto parsed = KernelSpec::fromJson(nlohmann::json::parse(
      R"({"hidden":7168,"group_size":16,"out_dtype":"fp4_e2m1","scale_layout":"swizzled_128x4"})"));
  ASSERT_TRUE(bool(parsed)) << consumeToString(parsed.takeError());
  EXPECT_EQ(*parsed, nvfp4());
  EXPECT_EQ(
      parsed->canonical(),
      R"({"arch":"sm_90","group_size":16,"hidden":7168,"in_dtype":"bf16","masked":false,)"
      R"("out_dtype":"fp4_e2m1","scale_layout":"swizzled_128x4","scale_ub":false,"ue8m0":false})");
  auto fields = KernelSpec::fromFields({{"H", "7168"},
                                        {"G", "32"},
                                        {"out", "fp4_e2m1"},
                                        {"layout", "swizzled_128x4"},
                                        {"ue8m0", "1"}});
  ASSERT_TRUE(bool(fields)) << consumeToString(fields.takeError());
  EXPECT_EQ(*fields, mxfp4());
  auto again = KernelSpec::fromJson(nlohmann::json::parse(fields->canonical()));
  ASSERT_TRUE(bool(again));
  EXPECT_EQ(again->canonical(), fields->canonical());
  // NVFP4, MXFP4, MXFP8 in the same layout and the bytes layout: all distinct.
  KernelSpec nvBytes = nvfp4();
  nvBytes.scaleLayout = ScaleLayout::Bytes;
  KernelSpec mxfp8 = mxfp4();
  mxfp8.outDtype = OutDtype::FP8E4M3;
  const KernelSpec variants[] = {nvfp4(), mxfp4(), nvBytes, mxfp8};
  for (size_t i = 0; i < 4; ++i)
    for (size_t k = 0; k < i; ++k) {
      EXPECT_NE(variants[i].canonical(), variants[k].canonical()) << i << " vs " << k;
      EXPECT_NE(variants[i].hash(), variants[k].hash()) << i << " vs " << k;
      EXPECT_FALSE(variants[i] == variants[k]);
    }
  EXPECT_TRUE(contains(nvfp4().label(), "fp4_e2m1 swizzled_128x4"));
}

TEST(KernelSpecFp4, ArchSuffixesAccepted) {
  for (const char* arch :
       {"sm_90", "sm_100", "sm_100a", "sm_100f", "sm_120", "sm_120a", "sm_120f"}) {
    KernelSpec s = nvfp4();
    s.arch = arch;
    EXPECT_EQ(invalidMessage(s), "") << arch;
  }
}

// ---- min_scale: the scale's floor as a spec field ----------------------------------------

// What code that floors amax at 1e-10 before dividing by 448 gets:
// fl32(fl32(1e-10) / 448).
constexpr float kVllmFloor = 0x1.f6a246p-43f; // 2.2321428e-13

TEST(KernelSpecMinScale, DefaultIsMinScaleOfTheOutputType) {
  for (OutDtype o : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8}) {
    KernelSpec s = baseSpec();
    s.outDtype = o;
    EXPECT_EQ(s.minScaleValue(), minScale(o)) << toString(o);
    EXPECT_FALSE(s.minScaleForm().has_value());
    s.minScale = 1e-6f;
    EXPECT_EQ(s.minScaleValue(), 1e-6f) << toString(o);
  }
}

TEST(KernelSpecMinScale, ValidValues) {
  KernelSpec s = baseSpec();
  for (float v : {kVllmFloor, 1e-12f, std::numeric_limits<float>::min(), 1.0f, 3e38f}) {
    s.minScale = v;
    EXPECT_EQ(invalidMessage(s), "") << v;
  }
  s.ue8m0 = true;
  s.scaleLayout = ScaleLayout::ColTma;
  s.minScale = kVllmFloor;
  EXPECT_EQ(invalidMessage(s), "");
  s.outDtype = OutDtype::INT8;
  s.hasScaleUb = true;
  EXPECT_EQ(invalidMessage(s), "");
}

TEST(KernelSpecMinScale, NotFiniteZeroNegativeOrSubnormalRejected) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::string rule = "must be a finite fp32 number >= 1.17549435e-38 (2^-126";
  KernelSpec s = baseSpec();
  for (auto [v, text] :
       {std::pair<float, const char*>{0.0f, "0"},
        {-0.0f, "-0"},
        {-1e-6f, "-1e-06"},
        {inf, "inf"},
        {nan, "nan"},
        {std::numeric_limits<float>::denorm_min(), "1e-45"},
        {std::nextafter(std::numeric_limits<float>::min(), 0.0f), "1.1754942e-38"}}) {
    s.minScale = v;
    expectRejected(s, "min_scale", text, rule);
  }
  // 1e-40 rounds to an fp32 subnormal; 1e-50 to zero.
  for (double d : {1e-40, 1e-50}) {
    const std::string m = parseError(KernelSpec::fromJson({{"hidden", 7168}, {"min_scale", d}}));
    EXPECT_TRUE(contains(m, "'min_scale' = ")) << m;
    EXPECT_TRUE(contains(m, "after rounding to fp32")) << m;
  }
}

TEST(KernelSpecMinScale, FloorRoundingHasNoMinimumScale) {
  KernelSpec s = gptOss();
  s.minScale = 1e-10f;
  expectRejected(s, "min_scale", "1e-10",
                 "applies only to scale_rounding ceil (the OCP MX floor rule");
  // At the default value too: it would look as if it did something.
  s.minScale = minScale(OutDtype::FP8E4M3);
  expectRejected(s, "min_scale", "4.359654e-06", "applies only to scale_rounding ceil");
}

TEST(KernelSpecMinScale, JsonAndCommandLine) {
  auto j =
      KernelSpec::fromJson(nlohmann::json::parse(R"({"hidden":7168,"min_scale":2.2321428e-13})"));
  ASSERT_TRUE(bool(j)) << consumeToString(j.takeError());
  EXPECT_EQ(*j->minScale, kVllmFloor);
  EXPECT_EQ(j->canonical(),
            R"({"arch":"sm_90","group_size":128,"hidden":7168,"in_dtype":"bf16","masked":false,)"
            R"("min_scale":2.2321428e-13,"out_dtype":"fp8_e4m3","scale_layout":"row",)"
            R"("scale_ub":false,"ue8m0":false})");
  EXPECT_EQ(j->label(), "H=7168 G=128 bf16->fp8_e4m3 row min_scale=2.2321428e-13 sm_90");
  auto f = KernelSpec::fromFields({{"H", "7168"}, {"min_scale", "0x1.f6a246p-43"}});
  ASSERT_TRUE(bool(f)) << consumeToString(f.takeError());
  EXPECT_EQ(f->canonical(), j->canonical());
  EXPECT_TRUE(*f == *j);
  EXPECT_EQ(f->hash(), j->hash());
  // Rounded to fp32: two decimals of one fp32 are one spec.
  auto d = KernelSpec::fromJson({{"hidden", 7168}, {"min_scale", 1e-10 / 448.0}});
  ASSERT_TRUE(bool(d)) << consumeToString(d.takeError());
  EXPECT_EQ(d->canonical(), j->canonical());
  for (const char* bad : {"", "tiny", "1e-10x"}) {
    const std::string m = parseError(KernelSpec::fromFields({{"H", "7168"}, {"min_scale", bad}}));
    EXPECT_TRUE(contains(m, "'min_scale' = '" + std::string(bad) + "': must be a number")) << m;
  }
  const std::string t =
      parseError(KernelSpec::fromJson({{"hidden", 7168}, {"min_scale", "1e-10"}}));
  EXPECT_TRUE(contains(t, "'min_scale' = \"1e-10\": must be a number")) << t;
  // Round trip.
  auto back = KernelSpec::fromJson(nlohmann::json::parse(j->canonical()));
  ASSERT_TRUE(bool(back));
  EXPECT_EQ(back->canonical(), j->canonical());
}

TEST(KernelSpecMinScale, TheDefaultValueKeepsTheOldText) {
  for (OutDtype o : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8}) {
    KernelSpec plain = baseSpec();
    plain.outDtype = o;
    KernelSpec spelled = plain;
    spelled.minScale = minScale(o);
    EXPECT_EQ(invalidMessage(spelled), "");
    EXPECT_EQ(spelled.canonical(), plain.canonical()) << toString(o);
    EXPECT_TRUE(spelled == plain);
    EXPECT_EQ(spelled.hash(), plain.hash());
  }
  // The pinned text of the default spec, min_scale spelled out.
  auto parsed =
      KernelSpec::fromJson(nlohmann::json::parse(R"({"hidden":7168,"min_scale":4.3596540e-06})"));
  ASSERT_TRUE(bool(parsed)) << consumeToString(parsed.takeError());
  EXPECT_EQ(parsed->canonical(),
            R"({"arch":"sm_90","group_size":128,"hidden":7168,"in_dtype":"bf16","masked":false,)"
            R"("out_dtype":"fp8_e4m3","scale_layout":"row","scale_ub":false,"ue8m0":false})");
}

TEST(KernelSpecMinScale, PowerOfTwoScalesKeepOnlyTheFloorsPowerOfTwo) {
  // With ue8m0 (ceil), the scale is 2^ceil(log2(max(s, m))) = max(2^ceil(log2 s),
  // 2^ceil(log2 m)): m and its power-of-two ceiling give the same scales.
  KernelSpec a = baseSpec();
  a.ue8m0 = true;
  a.minScale = kVllmFloor; // 2^-42.03.. -> 2^-42
  KernelSpec b = a;
  b.minScale = 0x1p-42f;
  EXPECT_EQ(*a.minScaleForm(), 0x1p-42f);
  EXPECT_EQ(a.minScaleValue(), 0x1p-42f);
  EXPECT_EQ(a.canonical(), b.canonical());
  EXPECT_TRUE(a == b);
  EXPECT_EQ(a.hash(), b.hash());
  EXPECT_TRUE(contains(a.canonical(), R"("min_scale":2.2737368e-13)")) << a.canonical();
  // One of the default's power of two (e4m3: 1 / (448 * 512) -> 2^-17) is the default.
  KernelSpec d = baseSpec();
  d.ue8m0 = true;
  KernelSpec e = d;
  e.minScale = 3e-6f; // in (2^-19, 2^-18]: 2^-18, not the default's 2^-17
  EXPECT_NE(e.canonical(), d.canonical());
  e.minScale = 5e-6f; // in (2^-18, 2^-17]: the default's power of two
  EXPECT_EQ(e.canonical(), d.canonical());
  EXPECT_TRUE(e == d);
  // The ceiling stops at 2^127.
  e.minScale = std::numeric_limits<float>::max();
  EXPECT_EQ(*e.minScaleForm(), 0x1p127f);
  // Without ue8m0 every fp32 counts.
  KernelSpec f = baseSpec();
  f.minScale = kVllmFloor;
  KernelSpec g = f;
  g.minScale = 0x1p-42f;
  EXPECT_NE(f.canonical(), g.canonical());
  EXPECT_FALSE(f == g);
}

TEST(KernelSpecMinScale, ChangesCanonicalAndHash) {
  const KernelSpec base = baseSpec();
  std::vector<KernelSpec> variants(3, base);
  variants[0].minScale = kVllmFloor;
  variants[1].minScale = std::nextafter(kVllmFloor, 1.0f);
  variants[2].minScale = 1e-12f;
  for (size_t i = 0; i < variants.size(); ++i) {
    EXPECT_NE(variants[i].canonical(), base.canonical()) << i;
    EXPECT_FALSE(variants[i] == base) << i;
    EXPECT_NE(variants[i].hash(), base.hash()) << i;
    for (size_t k = 0; k < i; ++k)
      EXPECT_NE(variants[i].canonical(), variants[k].canonical()) << i << " vs " << k;
  }
}

} // namespace
} // namespace bqjit
