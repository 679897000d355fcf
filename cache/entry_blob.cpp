#include "cache/entry_blob.hpp"

#include <cstring>

#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"
#include "cache/entry_format.hpp"
#include "core/json_input.hpp"

namespace bqjit {

namespace {

constexpr size_t kMagicBytes = 8;
constexpr size_t kHeaderBytes = kMagicBytes + 2 + 4 + 4 + 8 + 8;

void putLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i)
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t getLe(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i)
    v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

llvm::Error blobError(const std::string& what) {
  return makeError(ErrorCode::CacheError, "entry " + what);
}

} // namespace

std::string encodeEntryBlob(const CompiledKernel& k, const std::string& keyInputs,
                            const Authenticator& auth) {
  const std::string meta = jsonText(makeMetadata(k, keyInputs));
  std::string out(kEntryBlobMagic, kMagicBytes);
  out.push_back(static_cast<char>(kEntryBlobVersion));
  out.push_back(static_cast<char>(auth.secret ? 1 : 0));
  putLe(out, k.key.size(), 4);
  putLe(out, meta.size(), 4);
  putLe(out, k.cubin.size(), 8);
  putLe(out, k.ptx.size(), 8);
  out += k.key;
  out += meta;
  out.append(k.cubin.data(), k.cubin.size());
  out += k.ptx;
  if (auth.secret) {
    const Tag tag = auth.secret->tag(out);
    out.append(reinterpret_cast<const char*>(tag.data()), tag.size());
  }
  return out;
}

llvm::Expected<DecodedEntry> decodeEntryBlob(llvm::StringRef blob, const std::string& expectedKey,
                                             const Authenticator& auth) {
  if (blob.size() < kHeaderBytes)
    return blobError("is truncated: " + std::to_string(blob.size()) + " bytes, less than its " +
                     std::to_string(kHeaderBytes) + "-byte header");
  if (blob.size() > kEntryBlobMaxBytes)
    return blobError("is " + std::to_string(blob.size()) + " bytes, over the limit of " +
                     std::to_string(kEntryBlobMaxBytes));
  if (std::memcmp(blob.data(), kEntryBlobMagic, kMagicBytes) != 0)
    return blobError("is not a bqjit entry (no BQJITENT magic)");
  const char* p = blob.data() + kMagicBytes;
  const unsigned version = static_cast<unsigned char>(p[0]);
  const unsigned tagKind = static_cast<unsigned char>(p[1]);
  if (version != kEntryBlobVersion)
    return blobError("has format version " + std::to_string(version) + ", this bqjit reads " +
                     std::to_string(kEntryBlobVersion));
  if (tagKind > 1)
    return blobError("has an unknown tag kind " + std::to_string(tagKind));
  const uint64_t keyLen = getLe(p + 2, 4), metaLen = getLe(p + 6, 4);
  const uint64_t cubinLen = getLe(p + 10, 8), ptxLen = getLe(p + 18, 8);
  const uint64_t tagLen = tagKind == 1 ? kTagBytes : 0;
  // Each length is bounded by the blob's size before they are added.
  const uint64_t size = blob.size();
  if (keyLen > size || metaLen > size || cubinLen > size || ptxLen > size ||
      kHeaderBytes + keyLen + metaLen + cubinLen + ptxLen + tagLen != size)
    return blobError("is truncated or padded: its lengths (key " + std::to_string(keyLen) +
                     ", metadata " + std::to_string(metaLen) + ", cubin " +
                     std::to_string(cubinLen) + ", PTX " + std::to_string(ptxLen) + ", tag " +
                     std::to_string(tagLen) + ") do not add up to its " + std::to_string(size) +
                     " bytes");
  const llvm::StringRef signedPart = blob.take_front(size - tagLen);
  if (auth.secret) {
    if (tagKind == 0)
      return blobError("is not signed (no HMAC tag), and a fleet secret is configured "
                       "(BQJIT_CACHE_SECRET_FILE): refused");
    if (!auth.secret->verify(signedPart, blob.take_back(tagLen)))
      return blobError("is refused: HMAC tag does not verify with the fleet secret (signed with "
                       "another secret, or altered)");
  }
  size_t at = kHeaderBytes;
  const std::string key = blob.substr(at, keyLen).str();
  at += keyLen;
  if (!expectedKey.empty() && key != expectedKey)
    return blobError("holds key " + key.substr(0, 64) + ", not " + expectedKey +
                     " (a foreign entry)");
  const std::string metaText = blob.substr(at, metaLen).str();
  at += metaLen;
  DecodedEntry out;
  if (auto err = parseMetadata(metaText, out.kernel))
    return blobError("metadata: " + consumeToString(std::move(err)));
  if (out.kernel.key != key)
    return blobError("metadata names key " + out.kernel.key + ", the entry " + key);
  const llvm::StringRef cubin = blob.substr(at, cubinLen);
  at += cubinLen;
  out.kernel.cubin.assign(cubin.begin(), cubin.end());
  out.kernel.ptx = blob.substr(at, ptxLen).str();
  const nlohmann::json meta = nlohmann::json::parse(metaText);
  if (auto err = checkPayload(meta, out.kernel.cubin, out.kernel.ptx))
    return blobError(consumeToString(std::move(err)));
  if (!meta.contains("key_inputs") || !meta["key_inputs"].is_string())
    return blobError("metadata field 'key_inputs' is missing or not a string");
  out.keyInputs = meta["key_inputs"].get<std::string>();
  out.signedEntry = tagKind == 1;
  return out;
}

} // namespace bqjit
