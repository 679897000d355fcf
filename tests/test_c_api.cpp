// The C API (include/bqjit/bqjit.h) on bad input: NULL pointers, NULL or
// invalid JSON, invalid spec fields, small buffers, no driver; and the
// per-thread error message. Linked against the shared library, so only the
// exported bqjit_* symbols are reachable.
#include "bqjit/bqjit.h"

#include <dlfcn.h>
#include <stdlib.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace {

constexpr const char* kSpec = R"({"hidden": 2048, "group_size": 128, "arch": "sm_90"})";

testing::AssertionResult contains(const std::string& text, const std::string& needle) {
  if (text.find(needle) != std::string::npos)
    return testing::AssertionSuccess();
  return testing::AssertionFailure() << "\"" << text << "\" lacks \"" << needle << "\"";
}

std::string lastError() {
  return bqjit_last_error();
}

/// A service on a fresh temporary cache directory, removed afterwards.
class CApiTest : public testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bqjit_c_api_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_EQ(bqjit_service_create(dir_.c_str(), &svc_), BQJIT_OK) << lastError();
    ASSERT_NE(svc_, nullptr);
    EXPECT_EQ(lastError(), "");
  }
  void TearDown() override {
    bqjit_service_destroy(svc_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string dir_;
  bqjit_service svc_ = nullptr;
};

// The one version number: the top-level VERSION file, the C API and the
// soname (libbqjit.so.MAJOR.MINOR, which the loader resolved for this test).
TEST(CApiVersion, MatchesTheVersionFileAndTheSoname) {
  std::ifstream in(BQJIT_VERSION_FILE);
  ASSERT_TRUE(in) << BQJIT_VERSION_FILE;
  std::string expected;
  in >> expected;
  ASSERT_NE(bqjit_version(), nullptr);
  EXPECT_EQ(std::string(bqjit_version()), expected);

  const size_t minorEnd = expected.rfind('.');
  ASSERT_NE(minorEnd, std::string::npos);
  Dl_info info{};
  ASSERT_NE(::dladdr(reinterpret_cast<void*>(&bqjit_version), &info), 0);
  ASSERT_NE(info.dli_fname, nullptr);
  const std::string soname = "libbqjit.so." + expected.substr(0, minorEnd);
  const std::string loaded = info.dli_fname;
  EXPECT_EQ(std::filesystem::path(loaded).filename().string(), soname) << loaded;
}

TEST_F(CApiTest, NullOutPointersAreInvalidArguments) {
  EXPECT_EQ(bqjit_service_create(dir_.c_str(), nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "out is NULL"));

  EXPECT_EQ(bqjit_kernel_get(svc_, kSpec, 0, nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "out is NULL"));

  // `needed` is optional; a NULL buffer is "too small".
  EXPECT_EQ(bqjit_default_launch(kSpec, 16, nullptr, 0, nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "too small"));
  char buf[256];
  EXPECT_EQ(bqjit_default_launch(kSpec, 16, buf, sizeof buf, nullptr), BQJIT_OK) << lastError();
}

TEST_F(CApiTest, NullServiceIsAnInvalidArgument) {
  char buf[64];
  size_t needed = 0;
  EXPECT_EQ(bqjit_compile(nullptr, kSpec, buf, sizeof buf, &needed), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "service is NULL"));

  EXPECT_EQ(bqjit_spec_for_device(nullptr, kSpec, 0, buf, sizeof buf, &needed),
            BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "service is NULL"));

  bqjit_kernel kernel = reinterpret_cast<bqjit_kernel>(&needed);
  EXPECT_EQ(bqjit_kernel_get(nullptr, kSpec, 0, &kernel), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "service is NULL"));

  // Destroying and releasing NULL are no-ops.
  bqjit_service_destroy(nullptr);
  bqjit_kernel_release(nullptr);
}

TEST_F(CApiTest, NullSpecJson) {
  char buf[256];
  size_t needed = 0;
  EXPECT_EQ(bqjit_compile(svc_, nullptr, buf, sizeof buf, &needed), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "spec_json is NULL"));

  EXPECT_EQ(bqjit_default_launch(nullptr, 16, buf, sizeof buf, &needed),
            BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "spec_json is NULL"));

  bqjit_kernel kernel = nullptr;
  EXPECT_EQ(bqjit_kernel_get(svc_, nullptr, 0, &kernel), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(kernel, nullptr);
  EXPECT_TRUE(contains(lastError(), "spec_json is NULL"));

  EXPECT_EQ(bqjit_spec_for_device(svc_, nullptr, 0, buf, sizeof buf, &needed),
            BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "spec_json is NULL"));
}

