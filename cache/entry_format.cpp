#include "cache/entry_format.hpp"

#include "bqjit/error.hpp"
#include "cache/journal.hpp"
#include "core/json_input.hpp"
#include "jit/cache_key.hpp"

namespace bqjit {

namespace {

std::string selfChecksum(nlohmann::json meta) {
  meta.erase("meta_xxh3");
  const std::string text = jsonText(meta);
  return checksum64(text.data(), text.size());
}

llvm::Error metaError(const std::string& field, const std::string& rule) {
  return makeError(ErrorCode::CacheError, "metadata field '" + field + "' " + rule);
}

} // namespace

nlohmann::json makeMetadata(const CompiledKernel& k, const std::string& keyInputs) {
  nlohmann::json meta = {{"format", kCacheFormatVersion},
                         {"key", k.key},
                         {"key_inputs", keyInputs},
                         {"spec", k.spec.toJson()},
                         {"arch", k.spec.arch},
                         {"nvrtc", k.nvrtcVersion},
                         {"lowered_name", k.loweredName},
                         {"options", k.options},
                         {"cubin_bytes", k.cubin.size()},
                         {"ptx_bytes", k.ptx.size()},
                         {"cubin_xxh3", checksum64(k.cubin.data(), k.cubin.size())},
                         {"ptx_xxh3", checksum64(k.ptx.data(), k.ptx.size())},
                         {"compile_ms", k.compileMs},
                         {"resources", k.resources.toJson()},
                         {"log", k.log},
                         {"created_unix_ms", unixTimeMs()}};
  meta["meta_xxh3"] = selfChecksum(meta);
  return meta;
}

llvm::Error parseMetadata(const std::string& text, CompiledKernel& out) {
  // Bounded in size and depth: the file may have been damaged or written by anyone.
  auto parsed = parseJsonInput(text, kMetadataJsonLimits,
                               "metadata is not a JSON object bqjit reads", ErrorCode::CacheError);
  if (!parsed)
    return parsed.takeError();
  nlohmann::json meta = std::move(*parsed);
  if (!meta.is_object())
    return makeError(ErrorCode::CacheError,
                     "metadata is not a JSON object, got " + std::string(meta.type_name()));
  if (!meta.contains("meta_xxh3") || !meta["meta_xxh3"].is_string())
    return metaError("meta_xxh3", "is missing");
  if (meta["meta_xxh3"].get<std::string>() != selfChecksum(meta))
    return metaError("meta_xxh3", "does not match the metadata (file altered or truncated)");
  if (!meta.contains("format") || !meta["format"].is_number_integer() ||
      meta["format"].get<int>() != kCacheFormatVersion)
    return metaError("format", "is not " + std::to_string(kCacheFormatVersion) +
                                   " (entry of another bqjit version)");
  for (const char* f : {"key", "arch", "nvrtc", "lowered_name", "cubin_xxh3", "ptx_xxh3", "log"})
    if (!meta.contains(f) || !meta[f].is_string())
      return metaError(f, "is missing or not a string");
  for (const char* f : {"cubin_bytes", "ptx_bytes"})
    if (!meta.contains(f) || !meta[f].is_number_unsigned())
      return metaError(f, "is missing or not a non-negative integer");
  if (!meta.contains("compile_ms") || !meta["compile_ms"].is_number())
    return metaError("compile_ms", "is missing or not a number");
  if (!meta.contains("options") || !meta["options"].is_array())
    return metaError("options", "is missing or not an array");
  for (const auto& o : meta["options"])
    if (!o.is_string())
      return metaError("options", "holds a non-string");
  if (!meta.contains("resources") || !meta["resources"].is_object())
    return metaError("resources", "is missing or not an object");
  for (const auto& [name, value] : meta["resources"].items())
    if (!value.is_number_integer())
      return metaError("resources." + name, "is not an integer");
  if (!meta.contains("spec"))
    return metaError("spec", "is missing");
  auto spec = KernelSpec::fromJson(meta["spec"]);
  if (!spec) {
    std::string message;
    consumeError(spec.takeError(), &message);
    return metaError("spec", "is invalid: " + message);
  }
  if (!spec->shape)
    return metaError("spec.launch", "is missing (entries hold resolved specs)");
  out.spec = *spec;
  out.key = meta["key"];
  out.loweredName = meta["lowered_name"];
  out.nvrtcVersion = meta["nvrtc"];
  out.options = meta["options"].get<std::vector<std::string>>();
  out.compileMs = meta["compile_ms"];
  out.resources = ResourceReport::fromJson(meta["resources"]);
  out.log = meta["log"];
  return llvm::Error::success();
}

llvm::Error checkPayload(const nlohmann::json& meta, const std::vector<char>& cubin,
                         const std::string& ptx) {
  // Types first: json::value() throws on a field of another type.
  for (const char* f : {"cubin_bytes", "ptx_bytes"})
    if (!meta.contains(f) || !meta[f].is_number_unsigned())
      return metaError(f, "is missing or not a non-negative integer");
  for (const char* f : {"cubin_xxh3", "ptx_xxh3"})
    if (!meta.contains(f) || !meta[f].is_string())
      return metaError(f, "is missing or not a string");
  if (cubin.size() != meta.value("cubin_bytes", uint64_t(0)))
    return makeError(ErrorCode::CacheError,
                     "kernel.cubin has " + std::to_string(cubin.size()) + " bytes, metadata says " +
                         std::to_string(meta.value("cubin_bytes", uint64_t(0))));
  if (checksum64(cubin.data(), cubin.size()) != meta.value("cubin_xxh3", ""))
    return makeError(ErrorCode::CacheError, "kernel.cubin checksum does not match the metadata");
  if (ptx.size() != meta.value("ptx_bytes", uint64_t(0)))
    return makeError(ErrorCode::CacheError,
                     "kernel.ptx has " + std::to_string(ptx.size()) + " bytes, metadata says " +
                         std::to_string(meta.value("ptx_bytes", uint64_t(0))));
  if (checksum64(ptx.data(), ptx.size()) != meta.value("ptx_xxh3", ""))
    return makeError(ErrorCode::CacheError, "kernel.ptx checksum does not match the metadata");
  return llvm::Error::success();
}

} // namespace bqjit
