// One cache entry as one byte string: the value of a remote (Redis) key and
// a record of a bundle. Made once for both, with its authentication:
//
//   "BQJITENT"                 8 bytes, magic
//   version (1), tag kind      1 byte each; tag kind 0: none, 1: HMAC-SHA256
//   key, meta, cubin, ptx      lengths: u32, u32, u64, u64 (little-endian)
//   the key, meta.json (the disk entry's metadata, with its checksums and
//   key inputs), the cubin, the PTX
//   tag                        32 bytes (kind 1): HMAC-SHA256 with the fleet
//                              secret over every byte before it
//
// Decoding checks, in order: the framing (magic, version, lengths that add
// up to the size exactly), the tag (with a secret: present and verifying;
// without one, BQJIT_INSECURE_UNSIGNED, it is not looked at), the key asked
// for, then the metadata (self-checksum, fields, key) and the payload
// checksums, as a disk entry's. Nothing is trusted before the tag verified.
#pragma once

#include <string>

#include <llvm/ADT/StringRef.h>
#include <llvm/Support/Error.h>

#include "bqjit/compiled_kernel.hpp"
#include "cache/fleet_secret.hpp"

namespace bqjit {

inline constexpr const char kEntryBlobMagic[] = "BQJITENT";
inline constexpr uint8_t kEntryBlobVersion = 1;
/// Largest blob a reader accepts (a cubin is tens of KiB).
inline constexpr uint64_t kEntryBlobMaxBytes = 64ull << 20;

/// Signs with `auth.secret`, or writes no tag when `auth.insecure`.
std::string encodeEntryBlob(const CompiledKernel& kernel, const std::string& keyInputs,
                            const Authenticator& auth);

struct DecodedEntry {
  CompiledKernel kernel;
  std::string keyInputs;
  bool signedEntry = false; ///< it carried a tag (verified when a secret is configured)
};

/// Decodes and verifies a blob; `expectedKey` empty accepts any key. Errors
/// (CacheError) say what is wrong: "truncated", "not signed", "HMAC tag does
/// not verify", "holds key X, not Y", a metadata field, a checksum.
llvm::Expected<DecodedEntry> decodeEntryBlob(llvm::StringRef blob, const std::string& expectedKey,
                                             const Authenticator& auth);

} // namespace bqjit
