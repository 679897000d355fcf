// Bounded JSON input (jit/json_input): the size and depth limits, repeated
// keys, the messages (what, where, which rule), and the helpers that show a
// value or a text in a message, cut and never recursing past the limit.
#include "core/json_input.hpp"

#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

/// The message of a failed parse with its code; fails the test when it parsed.
std::string failure(llvm::StringRef text, const JsonLimits& limits = kSpecJsonLimits,
                    ErrorCode expected = ErrorCode::InvalidSpec) {
  auto j = parseJsonInput(text, limits, "spec JSON", expected);
  if (j) {
    ADD_FAILURE() << "accepted: " << text.substr(0, 200).str();
    return "";
  }
  std::string message;
  EXPECT_EQ(consumeError(j.takeError(), &message), expected);
  EXPECT_EQ(message.rfind("spec JSON: ", 0), 0u) << message;
  EXPECT_LT(message.size(), 1000u) << message;
  return message;
}

std::string nested(int depth, const std::string& inner = "") {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}

/// A value nested `depth` arrays deep, built without recursion.
nlohmann::json deepValue(int depth) {
  nlohmann::json root = nlohmann::json::array();
  nlohmann::json* at = &root;
  for (int i = 1; i < depth; ++i) {
    at->push_back(nlohmann::json::array());
    at = &at->back();
  }
  return root;
}

TEST(JsonInput, ParsesLikeNlohmann) {
  for (const char* text :
       {R"({"hidden": 7168, "launch": {"vec_width": 8}, "x": [1, -2, 3.5, true, null, "s"]})", "[]",
        "{}", "  7 ", R"("\u00e9\ud83d\ude00")", "[[{\"a\": [{}]}]]",
        R"({"a": {"k": 1}, "b": {"k": 2}})", "18446744073709551615", "-9223372036854775808"}) {
    SCOPED_TRACE(text);
    auto j = parseJsonInput(text, kSpecJsonLimits, "spec JSON");
    ASSERT_TRUE(static_cast<bool>(j)) << consumeToString(j.takeError());
    EXPECT_EQ(*j, nlohmann::json::parse(text));
  }
}

TEST(JsonInput, SizeIsCheckedFirstAndNamed) {
  const JsonLimits limits{100, kJsonMaxDepth};
  // Exactly at the limit: accepted.
  const std::string atLimit = "[1" + std::string(96, ' ') + "]";
  ASSERT_EQ(atLimit.size(), 99u);
  EXPECT_TRUE(static_cast<bool>(parseJsonInput(atLimit + " ", limits, "spec JSON")));
  // One byte over, even deep and invalid: the size is what is reported.
  const std::string over = nested(50) + "!";
  ASSERT_EQ(over.size(), 101u);
  EXPECT_TRUE(contains(failure(over, limits), "101 bytes is over the limit of 100 bytes"));
  EXPECT_TRUE(contains(failure(std::string(70000, ' ')),
                       "70000 bytes is over the limit of 65536 bytes (64 KiB)"));
}

TEST(JsonInput, LimitsOfEachInputAreNamedConstants) {
  EXPECT_EQ(kJsonMaxDepth, 64);
  EXPECT_EQ(kSpecJsonLimits.maxBytes, 64u * 1024);
  EXPECT_EQ(kManifestJsonLimits.maxBytes, 16u * 1024 * 1024);
  for (const JsonLimits& l :
       {kSpecJsonLimits, kManifestJsonLimits, kMetadataJsonLimits, kTuningRecordJsonLimits})
    EXPECT_EQ(l.maxDepth, kJsonMaxDepth);
  EXPECT_GE(kMetadataJsonLimits.maxBytes, 1024u * 1024);
  EXPECT_GE(kTuningRecordJsonLimits.maxBytes, 4096u);
}

