// Small helpers shared by the test files.
#pragma once

#include <string>

#include <gtest/gtest.h>

namespace bqjit::test {

/// Succeeds when `text` contains `needle`; the failure shows both.
inline testing::AssertionResult contains(const std::string& text, const std::string& needle) {
  if (text.find(needle) != std::string::npos)
    return testing::AssertionSuccess();
  return testing::AssertionFailure() << "\"" << text << "\" lacks \"" << needle << "\"";
}

} // namespace bqjit::test
