// A bundle: every kernel of a manifest in one file, for baking into
// container images and moving between air-gapped machines.
//
//   "BQJITBDL"                 8 bytes, magic
//   version (1), tag kind      1 byte each (0: unsigned, 1: HMAC-SHA256)
//   table of contents          u32 length, then JSON: {"format", "cache_format",
//                              "nvrtc", "created_unix_ms", "entries": [{"key",
//                              "label", "arch", "offset", "bytes"}, ...]}
//   records                    one entry blob each (entry_blob.hpp: each
//                              signed over its own key and contents), in
//                              the order of the table, back to back
//   tag                        32 bytes (kind 1): HMAC-SHA256 over every
//                              byte before it, so that no record can be
//                              dropped, reordered or added
//
// readBundle() validates everything (framing, the bundle's tag, the table,
// every record's tag, key, metadata and checksums, one NVRTC version)
// before returning anything; an error names what is wrong and where.
#pragma once

#include <string>
#include <vector>

#include <llvm/ADT/StringRef.h>
#include <llvm/Support/Error.h>

#include "cache/entry_blob.hpp"

namespace bqjit {

inline constexpr const char kBundleMagic[] = "BQJITBDL";
inline constexpr uint8_t kBundleVersion = 1;
/// Largest bundle a reader accepts.
inline constexpr uint64_t kBundleMaxBytes = 4ull << 30;

struct BundleItem {
  CompiledKernel kernel;
  std::string keyInputs;
};

struct BundleContents {
  int cacheFormat = 0;
  std::string nvrtc;
  int64_t createdUnixMs = 0;
  bool signedBundle = false;
  std::vector<BundleItem> items;
};

/// The bytes of a bundle of `items` (all compiled by one NVRTC).
std::string writeBundle(const std::vector<BundleItem>& items, const Authenticator& auth);

/// Reads and validates a whole bundle. Errors (CacheError) name the part:
/// "truncated", "tag does not verify", "table of contents: ...", "entry 3
/// (key ...): ...".
llvm::Expected<BundleContents> readBundle(llvm::StringRef bytes, const Authenticator& auth);

} // namespace bqjit
