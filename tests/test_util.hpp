// Small helpers shared by the test files.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <gtest/gtest.h>

namespace bqjit::test {

/// Succeeds when `text` contains `needle`; the failure shows both.
inline testing::AssertionResult contains(const std::string& text, const std::string& needle) {
  if (text.find(needle) != std::string::npos)
    return testing::AssertionSuccess();
  return testing::AssertionFailure() << "\"" << text << "\" lacks \"" << needle << "\"";
}

/// The bits of an fp32, and the fp32 of some bits.
inline uint32_t bitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float fromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Runs this test binary again, with the shell assignments `environment`
/// (e.g. "CHILD=1 BQJIT_CACHE_DIR=/tmp/x") and `--gtest_filter=filter`, its
/// output discarded: what std::system returns. Fails the calling test and
/// returns -1 where the binary's own path cannot be read.
inline int runThisBinary(const std::string& environment, const std::string& filter) {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    ADD_FAILURE() << "readlink(/proc/self/exe) failed";
    return -1;
  }
  self[n] = 0;
  return std::system(
      (environment + " '" + self + "' --gtest_filter=" + filter + " >/dev/null 2>&1").c_str());
}

} // namespace bqjit::test
