// Specialization: the translation unit that makes one kernel out of a
// resolved spec (the spec's choices as named constants of a struct that the
// template is instantiated with), and the NVRTC name expression for it.
#pragma once

#include <cstdint>
#include <string>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

struct GeneratedSource {
  std::string fileName;       ///< program name shown in NVRTC messages
  std::string text;           ///< the generated translation unit
  std::string nameExpression; ///< "bqjit_kernel::silu_mul_quant<bqjit_kernel::H7168_G128_...>"
};

/// swiglu's limit L as a pair of the 16-bit input format's values (L, L),
/// where L is exactly one (the kernel then clamps packed pairs of inputs);
/// 0 where it is not, for fp32 input and without a limit.
uint32_t limitPair16(const KernelSpec& spec);

/// The source for `spec`, whose launch shape and occupancy must be resolved.
GeneratedSource generateSource(const KernelSpec& spec);

} // namespace bqjit
