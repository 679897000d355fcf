#include "jit/cache_key.hpp"

#include <cstdio>

#include <nlohmann/json.hpp>
#include <xxhash.h>

namespace bqjit {

std::string KeyInputs::canonical() const {
  // The template goes in by hash so the canonical text stays readable.
  nlohmann::json j = {{"format", formatVersion},
                      {"spec", nlohmann::json::parse(canonicalSpec)},
                      {"template_xxh3", checksum64(templateSource.data(), templateSource.size())},
                      {"template_bytes", templateSource.size()},
                      {"options", options},
                      {"nvrtc", nvrtcIdentity},
                      {"arch", arch}};
  return j.dump();
}

std::string computeCacheKey(const KeyInputs& inputs) {
  const std::string text = inputs.canonical();
  XXH128_hash_t h = XXH3_128bits(text.data(), text.size());
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return buf;
}

std::string checksum64(const void* data, size_t size) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(data, size)));
  return buf;
}

} // namespace bqjit
