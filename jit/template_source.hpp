// The kernel template's text, embedded in the library at build time.
#pragma once

#include <llvm/ADT/StringRef.h>

namespace bqjit {

/// The include name under which NVRTC sees the template.
inline constexpr const char* kTemplateHeaderName = "bqjit/silu_mul_quant.cuh";

/// The template's full text (templates/silu_mul_quant.cuh as built).
llvm::StringRef templateSource();

} // namespace bqjit