TEST_F(CApiTest, InvalidJsonIsAnInvalidSpec) {
  char buf[256];
  size_t needed = 0;
  for (const char* text : {"", "{", "{\"hidden\": 2048,}", "not json", "[1, 2", "\xff\xfe"}) {
    SCOPED_TRACE(text);
    EXPECT_EQ(bqjit_compile(svc_, text, buf, sizeof buf, &needed), BQJIT_ERROR_INVALID_SPEC);
    EXPECT_TRUE(contains(lastError(), "not valid JSON"));
    EXPECT_EQ(bqjit_default_launch(text, 16, buf, sizeof buf, &needed), BQJIT_ERROR_INVALID_SPEC);
    EXPECT_EQ(bqjit_spec_for_device(svc_, text, 0, buf, sizeof buf, &needed),
              BQJIT_ERROR_INVALID_SPEC);
    bqjit_kernel kernel = nullptr;
    EXPECT_EQ(bqjit_kernel_get(svc_, text, 0, &kernel), BQJIT_ERROR_INVALID_SPEC);
    EXPECT_EQ(kernel, nullptr);
  }
  // Valid JSON that is not an object.
  for (const char* text : {"[]", "7168", "null", "\"hidden\""}) {
    SCOPED_TRACE(text);
    EXPECT_EQ(bqjit_compile(svc_, text, buf, sizeof buf, &needed), BQJIT_ERROR_INVALID_SPEC);
    EXPECT_TRUE(contains(lastError(), "must be a JSON object"));
  }
}

/// Every entry point that takes spec JSON, on `text`: each must refuse it as
/// an invalid spec with a message containing every one of `needles`.
void expectEveryEntryRefuses(bqjit_service svc, const std::string& text,
                             const std::vector<std::string>& needles) {
  char buf[256];
  size_t needed = 0;
  bqjit_kernel kernel = nullptr;
  const std::vector<std::pair<const char*, std::function<bqjit_status()>>> entries = {
      {"bqjit_compile", [&] { return bqjit_compile(svc, text.c_str(), buf, sizeof buf, &needed); }},
      {"bqjit_default_launch",
       [&] { return bqjit_default_launch(text.c_str(), 16, buf, sizeof buf, &needed); }},
      {"bqjit_spec_for_device",
       [&] { return bqjit_spec_for_device(svc, text.c_str(), 0, buf, sizeof buf, &needed); }},
      {"bqjit_kernel_get", [&] { return bqjit_kernel_get(svc, text.c_str(), 0, &kernel); }},
  };
  for (const auto& [name, call] : entries) {
    SCOPED_TRACE(name);
    EXPECT_EQ(call(), BQJIT_ERROR_INVALID_SPEC);
    const std::string message = lastError();
    EXPECT_LT(message.size(), 1000u) << message.substr(0, 1000);
    for (const std::string& needle : needles)
      EXPECT_TRUE(contains(message, needle));
  }
  EXPECT_EQ(kernel, nullptr);
}

// Nested 100000 levels deep (200 KB): the message used to dump the value,
// recursing once per level, and the calling process died of a stack overflow.
TEST_F(CApiTest, DeepJsonIsAnErrorNotACrash) {
  const std::string deep =
      "{\"hidden\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  expectEveryEntryRefuses(svc_, deep,
                          {"invalid-spec: spec_json: longer than the limit of 65536 bytes"});
  // Within the size limit (60 KB): refused for its depth, with the place.
  const std::string nested = std::string(30000, '[') + std::string(30000, ']');
  expectEveryEntryRefuses(svc_, nested,
                          {"spec_json: arrays and objects nested more than 64 levels deep at "
                           "byte 65 (in [0][0]",
                           "the limit is 64 levels"});
  expectEveryEntryRefuses(svc_, "{\"hidden\": 2048, \"launch\": " + nested + "}",
                          {"nested more than 64 levels deep", "(in launch[0][0]"});
}

// The last of a repeated key used to win silently.
TEST_F(CApiTest, RepeatedKeyIsAnInvalidSpec) {
  expectEveryEntryRefuses(svc_, R"({"hidden": 2048, "group_size": 128, "hidden": 4096})",
                          {"spec_json: the key \"hidden\" appears twice in the top-level object",
                           "a key may appear only once"});
  expectEveryEntryRefuses(svc_, R"({"hidden": 2048, "launch": {"threads_per_group": 4,
      "vec_width": 8, "groups_per_block": 8, "vec_width": 2}})",
                          {"the key \"vec_width\" appears twice in launch"});
}

// The whole text used to be copied into the message.
TEST_F(CApiTest, InvalidJsonMessageIsShortAndSaysWhere) {
  const std::string text = "{\"hidden\": 2048, \"comment\": \"" + std::string(60000, 'x') + "\"";
  // The end of the input, one past its last byte.
  const std::string end = std::to_string(text.size() + 1);
  expectEveryEntryRefuses(
      svc_, text,
      {"spec_json: not valid JSON at line 1, column " + end + " (byte " + end + "): ",
       "unexpected end of input"});
  expectEveryEntryRefuses(svc_, "[7168, ]", {"spec_json: not valid JSON at line 1, column 8"});
}

