// The C API's exception barrier (runtime/c_api_guard.hpp): whatever a body
// throws ends at the entry point as BQJIT_ERROR_INTERNAL with a message
// naming the entry point.
#include "runtime/c_api_guard.hpp"

#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace bqjit {
namespace {

struct Recorded {
  std::vector<std::string> messages;
  bqjit_status operator()(ErrorCode code, const std::string& message) {
    messages.push_back(message);
    return static_cast<bqjit_status>(code);
  }
};

TEST(CApiGuard, ABodyThatReturnsIsPassedThrough) {
  Recorded rec;
  EXPECT_EQ(guardedCall(
                "bqjit_compile", [] { return BQJIT_OK; }, rec),
            BQJIT_OK);
  EXPECT_EQ(guardedCall(
                "bqjit_compile", [] { return BQJIT_ERROR_CACHE; }, rec),
            BQJIT_ERROR_CACHE);
  EXPECT_TRUE(rec.messages.empty());
}

TEST(CApiGuard, EveryExceptionBecomesAnInternalErrorNamingTheEntryPoint) {
  Recorded rec;
  auto run = [&](auto body) { return guardedCall("bqjit_kernel_get", body, rec); };
  EXPECT_EQ(run([]() -> bqjit_status { throw std::runtime_error("journal line"); }),
            BQJIT_ERROR_INTERNAL);
  EXPECT_EQ(run([]() -> bqjit_status { throw std::bad_alloc(); }), BQJIT_ERROR_INTERNAL);
  EXPECT_EQ(run([]() -> bqjit_status { throw 42; }), BQJIT_ERROR_INTERNAL);
  ASSERT_EQ(rec.messages.size(), 3u);
  EXPECT_EQ(rec.messages[0], "bqjit_kernel_get: unexpected failure: journal line");
  EXPECT_EQ(rec.messages[1], "bqjit_kernel_get: unexpected failure: out of host memory");
  EXPECT_EQ(rec.messages[2],
            "bqjit_kernel_get: unexpected failure: an exception that is not a std::exception");
}

// Recording the message may itself fail (out of memory): the status still
// comes back, nothing escapes.
TEST(CApiGuard, AFailureToRecordTheMessageStillReturnsTheStatus) {
  auto throwingFail = [](ErrorCode, const std::string&) -> bqjit_status { throw std::bad_alloc(); };
  EXPECT_EQ(
      guardedCall(
          "bqjit_service_create", []() -> bqjit_status { throw std::bad_alloc(); }, throwingFail),
      BQJIT_ERROR_INTERNAL);
}

} // namespace
} // namespace bqjit
