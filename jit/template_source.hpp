// The kernel template's text, embedded in the library at build time: the
// headers of templates/, one concept each.
#pragma once

#include <string>

#include <llvm/ADT/ArrayRef.h>
#include <llvm/ADT/StringRef.h>

#include "jit/cache_key.hpp"

namespace bqjit {

/// One header of the template, under the include name NVRTC sees it by.
struct TemplateHeader {
  std::string name; ///< "bqjit/common.cuh"
  llvm::StringRef text;
};

/// The include name of the header that defines the kernel (the generated
/// source includes it; it includes the others).
inline constexpr const char* kTemplateHeaderName = "bqjit/silu_mul_quant.cuh";

/// Every header of the template as built, the kernel's last.
llvm::ArrayRef<TemplateHeader> templateHeaders();

/// The hash and length of all the headers together (names and texts),
/// computed once per process.
const TextDigest& templateDigest();

} // namespace bqjit