TEST_F(CApiTest, InvalidSpecFieldIsNamed) {
  struct Case {
    const char* json;
    const char* field;
  };
  const Case cases[] = {
      {R"({"hidden": 7168, "group_size": 100})", "'group_size'"},
      {R"({"hidden": 0})", "'hidden'"},
      {R"({"hidden": "7168"})", "'hidden'"},
      {R"({"hidden": 7168, "in_dtype": "int4"})", "'in_dtype'"},
      {R"({"hidden": 7168, "out_dtype": "fp4"})", "'out_dtype'"},
      {R"({"hidden": 7168, "scale_layout": "diagonal"})", "'scale_layout'"},
      {R"({"hidden": 7168, "ue8m0": 1})", "'ue8m0'"},
      {R"({"hidden": 7168, "arch": "sm_70"})", "'arch'"},
      {R"({"hidden": 7168, "hiden": 1})", "'hiden'"},
      {R"({"group_size": 128})", "'hidden'"},
      {R"({"hidden": 7168, "launch": {"threads_per_group": 4, "vec_width": 3,
           "groups_per_block": 8}})",
       "'launch.vec_width'"},
      {R"({"hidden": 99999999999})", "'hidden'"},
  };
  char buf[256];
  size_t needed = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.json);
    EXPECT_EQ(bqjit_compile(svc_, c.json, buf, sizeof buf, &needed), BQJIT_ERROR_INVALID_SPEC);
    EXPECT_TRUE(contains(lastError(), c.field));
    EXPECT_TRUE(contains(lastError(), "invalid-spec"));
    EXPECT_EQ(bqjit_default_launch(c.json, 16, buf, sizeof buf, &needed), BQJIT_ERROR_INVALID_SPEC);
    EXPECT_TRUE(contains(lastError(), c.field));
    bqjit_kernel kernel = nullptr;
    EXPECT_EQ(bqjit_kernel_get(svc_, c.json, 0, &kernel), BQJIT_ERROR_INVALID_SPEC);
    EXPECT_TRUE(contains(lastError(), c.field));
  }
}

// The activation fields of docs/contract.md sections 6 and 7 go through the same JSON.
TEST_F(CApiTest, ActivationFieldsParseAndCompile) {
  const char* oss = R"({"hidden": 2880, "group_size": 32, "activation": "swiglu", "alpha": 1.702,
      "beta": 1, "limit": 7, "gate_up": "interleaved", "scale_layout": "e8m0", "ue8m0": true,
      "scale_rounding": "floor"})";
  size_t needed = 0;
  ASSERT_EQ(bqjit_compile(svc_, oss, nullptr, 0, &needed), BQJIT_ERROR_INVALID_ARGUMENT);
  std::vector<char> buf(needed);
  ASSERT_EQ(bqjit_compile(svc_, oss, buf.data(), buf.size(), nullptr), BQJIT_OK) << lastError();
  auto j = nlohmann::json::parse(buf.data());
  EXPECT_EQ(j["spec"]["activation"], "swiglu");
  EXPECT_EQ(j["spec"]["alpha"].dump(), "1.702");
  EXPECT_EQ(j["spec"]["scale_layout"], "bytes");
  EXPECT_EQ(j["spec"]["scale_rounding"], "floor");
  EXPECT_EQ(j["spec"]["gate_up"], "interleaved");
  bqjit_spec prepared = nullptr;
  ASSERT_EQ(bqjit_spec_parse(oss, &prepared), BQJIT_OK) << lastError();
  bqjit_spec_release(prepared);

  struct Case {
    const char* json;
    const char* message;
  };
  const Case cases[] = {
      {R"({"hidden": 7168, "alpha": 1.702})",
       "'alpha' = 1.702: applies only to activation swiglu (activation is silu)"},
      {R"({"hidden": 7168, "ue8m0": true, "out_dtype": "int8", "scale_rounding": "floor"})",
       "'scale_rounding' = 'floor': needs a floating-point out_dtype"},
      {R"({"hidden": 7168, "activation": "swiglu", "limit": 0})",
       "'limit' = 0: must be a finite number > 0"},
      {R"({"hidden": 7168, "activation": "relu"})", "'activation' = 'relu': must be one of"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.json);
    char small[256];
    EXPECT_EQ(bqjit_compile(svc_, c.json, small, sizeof small, &needed), BQJIT_ERROR_INVALID_SPEC);
    EXPECT_TRUE(contains(lastError(), c.message));
  }
}

