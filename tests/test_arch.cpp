// Arch: the one parser of architecture names, and device matching.
#include "bqjit/arch.hpp"

#include <string>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

TEST(Arch, ParsesNumberAndSuffix) {
  struct Case {
    const char* text;
    int number;
    char suffix;
  };
  for (const Case& c :
       {Case{"sm_80", 80, 0}, Case{"sm_89", 89, 0}, Case{"sm_90a", 90, 'a'}, Case{"sm_100", 100, 0},
        Case{"sm_100f", 100, 'f'}, Case{"sm_120a", 120, 'a'}}) {
    auto a = Arch::parse(c.text);
    ASSERT_TRUE(bool(a)) << c.text << ": " << consumeToString(a.takeError());
    EXPECT_EQ(a->number, c.number) << c.text;
    EXPECT_EQ(a->suffix, c.suffix) << c.text;
    EXPECT_EQ(a->str(), c.text);
  }
  auto a = Arch::parse("sm_120a");
  ASSERT_TRUE(bool(a));
  EXPECT_EQ(a->major(), 12);
  EXPECT_EQ(a->minor(), 0);
}

TEST(Arch, RejectsWithFieldValueAndRule) {
  for (const char* bad : {"sm90", "compute_90", "sm_", "sm_a", "sm_9x", "sm_90b", "sm_1234567",
                          "SM_90", " sm_90", "sm_-90"}) {
    auto a = Arch::parse(bad, "arch");
    ASSERT_FALSE(bool(a)) << bad;
    std::string message;
    EXPECT_EQ(consumeError(a.takeError(), &message), ErrorCode::InvalidSpec);
    EXPECT_TRUE(contains(message, "'arch' = '" + std::string(bad) + "'")) << message;
    EXPECT_TRUE(contains(message, "must look like sm_90")) << message;
  }
  auto old = Arch::parse("sm_75", "archs[0]");
  ASSERT_FALSE(bool(old));
  const std::string message = consumeToString(old.takeError());
  EXPECT_TRUE(contains(message, "'archs[0]' = 'sm_75'")) << message;
  EXPECT_TRUE(contains(message, "must be sm_80 or newer")) << message;
}

TEST(Arch, RunsOnTheDeviceOfItsComputeCapability) {
  const Arch h100 = Arch::fromComputeCapability(9, 0);
  EXPECT_EQ(h100.str(), "sm_90");
  EXPECT_TRUE(Arch::parse("sm_90")->runsOn(h100));
  EXPECT_TRUE(Arch::parse("sm_90a")->runsOn(h100));
  EXPECT_FALSE(Arch::parse("sm_80")->runsOn(h100));
  EXPECT_FALSE(Arch::parse("sm_100")->runsOn(h100));
  EXPECT_EQ(Arch::fromComputeCapability(12, 0).str(), "sm_120");
}

} // namespace
} // namespace bqjit