TEST(JsonInput, DepthAtTheLimitIsAcceptedOneMoreIsRefusedWithThePlace) {
  auto ok = parseJsonInput(nested(kJsonMaxDepth), kSpecJsonLimits, "spec JSON");
  ASSERT_TRUE(static_cast<bool>(ok)) << consumeToString(ok.takeError());
  EXPECT_EQ(jsonDepth(*ok), kJsonMaxDepth);

  const std::string message = failure(nested(kJsonMaxDepth + 1));
  EXPECT_TRUE(contains(message, "nested more than 64 levels deep at byte 65"));
  EXPECT_TRUE(contains(message, "the limit is 64 levels"));

  // The place: the path to the container that goes too deep.
  const std::string inSpec =
      failure(R"({"hidden": 1, "launch": {"vec_width": )" + nested(kJsonMaxDepth - 1) + "}}");
  EXPECT_TRUE(contains(inSpec, "(in launch.vec_width[0][0]"));
  // Brackets inside strings do not count.
  auto strings =
      parseJsonInput("[\"" + std::string(200, '[') + "\\\"[\"]", kSpecJsonLimits, "spec JSON");
  EXPECT_TRUE(static_cast<bool>(strings)) << consumeToString(strings.takeError());
}

TEST(JsonInput, DepthOfAHundredThousandIsAnErrorNotACrash) {
  // Under a size limit that lets it through to the parser: 200 KB of brackets.
  const JsonLimits big{1 << 20, kJsonMaxDepth};
  for (const std::string& text : {nested(100000), "{\"hidden\":" + nested(100000) + "}",
                                  std::string(100000, '[') /* unterminated too */}) {
    const std::string message = failure(text, big);
    EXPECT_TRUE(contains(message, "nested more than 64 levels deep")) << message;
  }
}

TEST(JsonInput, RepeatedKeyIsRefusedWithTheKeyAndThePlace) {
  const std::string top = failure(R"({"hidden": 7168, "hidden": 2048})");
  EXPECT_TRUE(contains(top, "the key \"hidden\" appears twice in the top-level object"));
  EXPECT_TRUE(contains(top, "a key may appear only once in an object"));

  const std::string inner =
      failure(R"({"specs": [{"hidden": 1}, {"hidden": 1, "launch": {"vec": 1, "vec": 1}}]})");
  EXPECT_TRUE(contains(inner, "the key \"vec\" appears twice in specs[1].launch"));

  const std::string odd = failure(R"({"a b": {"\n": 1, "\n": 2}})");
  EXPECT_TRUE(contains(odd, "the key \"\\n\" appears twice in [\"a b\"]")) << odd;

  // The same key in different objects is fine.
  EXPECT_TRUE(static_cast<bool>(
      parseJsonInput(R"([{"k": 1}, {"k": 2, "o": {"k": 3}}])", kSpecJsonLimits, "spec JSON")));
}

TEST(JsonInput, SyntaxErrorsSayWhereInPlainWords) {
  const std::string trailing = failure("{\"hidden\": 7168,}");
  EXPECT_TRUE(contains(trailing, "spec JSON: not valid JSON at line 1, column 17 (byte 17): "));
  EXPECT_FALSE(contains(trailing, "json.exception"));

  const std::string second = failure("{\n  \"hidden\": oops\n}");
  EXPECT_TRUE(contains(second, "not valid JSON at line 2, column"));

  EXPECT_TRUE(contains(failure(""), "spec JSON: not valid JSON: the text is empty"));
  EXPECT_TRUE(contains(failure(" \n\t"), "not valid JSON: the text is only white space"));
  EXPECT_TRUE(contains(failure("{\"hidden\": 1e999}"),
                       "not valid JSON at byte 12: the number 1e999 is too large"));
  EXPECT_TRUE(contains(failure("{} {}"), "not valid JSON at line 1, column 4"));

  // The parser's last token is cut, invalid UTF-8 replaced.
  const std::string longToken = failure("[\"" + std::string(5000, 'x') + "\x01\"]");
  EXPECT_TRUE(contains(longToken, "bytes)"));
  const std::string utf8 = failure("[\"\xff\"]");
  EXPECT_TRUE(contains(utf8, "\xEF\xBF\xBD"));
}

TEST(JsonInput, CodeAndNameAreTheCallers) {
  auto j =
      parseJsonInput("[", kManifestJsonLimits, "manifest 'm.json'", ErrorCode::InvalidArgument);
  ASSERT_FALSE(static_cast<bool>(j));
  std::string message;
  EXPECT_EQ(consumeError(j.takeError(), &message), ErrorCode::InvalidArgument);
  EXPECT_EQ(message.rfind("manifest 'm.json': not valid JSON", 0), 0u) << message;
}

