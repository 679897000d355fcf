// Fuzzes the prewarm manifest parser (tools/manifest.*, `bqjit prewarm`):
// parseManifest on the bytes, without and with an --arch override. Every
// item it returns must be a valid spec, listed once.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "fuzz/common.hpp"
#include "tools/manifest.hpp"

namespace {

void parse(const std::string& text, const std::vector<std::string>& archs) {
  auto manifest = bqjit::cli::parseManifest(text, "fuzz.json", archs);
  if (!manifest)
    return bqjit::fuzz::expectMessage(manifest.takeError());
  std::set<std::string> seen;
  for (const bqjit::cli::ManifestItem& item : manifest->items) {
    const bqjit::KernelSpec& spec = item.spec;
    if (auto err = spec.validate())
      BQJIT_FUZZ_CHECK(false, "manifest item invalid: " + bqjit::consumeToString(std::move(err)));
    BQJIT_FUZZ_CHECK(seen.insert(spec.canonical() + " " + item.device.slug()).second,
                     "item listed twice: " + spec.canonical() + " for " + item.device.slug());
  }
  BQJIT_FUZZ_CHECK(manifest->duplicates >= 0, "negative duplicate count");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  parse(text, {});
  parse(text, {"sm_90", "sm_100a"});
  return 0;
}