// min_scale (the scale's floor) goes through the same JSON, rounded to fp32;
// at its default it is left out of the spec.
TEST_F(CApiTest, MinScaleFieldParsesCompilesAndNamesItsErrors) {
  const char* floored = R"({"hidden": 2048, "min_scale": 2.2321428e-13})";
  size_t needed = 0;
  ASSERT_EQ(bqjit_compile(svc_, floored, nullptr, 0, &needed), BQJIT_ERROR_INVALID_ARGUMENT);
  std::vector<char> buf(needed);
  ASSERT_EQ(bqjit_compile(svc_, floored, buf.data(), buf.size(), nullptr), BQJIT_OK) << lastError();
  auto j = nlohmann::json::parse(buf.data());
  EXPECT_EQ(j["spec"]["min_scale"].dump(), "2.2321428e-13");
  const char* spelledDefault = R"({"hidden": 2048, "min_scale": 4.359654e-06})";
  ASSERT_EQ(bqjit_compile(svc_, spelledDefault, nullptr, 0, &needed), BQJIT_ERROR_INVALID_ARGUMENT);
  buf.assign(needed, '\0');
  ASSERT_EQ(bqjit_compile(svc_, spelledDefault, buf.data(), buf.size(), nullptr), BQJIT_OK)
      << lastError();
  EXPECT_FALSE(nlohmann::json::parse(buf.data())["spec"].contains("min_scale"));
  bqjit_spec prepared = nullptr;
  ASSERT_EQ(bqjit_spec_parse(floored, &prepared), BQJIT_OK) << lastError();
  bqjit_spec_release(prepared);

  struct Case {
    const char* json;
    const char* message;
  };
  const Case cases[] = {
      {R"({"hidden": 2048, "min_scale": 0})", "'min_scale' = 0: must be a finite fp32 number >="},
      {R"({"hidden": 2048, "min_scale": -1e-10})", "'min_scale' = -1e-10: must be a finite"},
      {R"({"hidden": 2048, "min_scale": "1e-10"})", "'min_scale' = \"1e-10\": must be a number"},
      {R"({"hidden": 2048, "group_size": 32, "ue8m0": true, "scale_rounding": "floor",
           "min_scale": 1e-10})",
       "'min_scale' = 1e-10: applies only to scale_rounding ceil"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.json);
    char small[512];
    EXPECT_EQ(bqjit_compile(svc_, c.json, small, sizeof small, &needed), BQJIT_ERROR_INVALID_SPEC);
    EXPECT_TRUE(contains(lastError(), c.message)) << lastError();
  }
}

TEST_F(CApiTest, CompileWorksWithoutAGpuAndReportsItsMetadata) {
  size_t needed = 0;
  // Ask for the size first: a NULL buffer of size 0 is too small.
  ASSERT_EQ(bqjit_compile(svc_, kSpec, nullptr, 0, &needed), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "too small"));
  EXPECT_TRUE(contains(lastError(), std::to_string(needed) + " needed"));
  ASSERT_GT(needed, 1u);

  // One byte short (no room for the NUL) is still too small and untouched.
  std::vector<char> buf(needed, '#');
  size_t needed2 = 0;
  EXPECT_EQ(bqjit_compile(svc_, kSpec, buf.data(), needed - 1, &needed2),
            BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(needed2, needed);
  EXPECT_EQ(buf[0], '#');

  // Exactly enough: the second request is a cache hit with the same text.
  needed2 = 0;
  ASSERT_EQ(bqjit_compile(svc_, kSpec, buf.data(), buf.size(), &needed2), BQJIT_OK) << lastError();
  EXPECT_EQ(lastError(), "");
  EXPECT_EQ(needed2, needed);
  ASSERT_EQ(std::strlen(buf.data()) + 1, needed);

  auto j = nlohmann::json::parse(buf.data(), nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << buf.data();
  ASSERT_TRUE(j.contains("key") && j["key"].is_string());
  EXPECT_EQ(j["key"].get<std::string>().size(), 32u);
  ASSERT_TRUE(j.contains("lowered_name") && j["lowered_name"].is_string());
  EXPECT_FALSE(j["lowered_name"].get<std::string>().empty());
  ASSERT_TRUE(j.contains("resources") && j["resources"].is_object());
  ASSERT_TRUE(j["resources"].contains("registers"));
  EXPECT_GT(j["resources"]["registers"].get<int>(), 0);
  ASSERT_TRUE(j.contains("spec") && j["spec"].is_object());
  EXPECT_EQ(j["spec"]["hidden"], 2048);
  EXPECT_EQ(j["spec"]["arch"], "sm_90");
  EXPECT_TRUE(j["spec"].contains("launch")); // resolved
  EXPECT_GT(j.value("cubin_bytes", 0), 0);
  EXPECT_GT(j.value("ptx_bytes", 0), 0);

  // A larger buffer works as well and gives the same text.
  std::vector<char> big(needed + 100, '#');
  ASSERT_EQ(bqjit_compile(svc_, kSpec, big.data(), big.size(), nullptr), BQJIT_OK);
  EXPECT_STREQ(big.data(), buf.data());
}

TEST_F(CApiTest, DefaultLaunchRespectsMaxVecWidth) {
  const char* spec = R"({"hidden": 7168, "group_size": 128})";
  char buf[256];
  size_t needed = 0;
  for (int bad : {0, -1, -16}) {
    EXPECT_EQ(bqjit_default_launch(spec, bad, buf, sizeof buf, &needed),
              BQJIT_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(lastError(), "max_vec_width"));
  }
  for (int max : {1, 2, 4, 8, 16}) {
    SCOPED_TRACE(max);
    ASSERT_EQ(bqjit_default_launch(spec, max, buf, sizeof buf, &needed), BQJIT_OK) << lastError();
    EXPECT_EQ(lastError(), "");
    EXPECT_EQ(needed, std::strlen(buf) + 1);
    auto j = nlohmann::json::parse(buf, nullptr, false);
    ASSERT_TRUE(j.is_object()) << buf;
    const int vec = j.value("vec_width", -1);
    const int tpg = j.value("threads_per_group", -1);
    const int gpb = j.value("groups_per_block", -1);
    EXPECT_GE(vec, 1);
    EXPECT_LE(vec, max);
    EXPECT_EQ(128 % vec, 0);
    EXPECT_GE(tpg, 1);
    EXPECT_LE(tpg, 32);
    EXPECT_GE(gpb, 1);
  }
  // A given "launch" is ignored (it is the default that is asked for).
  const char* withLaunch = R"({"hidden": 7168, "group_size": 128,
      "launch": {"threads_per_group": 1, "vec_width": 8, "groups_per_block": 1}})";
  ASSERT_EQ(bqjit_default_launch(withLaunch, 2, buf, sizeof buf, &needed), BQJIT_OK) << lastError();
  auto j = nlohmann::json::parse(buf, nullptr, false);
  EXPECT_LE(j.value("vec_width", 99), 2);
  // Too small a buffer.
  EXPECT_EQ(bqjit_default_launch(spec, 2, buf, 4, &needed), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_GT(needed, 4u);
}

