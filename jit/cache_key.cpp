#include "jit/cache_key.hpp"

#include <cstdio>

#include <nlohmann/json.hpp>
// Inline: xxHash is a build-time header, never a library a host must link.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/json_input.hpp"

namespace bqjit {

TextDigest TextDigest::of(llvm::StringRef text) {
  return TextDigest{checksum64(text.data(), text.size()), text.size()};
}

std::string KeyInputs::canonical() const {
  // Sources go in by hash so the canonical text stays readable.
  const TextDigest generated = TextDigest::of(generatedSource);
  nlohmann::json j = {{"format", formatVersion},
                      {"spec", nlohmann::json::parse(canonicalSpec)},
                      {"template_xxh3", templateSource.xxh3},
                      {"template_bytes", templateSource.bytes},
                      {"source_xxh3", generated.xxh3},
                      {"source_bytes", generated.bytes},
                      {"options", options},
                      {"nvrtc", nvrtcIdentity},
                      {"arch", arch}};
  return jsonText(j);
}

std::string hash128(llvm::StringRef text) {
  XXH128_hash_t h = XXH3_128bits(text.data(), text.size());
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return buf;
}

std::string computeCacheKey(const KeyInputs& inputs) {
  return hash128(inputs.canonical());
}

std::string checksum64(const void* data, size_t size) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(data, size)));
  return buf;
}

} // namespace bqjit