TEST(JsonInput, ShownTextIsCutCleanAndOneLine) {
  EXPECT_EQ(shownText("bf16"), "bf16");
  const std::string cut = shownText(std::string(1000, 'x'));
  EXPECT_EQ(cut, std::string(kShownChars, 'x') + "... (1000 bytes)");
  EXPECT_EQ(shownText("a\nb\tc\x01"), "a\\nb\\tc\\x01");
  EXPECT_EQ(shownText("\xff"
                      "ok\xc3"),
            "\xEF\xBF\xBD"
            "ok\xEF\xBF\xBD");
  // A character is never split: 'é' is 2 bytes, the cut falls inside one.
  std::string accents;
  for (int i = 0; i < 300; ++i)
    accents += "\xc3\xa9";
  const std::string shown = shownText("x" + accents, 10);
  EXPECT_EQ(shown, "x\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9... (601 bytes)");
}

TEST(JsonInput, ShownJsonIsCutAndSafeOnDeepValues) {
  EXPECT_EQ(shownJson(nlohmann::json(7168)), "7168");
  EXPECT_EQ(shownJson(nlohmann::json("bf16")), "\"bf16\"");
  nlohmann::json wide = nlohmann::json::array();
  for (int i = 0; i < 10000; ++i)
    wide.push_back(i);
  const std::string w = shownJson(wide);
  EXPECT_LT(w.size(), kShownChars + 30);
  EXPECT_EQ(w.rfind("[0,1,2,", 0), 0u);
  EXPECT_TRUE(contains(w, "... (" + std::to_string(wide.dump().size()) + " bytes)"));

  // Built in memory by a C++ caller: dump() would recurse 100000 levels.
  const nlohmann::json deep = deepValue(100000);
  EXPECT_EQ(shownJson(deep), "(an array nested more than 64 levels deep, not shown)");
  nlohmann::json object = {{"hidden", deepValue(100)}};
  EXPECT_EQ(shownJson(object), "(an object nested more than 64 levels deep, not shown)");
  EXPECT_EQ(shownJson(deepValue(kJsonMaxDepth)), nested(kJsonMaxDepth));

  // Invalid UTF-8 in a string built in memory: replaced, not thrown.
  EXPECT_EQ(shownJson(nlohmann::json("a\xff")), "\"a\xEF\xBF\xBD\"");
}

// A path is any bytes on Linux: written JSON replaces invalid UTF-8 (where
// dump() throws, and an uncaught exception takes the process down) and stays
// JSON that reads back; valid text, indentation and key order are dump()'s.
TEST(JsonInput, JsonTextWritesInvalidUtf8AsReplacementCharacters) {
  const nlohmann::json value = {{"dir", "/tmp/caf\xe9/v1"}, {"n", 3}, {"name", "caf\xc3\xa9"}};
  EXPECT_THROW(value.dump(), nlohmann::json::type_error);
  std::string text;
  ASSERT_NO_THROW(text = jsonText(value));
  EXPECT_EQ(text, "{\"dir\":\"/tmp/caf\xEF\xBF\xBD/v1\",\"n\":3,\"name\":\"caf\xc3\xa9\"}");
  EXPECT_EQ(nlohmann::json::parse(text)["dir"], "/tmp/caf\xEF\xBF\xBD/v1");
  const nlohmann::json valid = {{"a", {1, 2}}, {"b", "x"}};
  EXPECT_EQ(jsonText(valid), valid.dump());
  EXPECT_EQ(jsonText(valid, 2), valid.dump(2));
}

TEST(JsonInput, DepthIsCountedWithoutRecursion) {
  EXPECT_EQ(jsonDepth(nlohmann::json(1)), 0);
  EXPECT_EQ(jsonDepth(nlohmann::json::array()), 1);
  EXPECT_EQ(jsonDepth(nlohmann::json::parse(R"({"a": [1, {"b": []}], "c": {}})")), 4);
  EXPECT_EQ(jsonDepth(deepValue(100000)), kJsonMaxDepth + 1);
  EXPECT_EQ(jsonDepth(deepValue(100000), 1000), 1001);
}

} // namespace
} // namespace bqjit
