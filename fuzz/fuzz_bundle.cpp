// Fuzzes what bqjit reads from a bundle file or a remote (Redis) value, both
// handed over by someone else: readBundle and decodeEntryBlob, with the tag
// parsing. Each input is read three ways:
//   - as it is, with a fleet secret (the tag must verify: random bytes stop there);
//   - as it is, unsigned (BQJIT_INSECURE_UNSIGNED: no tag check, so the
//     fuzzer reaches the table of contents, the records and their metadata);
//   - re-signed: its last 32 bytes replaced by the right tag, so that the
//     signed path gets past the tag too.
// Accepted contents must hold what the table says; errors must say why.
#include <cstddef>
#include <cstdint>
#include <string>

#include "cache/bundle.hpp"
#include "fuzz/common.hpp"

namespace {

const char kSecret[] = "fuzz fleet secret, 32 bytes long";

void check(const std::string& bytes, const bqjit::Authenticator& auth) {
  auto bundle = bqjit::readBundle(bytes, auth);
  if (!bundle) {
    bqjit::fuzz::expectMessage(bundle.takeError());
  } else {
    for (const auto& item : bundle->items)
      BQJIT_FUZZ_CHECK(item.kernel.nvrtcVersion == bundle->nvrtc,
                       "an accepted record of another NVRTC version");
  }
  auto entry = bqjit::decodeEntryBlob(bytes, "", auth);
  if (!entry)
    bqjit::fuzz::expectMessage(entry.takeError());
  else
    BQJIT_FUZZ_CHECK(!entry->kernel.key.empty(), "an accepted entry without a key");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  bqjit::Authenticator secret;
  secret.secret = bqjit::FleetSecret::fromBytes(kSecret);
  bqjit::Authenticator insecure;
  insecure.insecure = true;
  check(bytes, secret);
  check(bytes, insecure);
  if (bytes.size() > bqjit::kTagBytes) {
    std::string resigned = bytes.substr(0, bytes.size() - bqjit::kTagBytes);
    const bqjit::Tag tag = secret.secret->tag(resigned);
    resigned.append(reinterpret_cast<const char*>(tag.data()), tag.size());
    check(resigned, secret);
  }
  return 0;
}
