#include "cache/bundle.hpp"

#include <cstring>

#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"
#include "cache/journal.hpp"
#include "core/json_input.hpp"
#include "jit/cache_key.hpp"

namespace bqjit {

namespace {

constexpr size_t kMagicBytes = 8;
constexpr size_t kHeaderBytes = kMagicBytes + 2 + 4;
constexpr JsonLimits kTocLimits{64 * 1024 * 1024, 16};

llvm::Error bundleError(const std::string& what) {
  return makeError(ErrorCode::CacheError, "bundle " + what);
}

} // namespace

std::string writeBundle(const std::vector<BundleItem>& items, const Authenticator& auth) {
  std::vector<std::string> blobs;
  nlohmann::json entries = nlohmann::json::array();
  uint64_t offset = 0;
  for (const BundleItem& item : items) {
    blobs.push_back(encodeEntryBlob(item.kernel, item.keyInputs, auth));
    entries.push_back({{"key", item.kernel.key},
                       {"label", item.kernel.spec.label()},
                       {"arch", item.kernel.spec.arch},
                       {"offset", offset},
                       {"bytes", blobs.back().size()}});
    offset += blobs.back().size();
  }
  const nlohmann::json toc = {{"format", kBundleVersion},
                              {"cache_format", kCacheFormatVersion},
                              {"nvrtc", items.empty() ? "" : items.front().kernel.nvrtcVersion},
                              {"created_unix_ms", unixTimeMs()},
                              {"entries", std::move(entries)}};
  const std::string tocText = jsonText(toc);
  std::string out(kBundleMagic, kMagicBytes);
  out.push_back(static_cast<char>(kBundleVersion));
  out.push_back(static_cast<char>(auth.secret ? 1 : 0));
  for (int i = 0; i < 4; ++i)
    out.push_back(static_cast<char>((tocText.size() >> (8 * i)) & 0xff));
  out += tocText;
  for (const std::string& b : blobs)
    out += b;
  if (auth.secret) {
    const Tag tag = auth.secret->tag(out);
    out.append(reinterpret_cast<const char*>(tag.data()), tag.size());
  }
  return out;
}

llvm::Expected<BundleContents> readBundle(llvm::StringRef bytes, const Authenticator& auth) {
  if (bytes.size() < kHeaderBytes)
    return bundleError("is truncated: " + std::to_string(bytes.size()) + " bytes, less than its " +
                       std::to_string(kHeaderBytes) + "-byte header");
  if (bytes.size() > kBundleMaxBytes)
    return bundleError("is over the limit of " + std::to_string(kBundleMaxBytes) + " bytes");
  if (std::memcmp(bytes.data(), kBundleMagic, kMagicBytes) != 0)
    return bundleError("is not a bqjit bundle (no BQJITBDL magic)");
  const unsigned version = static_cast<unsigned char>(bytes[kMagicBytes]);
  const unsigned tagKind = static_cast<unsigned char>(bytes[kMagicBytes + 1]);
  if (version != kBundleVersion)
    return bundleError("has format version " + std::to_string(version) + ", this bqjit reads " +
                       std::to_string(kBundleVersion));
  if (tagKind > 1)
    return bundleError("has an unknown tag kind " + std::to_string(tagKind));
  const uint64_t tagLen = tagKind == 1 ? kTagBytes : 0;
  uint64_t tocLen = 0;
  for (int i = 0; i < 4; ++i)
    tocLen |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[kMagicBytes + 2 + i]))
              << (8 * i);
  if (kHeaderBytes + tocLen + tagLen > bytes.size())
    return bundleError("is truncated: its table of contents (" + std::to_string(tocLen) +
                       " bytes) and tag do not fit in its " + std::to_string(bytes.size()) +
                       " bytes");
  BundleContents out;
  out.signedBundle = tagKind == 1;
  if (auth.secret) {
    if (tagKind == 0)
      return bundleError("is not signed (no HMAC tag), and a fleet secret is configured "
                         "(BQJIT_CACHE_SECRET_FILE): refused");
    if (!auth.secret->verify(bytes.drop_back(tagLen), bytes.take_back(tagLen)))
      return bundleError("is refused: HMAC tag does not verify with the fleet secret (signed "
                         "with another secret, altered or truncated)");
  }
  auto parsed = parseJsonInput(bytes.substr(kHeaderBytes, tocLen), kTocLimits,
                               "bundle table of contents", ErrorCode::CacheError);
  if (!parsed)
    return parsed.takeError();
  const nlohmann::json& toc = *parsed;
  auto tocError = [](const std::string& field, const std::string& rule) {
    return bundleError("table of contents: '" + field + "' " + rule);
  };
  if (!toc.is_object())
    return tocError("(top)", "is not an object");
  if (!toc.contains("format") || !toc["format"].is_number_integer() ||
      toc["format"].get<int64_t>() != kBundleVersion)
    return tocError("format", "is not " + std::to_string(kBundleVersion));
  if (!toc.contains("cache_format") || !toc["cache_format"].is_number_integer())
    return tocError("cache_format", "is missing or not an integer");
  out.cacheFormat = toc["cache_format"].get<int>();
  if (out.cacheFormat != kCacheFormatVersion)
    return tocError("cache_format", "is " + std::to_string(out.cacheFormat) + ", this bqjit's is " +
                                        std::to_string(kCacheFormatVersion));
  if (!toc.contains("nvrtc") || !toc["nvrtc"].is_string())
    return tocError("nvrtc", "is missing or not a string");
  out.nvrtc = toc["nvrtc"].get<std::string>();
  if (toc.contains("created_unix_ms") && toc["created_unix_ms"].is_number_integer())
    out.createdUnixMs = toc["created_unix_ms"].get<int64_t>();
  if (!toc.contains("entries") || !toc["entries"].is_array())
    return tocError("entries", "is missing or not an array");
  const llvm::StringRef records = bytes.substr(kHeaderBytes + tocLen).drop_back(tagLen);
  uint64_t expectedOffset = 0;
  size_t index = 0;
  for (const nlohmann::json& e : toc["entries"]) {
    const std::string where = "entries[" + std::to_string(index) + "]";
    if (!e.is_object() || !e.contains("key") || !e["key"].is_string() || !e.contains("offset") ||
        !e["offset"].is_number_unsigned() || !e.contains("bytes") ||
        !e["bytes"].is_number_unsigned())
      return tocError(where, "needs a string 'key' and non-negative 'offset' and 'bytes'");
    const std::string key = e["key"].get<std::string>();
    const uint64_t offset = e["offset"].get<uint64_t>(), size = e["bytes"].get<uint64_t>();
    if (offset != expectedOffset || size > records.size() || offset > records.size() - size)
      return tocError(where, "(key " + key.substr(0, 64) + ") points outside the records (offset " +
                                 std::to_string(offset) + ", " + std::to_string(size) +
                                 " bytes; the bundle is truncated or its table altered)");
    auto decoded = decodeEntryBlob(records.substr(offset, size), key, auth);
    if (!decoded)
      return bundleError(where + " (key " + key.substr(0, 64) +
                         "): " + consumeToString(decoded.takeError()));
    if (decoded->kernel.nvrtcVersion != out.nvrtc)
      return bundleError(where + " (key " + key + ") was compiled by NVRTC " +
                         decoded->kernel.nvrtcVersion + ", the bundle says " + out.nvrtc);
    out.items.push_back({std::move(decoded->kernel), std::move(decoded->keyInputs)});
    expectedOffset += size;
    ++index;
  }
  if (expectedOffset != records.size())
    return bundleError("has " + std::to_string(records.size() - expectedOffset) +
                       " bytes after its last record that its table of contents does not list");
  return out;
}

} // namespace bqjit
