// The kernel template's text, embedded in the library at build time.
#pragma once

#include <llvm/ADT/StringRef.h>

#include "jit/cache_key.hpp"

namespace bqjit {

/// The include name under which NVRTC sees the template.
inline constexpr const char* kTemplateHeaderName = "bqjit/silu_mul_quant.cuh";

/// The template's full text (templates/silu_mul_quant.cuh as built).
llvm::StringRef templateSource();

/// The template's hash and length, computed once per process.
const TextDigest& templateDigest();

} // namespace bqjit
