// Helpers shared by the reference's source files; not part of its API.
#pragma once

#include <cstdint>

#include "reference/reference.hpp"

namespace bqjit::ref::detail {

/// Throws std::invalid_argument when the problem is inconsistent.
void checkProblem(const Problem& problem);

/// Rows of `expert` that the kernel computes: maskedM[expert] or T.
inline int64_t liveRows(const Problem& problem, int64_t expert) {
  return problem.spec.masked ? problem.maskedM[expert] : problem.tokens;
}

} // namespace bqjit::ref::detail