bool driverPresent() {
  void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!handle)
    return false;
  dlclose(handle);
  return true;
}

TEST_F(CApiTest, KernelGetWithoutADriverIsNoDriver) {
  if (driverPresent())
    GTEST_SKIP() << "libcuda.so.1 is present";
  bqjit_kernel kernel = reinterpret_cast<bqjit_kernel>(&svc_);
  EXPECT_EQ(bqjit_kernel_get(svc_, kSpec, 0, &kernel), BQJIT_ERROR_NO_DRIVER);
  EXPECT_EQ(kernel, nullptr);
  EXPECT_TRUE(contains(lastError(), "libcuda.so.1"));
  EXPECT_TRUE(contains(lastError(), "no-driver")) << "the code name comes first";
  // The same for the current device (-1) and for the device's spec.
  EXPECT_EQ(bqjit_kernel_get(svc_, kSpec, -1, &kernel), BQJIT_ERROR_NO_DRIVER);
  EXPECT_TRUE(contains(lastError(), "libcuda.so.1"));
  char buf[256];
  size_t needed = 0;
  EXPECT_EQ(bqjit_spec_for_device(svc_, kSpec, 0, buf, sizeof buf, &needed), BQJIT_ERROR_NO_DRIVER);
  EXPECT_TRUE(contains(lastError(), "libcuda.so.1"));
  // Compiling still works afterwards.
  ASSERT_EQ(bqjit_compile(svc_, kSpec, nullptr, 0, &needed), BQJIT_ERROR_INVALID_ARGUMENT);
  std::vector<char> meta(needed);
  EXPECT_EQ(bqjit_compile(svc_, kSpec, meta.data(), meta.size(), nullptr), BQJIT_OK) << lastError();
}

