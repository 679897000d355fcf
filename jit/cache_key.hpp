// The cache key: a hash over everything that changes the cubin.
#pragma once

#include <string>
#include <vector>

#include <llvm/ADT/StringRef.h>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

/// Bump when the entry layout or the meaning of any key input changes.
/// 2: the generated source (named constants, occupancy) joined the key.
inline constexpr int kCacheFormatVersion = 2;

/// A text by hash and length, as the key holds the template.
struct TextDigest {
  std::string xxh3; ///< checksum64 of the text
  size_t bytes = 0;

  static TextDigest of(llvm::StringRef text);
};

struct KeyInputs {
  std::string canonicalSpec;        ///< KernelSpec::canonical() of the resolved spec
  TextDigest templateSource;        ///< the template: every header of it, names and texts
  std::string generatedSource;      ///< the translation unit that instantiates it
  std::vector<std::string> options; ///< NVRTC options, in order
  std::string nvrtcIdentity;        ///< NvrtcIdentity::toString()
  std::string arch;                 ///< exact target, suffix included (sm_90a)
  int formatVersion = kCacheFormatVersion;

  /// The canonical text that is hashed (also stored in the entry's metadata).
  std::string canonical() const;
};

/// 32 lowercase hex digits (XXH3-128 of KeyInputs::canonical()).
std::string computeCacheKey(const KeyInputs& inputs);

/// 32 lowercase hex digits: XXH3-128 of any text.
std::string hash128(llvm::StringRef text);

/// XXH3-64 of bytes as 16 hex digits; the checksum of cache files.
std::string checksum64(const void* data, size_t size);

} // namespace bqjit
