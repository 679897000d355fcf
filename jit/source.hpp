// Specialization: the few lines of CUDA source around the template that make
// one kernel out of a resolved spec, and the NVRTC name expression for it.
#pragma once

#include <string>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

struct GeneratedSource {
  std::string fileName;       ///< program name shown in NVRTC messages
  std::string text;           ///< the generated translation unit
  std::string nameExpression; ///< e.g. "bqjit_kernel::silu_mul_quant<7168, 128, ...>"
};

/// The source for `spec`, whose launch shape must be resolved.
GeneratedSource generateSource(const KernelSpec& spec);

} // namespace bqjit