TEST_F(CApiTest, PreparedSpecIsParsedAndValidatedOnce) {
  bqjit_spec spec = nullptr;
  ASSERT_EQ(bqjit_spec_parse(kSpec, &spec), BQJIT_OK) << lastError();
  ASSERT_NE(spec, nullptr);
  bqjit_spec bad = reinterpret_cast<bqjit_spec>(&svc_);
  EXPECT_EQ(bqjit_spec_parse(R"({"hidden": 2048, "group_size": 96})", &bad),
            BQJIT_ERROR_INVALID_SPEC);
  EXPECT_EQ(bad, nullptr);
  EXPECT_TRUE(contains(lastError(), "'group_size' = 96"));
  EXPECT_EQ(bqjit_spec_parse(nullptr, &bad), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(bqjit_spec_parse(kSpec, nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  bqjit_kernel kernel = reinterpret_cast<bqjit_kernel>(&svc_);
  EXPECT_EQ(bqjit_kernel_get_spec(svc_, nullptr, 0, &kernel), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "spec is NULL"));
  EXPECT_EQ(bqjit_kernel_get_spec(nullptr, spec, 0, &kernel), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(bqjit_kernel_get_spec(svc_, spec, 0, nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  if (!driverPresent()) {
    EXPECT_EQ(bqjit_kernel_get_spec(svc_, spec, 0, &kernel), BQJIT_ERROR_NO_DRIVER);
    EXPECT_EQ(kernel, nullptr);
    EXPECT_TRUE(contains(lastError(), "libcuda.so.1"));
  }
  bqjit_spec_release(spec);
  bqjit_spec_release(nullptr);
  EXPECT_EQ(bqjit_service_reload_tuning(svc_), BQJIT_OK);
  EXPECT_EQ(bqjit_service_invalidate(svc_), BQJIT_OK);
  EXPECT_EQ(bqjit_service_reload_tuning(nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(bqjit_service_invalidate(nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(bqjit_service_finish_variants(svc_), BQJIT_OK);
  EXPECT_EQ(bqjit_service_finish_variants(nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "service is NULL"));
  EXPECT_EQ(bqjit_service_finish_tuning(svc_), BQJIT_OK);
  EXPECT_EQ(bqjit_service_finish_tuning(nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "service is NULL"));
}

// The JSON text of a request is remembered only once it parsed: asking again
// with the same bad text is the same error, never a stale answer.
TEST_F(CApiTest, RepeatedJsonIsTheSameAnswer) {
  const char* bad = R"({"hidden": 2048, "group_size": 96})";
  for (int i = 0; i < 3; ++i) {
    bqjit_kernel kernel = nullptr;
    EXPECT_EQ(bqjit_kernel_get(svc_, bad, 0, &kernel), BQJIT_ERROR_INVALID_SPEC);
    EXPECT_TRUE(contains(lastError(), "'group_size' = 96"));
  }
  if (driverPresent())
    return;
  for (int i = 0; i < 3; ++i) {
    bqjit_kernel kernel = nullptr;
    EXPECT_EQ(bqjit_kernel_get(svc_, kSpec, 0, &kernel), BQJIT_ERROR_NO_DRIVER);
    EXPECT_TRUE(contains(lastError(), "libcuda.so.1"));
  }
}

TEST_F(CApiTest, KernelLaunchRejectsNullKernelAndArgs) {
  bqjit_launch_args args{};
  EXPECT_EQ(bqjit_kernel_launch(nullptr, &args, nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "kernel is NULL"));
  EXPECT_EQ(bqjit_kernel_launch(nullptr, nullptr, nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "kernel is NULL"));
  // NULL args are rejected before the kernel handle is used: a non-NULL
  // handle that is never dereferenced stands in for a real kernel (getting
  // one needs a GPU).
  auto notDereferenced = reinterpret_cast<bqjit_kernel>(static_cast<uintptr_t>(0x10));
  EXPECT_EQ(bqjit_kernel_launch(notDereferenced, nullptr, nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "args is NULL"));
}

TEST_F(CApiTest, KernelLaunchExChecksItsExtraArguments) {
  bqjit_launch_args args{};
  bqjit_launch_extra extra{};
  extra.size = sizeof extra;
  EXPECT_EQ(bqjit_kernel_launch_ex(nullptr, &args, &extra, nullptr), BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "kernel is NULL"));
  auto notDereferenced = reinterpret_cast<bqjit_kernel>(static_cast<uintptr_t>(0x10));
  EXPECT_EQ(bqjit_kernel_launch_ex(notDereferenced, nullptr, &extra, nullptr),
            BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "args is NULL"));
  // A size too small to hold `size`, or a newer caller's non-zero fields.
  extra.size = 3;
  EXPECT_EQ(bqjit_kernel_launch_ex(notDereferenced, &args, &extra, nullptr),
            BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "extra->size 3"));
  struct Newer {
    bqjit_launch_extra known;
    uint64_t unknown;
  } newer{};
  newer.known.size = sizeof newer;
  newer.unknown = 1;
  EXPECT_EQ(bqjit_kernel_launch_ex(notDereferenced, &args, &newer.known, nullptr),
            BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "are not known here"));
  // A flag this library does not know is refused, naming the field.
  extra.size = sizeof extra;
  extra.flags = BQJIT_LAUNCH_PDL | 0x4u;
  EXPECT_EQ(bqjit_kernel_launch_ex(notDereferenced, &args, &extra, nullptr),
            BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "extra->flags 5"));
  EXPECT_TRUE(contains(lastError(), "BQJIT_LAUNCH_PDL"));
  // Asking for and against a programmatic launch at once is refused too.
  extra.flags = BQJIT_LAUNCH_PDL | BQJIT_LAUNCH_NO_PDL;
  EXPECT_EQ(bqjit_kernel_launch_ex(notDereferenced, &args, &extra, nullptr),
            BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(lastError(), "extra->flags 3"));
  EXPECT_TRUE(contains(lastError(), "exclude each other"));
}

TEST_F(CApiTest, LaunchExtraFlagsFollowGlobalScale) {
  // An older caller's struct (size and global_scale only) reads flags as 0:
  // the field is appended, never moved.
  EXPECT_EQ(offsetof(bqjit_launch_extra, global_scale), sizeof(size_t));
  EXPECT_EQ(offsetof(bqjit_launch_extra, flags), sizeof(size_t) + sizeof(uint64_t));
}

TEST_F(CApiTest, LastErrorIsClearedOnSuccess) {
  char buf[256];
  size_t needed = 0;
  EXPECT_EQ(bqjit_default_launch("{", 16, buf, sizeof buf, &needed), BQJIT_ERROR_INVALID_SPEC);
  EXPECT_NE(lastError(), "");
  EXPECT_EQ(bqjit_default_launch(kSpec, 16, buf, sizeof buf, &needed), BQJIT_OK);
  EXPECT_EQ(lastError(), "");

  EXPECT_EQ(bqjit_compile(svc_, "{}", buf, sizeof buf, &needed), BQJIT_ERROR_INVALID_SPEC);
  EXPECT_NE(lastError(), "");
  bqjit_service other = nullptr;
  ASSERT_EQ(bqjit_service_create("", &other), BQJIT_OK) << lastError(); // no disk cache
  EXPECT_EQ(lastError(), "");
  bqjit_service_destroy(other);
}

TEST_F(CApiTest, LastErrorIsPerThread) {
  char buf[256];
  size_t needed = 0;
  ASSERT_EQ(bqjit_default_launch("{", 16, buf, sizeof buf, &needed), BQJIT_ERROR_INVALID_SPEC);
  const std::string mine = lastError();
  ASSERT_TRUE(contains(mine, "not valid JSON"));

  std::string seenByOther = "(unset)";
  std::string otherAfterItsError;
  std::thread t([&] {
    seenByOther = bqjit_last_error();
    bqjit_default_launch(R"({"hidden": 7168, "group_size": 100})", 16, buf, sizeof buf, nullptr);
    otherAfterItsError = bqjit_last_error();
  });
  t.join();
  EXPECT_EQ(seenByOther, "") << "a fresh thread sees no error";
  EXPECT_TRUE(contains(otherAfterItsError, "'group_size'"));
  EXPECT_EQ(lastError(), mine) << "the other thread's error is not seen here";

  // Success on another thread does not clear this thread's error either.
  std::thread t2([&] { bqjit_default_launch(kSpec, 16, buf, sizeof buf, nullptr); });
  t2.join();
  EXPECT_EQ(lastError(), mine);
}

/// What a log callback received: (level, text) pairs, from any thread.
struct Received {
  std::mutex mutex;
  std::vector<std::pair<int, std::string>> lines;

  static void callback(int level, const char* message, void* user) {
    auto* self = static_cast<Received*>(user);
    std::lock_guard<std::mutex> lock(self->mutex);
    self->lines.emplace_back(level, message);
  }
  /// The lines that start with `prefix`, at `level`.
  std::vector<std::string> starting(const std::string& prefix, int level) {
    std::lock_guard<std::mutex> lock(mutex);
    std::vector<std::string> out;
    for (const auto& [l, text] : lines)
      if (l == level && text.rfind(prefix, 0) == 0)
        out.push_back(text);
    return out;
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mutex);
    return lines.size();
  }
};

/// The key of a spec, compiled (or found) by `svc`.
std::string compileKey(bqjit_service svc, const char* spec) {
  std::vector<char> buf(1 << 16);
  if (bqjit_compile(svc, spec, buf.data(), buf.size(), nullptr) != BQJIT_OK) {
    ADD_FAILURE() << lastError();
    return "";
  }
  return nlohmann::json::parse(buf.data())["key"].get<std::string>();
}

class CApiLogTest : public CApiTest {
protected:
  void TearDown() override {
    EXPECT_EQ(bqjit_set_log_callback(nullptr, nullptr, BQJIT_LOG_WARN), BQJIT_OK) << lastError();
    CApiTest::TearDown();
  }
  /// The spec compiled by one service on `dir`, then read by another (its
  /// memory layer is empty): a load from the disk cache. Returns the key.
  std::string compileThenLoadFromDisk(const std::string& dir) {
    std::string keys[2];
    for (std::string& key : keys) {
      bqjit_service svc = nullptr;
      EXPECT_EQ(bqjit_service_create(dir.c_str(), &svc), BQJIT_OK) << lastError();
      key = compileKey(svc, kSpec);
      bqjit_service_destroy(svc);
    }
    EXPECT_EQ(keys[0], keys[1]);
    return keys[0];
  }
  Received received_;
};

TEST_F(CApiLogTest, CallbackReceivesTheInfoLineOfALoadFromDisk) {
  ASSERT_EQ(bqjit_set_log_callback(Received::callback, &received_, BQJIT_LOG_INFO), BQJIT_OK)
      << lastError();
  testing::internal::CaptureStderr();
  const std::string key = compileThenLoadFromDisk(dir_);
  const std::string err = testing::internal::GetCapturedStderr();
  const auto loads = received_.starting("loaded from disk key=" + key + " arch=sm_90 spec=H=2048 ",
                                        BQJIT_LOG_INFO);
  EXPECT_EQ(loads.size(), 1u);
  EXPECT_TRUE(received_.starting("cache ", BQJIT_LOG_DEBUG).empty()) << "debug lines at info";
  EXPECT_FALSE(contains(err, "loaded from disk")) << "the callback replaces stderr";
}

TEST_F(CApiLogTest, CallbackReceivesTheInfoLineOfACompile) {
  ASSERT_EQ(bqjit_set_log_callback(Received::callback, &received_, BQJIT_LOG_INFO), BQJIT_OK);
  const std::string key = compileKey(svc_, kSpec);
  const auto compiles =
      received_.starting("compiled key=" + key + " arch=sm_90 ms=", BQJIT_LOG_INFO);
  ASSERT_EQ(compiles.size(), 1u);
  EXPECT_TRUE(contains(compiles[0], " spec=H=2048 G=128 "));
}

TEST_F(CApiLogTest, LevelFiltersAndReplacesTheEnvironmentLevel) {
  // BQJIT_LOG_LEVEL=quiet for the services made here: the callback's level wins.
  const char* old = ::getenv("BQJIT_LOG_LEVEL");
  const std::string saved = old ? old : "";
  ::setenv("BQJIT_LOG_LEVEL", "quiet", 1);
  ASSERT_EQ(bqjit_set_log_callback(Received::callback, &received_, BQJIT_LOG_WARN), BQJIT_OK);
  compileThenLoadFromDisk(dir_ + "/warn");
  EXPECT_EQ(received_.size(), 0u) << "info lines at warn";

  ASSERT_EQ(bqjit_set_log_callback(Received::callback, &received_, BQJIT_LOG_DEBUG), BQJIT_OK);
  const std::string debugDir = dir_ + "/debug";
  const std::string key = compileThenLoadFromDisk(debugDir);
  if (old)
    ::setenv("BQJIT_LOG_LEVEL", saved.c_str(), 1);
  else
    ::unsetenv("BQJIT_LOG_LEVEL");
  EXPECT_EQ(received_.starting("loaded from disk key=" + key, BQJIT_LOG_INFO).size(), 1u);
  EXPECT_EQ(
      received_
          .starting("cache entry read key=" + key + " path=" + debugDir + "/v1/entries/" + key,
                    BQJIT_LOG_DEBUG)
          .size(),
      1u);
  EXPECT_EQ(received_.starting("cache root=" + debugDir + "/v1 journal=", BQJIT_LOG_DEBUG).size(),
            2u); // one per service
  for (const auto& [level, text] : received_.lines) {
    EXPECT_GE(level, BQJIT_LOG_WARN);
    EXPECT_LE(level, BQJIT_LOG_DEBUG);
    EXPECT_EQ(text.find('\n'), std::string::npos) << text;
  }

  // Removed: nothing more reaches it.
  ASSERT_EQ(bqjit_set_log_callback(nullptr, nullptr, BQJIT_LOG_WARN), BQJIT_OK);
  const size_t before = received_.size();
  compileThenLoadFromDisk(dir_ + "/after");
  EXPECT_EQ(received_.size(), before);
}

TEST_F(CApiLogTest, BadLevelAndReplacementFromInsideTheCallbackAreRefused) {
  for (int bad : {-1, 4, 100}) {
    EXPECT_EQ(bqjit_set_log_callback(Received::callback, &received_, bad),
              BQJIT_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(
        contains(lastError(), "level = " + std::to_string(bad) + ": must be BQJIT_LOG_QUIET (0)"));
  }
  struct Inside {
    bqjit_status status = BQJIT_OK;
    std::string error;
    int calls = 0;
  } inside;
  auto reenter = [](int, const char*, void* user) {
    auto* in = static_cast<Inside*>(user);
    if (in->calls++ == 0) {
      in->status = bqjit_set_log_callback(nullptr, nullptr, BQJIT_LOG_WARN);
      in->error = bqjit_last_error();
    }
  };
  ASSERT_EQ(bqjit_set_log_callback(reenter, &inside, BQJIT_LOG_INFO), BQJIT_OK);
  compileThenLoadFromDisk(dir_);
  EXPECT_GE(inside.calls, 1);
  EXPECT_EQ(inside.status, BQJIT_ERROR_INVALID_ARGUMENT);
  EXPECT_TRUE(contains(inside.error, "from inside a log sink"));
}

} // namespace
