// The cache key: a hash over everything that changes the cubin.
#pragma once

#include <string>
#include <vector>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

/// Bump when the entry layout or the meaning of any key input changes.
inline constexpr int kCacheFormatVersion = 1;

struct KeyInputs {
  std::string canonicalSpec;        ///< KernelSpec::canonical() of the resolved spec
  std::string templateSource;       ///< the template and every header it includes
  std::vector<std::string> options; ///< NVRTC options, in order
  std::string nvrtcIdentity;        ///< NvrtcIdentity::toString()
  std::string arch;                 ///< exact target, suffix included (sm_90a)
  int formatVersion = kCacheFormatVersion;

  /// The canonical text that is hashed (also stored in the entry's metadata).
  std::string canonical() const;
};

/// 32 lowercase hex digits (XXH3-128 of KeyInputs::canonical()).
std::string computeCacheKey(const KeyInputs& inputs);

/// XXH3-64 of bytes as 16 hex digits; the checksum of cache files.
std::string checksum64(const void* data, size_t size);

} // namespace bqjit
