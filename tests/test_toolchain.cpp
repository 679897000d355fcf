// The NVRTC identity that every cache key includes.
#include <string>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "jit/toolchain.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

TEST(Toolchain, IdentityIsStableAndComplete) {
  auto a = queryNvrtcIdentity();
  auto b = queryNvrtcIdentity();
  ASSERT_TRUE(bool(a) && bool(b));
  EXPECT_EQ(a->toString(), b->toString());
  EXPECT_GE(a->major, 12);
  EXPECT_TRUE(contains(a->build, "V" + std::to_string(a->major) + "."));
  EXPECT_TRUE(contains(a->build, "CL-"));
}

} // namespace
} // namespace bqjit
