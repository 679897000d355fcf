// Reads ptxas's verbose report (requested with -Xptxas=-v) for one kernel,
// found by its lowered name.
#pragma once

#include <string>

#include <llvm/Support/Error.h>

#include "bqjit/compiled_kernel.hpp"

namespace bqjit {

llvm::Expected<ResourceReport> parsePtxasReport(const std::string& log,
                                                const std::string& loweredName);

} // namespace bqjit
