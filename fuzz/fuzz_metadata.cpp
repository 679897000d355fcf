// Fuzzes what bqjit reads back from a cache entry on disk, which another
// process, a full disk or a person may have damaged:
//   - parseMetadata (meta.json) on the bytes as they are (bounded in size and
//     depth, repeated keys refused: deep and wide seeds), and once more with
//     "meta_xxh3" recomputed, so that the fuzzer gets past the self checksum
//     to the field checks (a random edit would almost never match it);
//   - checkPayload of the bytes against any JSON object they parse to;
//   - readCubinKernelInfo (the ELF reader of kernel.cubin) on the bytes, for
//     the kernel name of the seed cubins.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cache/entry_format.hpp"
#include "fuzz/common.hpp"
#include "jit/cache_key.hpp"
#include "jit/cubin_info.hpp"
#include "core/json_input.hpp"

namespace {

// The lowered name of the kernel in corpus/fuzz_metadata/*.cubin
// (H=2048 G=128 bf16 -> fp8_e4m3 row, tpg=8 vec=8 gpb=32, sm_90).
constexpr const char* kKernelName =
    "_ZN12bqjit_kernel14silu_mul_quantILi2048ELi128ELi0ELi0ELi0ELb0ELb0ELb0ELi8ELi8ELi32EEEvPKvxx"
    "PhPvPKfPKi";

void metadata(const std::string& text) {
  bqjit::CompiledKernel k;
  if (auto err = bqjit::parseMetadata(text, k))
    return bqjit::fuzz::expectMessage(std::move(err));
  // Accepted: the spec is valid and resolved.
  if (auto err = k.spec.validate())
    BQJIT_FUZZ_CHECK(false, "accepted metadata holds an invalid spec: " +
                                bqjit::consumeToString(std::move(err)));
  BQJIT_FUZZ_CHECK(k.spec.shape.has_value(), "accepted metadata without a launch shape");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<char> bytes(text.begin(), text.end());

  metadata(text);
  // Through the bounded parser, as bqjit reads metadata: a plain parse of
  // deep input would build a value that dump() below recurses through.
  auto parsed = bqjit::parseJsonInput(text, bqjit::kMetadataJsonLimits, "fuzz metadata",
                                      bqjit::ErrorCode::CacheError);
  if (!parsed)
    bqjit::fuzz::expectMessage(parsed.takeError());
  else if (parsed->is_object()) {
    nlohmann::json& meta = *parsed;
    meta.erase("meta_xxh3");
    const std::string rest = meta.dump();
    meta["meta_xxh3"] = bqjit::checksum64(rest.data(), rest.size());
    metadata(meta.dump());
    if (auto err = bqjit::checkPayload(meta, bytes, text))
      bqjit::fuzz::expectMessage(std::move(err));
  }

  auto info = bqjit::readCubinKernelInfo(bytes, kKernelName);
  if (info)
    BQJIT_FUZZ_CHECK(info->registers >= 0, "accepted cubin without a register count");
  else
    bqjit::fuzz::expectMessage(info.takeError());
  return 0;
}
