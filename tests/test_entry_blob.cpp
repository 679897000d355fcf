// The one-string form of an entry (remote values, bundle records): framing,
// the HMAC tag over key and contents, the key, the metadata and payload
// checksums; every flipped byte and every truncation is refused.
#include "cache/entry_blob.hpp"

#include <string>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "fake_kernel.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;
using test::fakeKernel;
using test::keyInputsOf;

Authenticator withSecret(const std::string& secret) {
  Authenticator a;
  a.secret = FleetSecret::fromBytes(secret);
  return a;
}

Authenticator insecure() {
  Authenticator a;
  a.insecure = true;
  return a;
}

std::string refusal(llvm::StringRef blob, const std::string& key, const Authenticator& auth) {
  auto d = decodeEntryBlob(blob, key, auth);
  if (d)
    return "";
  return consumeToString(d.takeError());
}

TEST(EntryBlob, SignedRoundTrip) {
  const CompiledKernel k = fakeKernel(2048, 3000);
  const Authenticator auth = withSecret("0123456789abcdef-fleet");
  const std::string blob = encodeEntryBlob(k, keyInputsOf(k), auth);
  auto d = decodeEntryBlob(blob, k.key, auth);
  ASSERT_TRUE(bool(d)) << consumeToString(d.takeError());
  EXPECT_TRUE(d->signedEntry);
  EXPECT_EQ(d->kernel.cubin, k.cubin);
  EXPECT_EQ(d->kernel.ptx, k.ptx);
  EXPECT_EQ(d->kernel.key, k.key);
  EXPECT_EQ(d->keyInputs, keyInputsOf(k));
}

TEST(EntryBlob, EveryFlippedByteIsRefused) {
  const CompiledKernel k = fakeKernel(2048, 600);
  const Authenticator auth = withSecret("0123456789abcdef-fleet");
  const std::string blob = encodeEntryBlob(k, keyInputsOf(k), auth);
  for (size_t i = 0; i < blob.size(); ++i) {
    std::string bad = blob;
    bad[i] ^= 0x01;
    EXPECT_NE(refusal(bad, k.key, auth), "") << "byte " << i << " flipped was accepted";
  }
  // Unsigned (insecure) entries are still checksummed: every byte of the
  // payload and metadata counts.
  const std::string plain = encodeEntryBlob(k, keyInputsOf(k), insecure());
  for (size_t i = 0; i < plain.size(); ++i) {
    std::string bad = plain;
    bad[i] ^= 0x01;
    EXPECT_NE(refusal(bad, k.key, insecure()), "") << "byte " << i << " flipped was accepted";
  }
}

TEST(EntryBlob, TruncatedOrPaddedIsRefusedNamingTheLengths) {
  const CompiledKernel k = fakeKernel(2048, 600);
  const Authenticator auth = withSecret("0123456789abcdef-fleet");
  const std::string blob = encodeEntryBlob(k, keyInputsOf(k), auth);
  for (size_t n : {size_t(0), size_t(10), blob.size() / 2, blob.size() - 1})
    EXPECT_TRUE(contains(refusal(llvm::StringRef(blob).take_front(n), k.key, auth), "truncated"));
  EXPECT_TRUE(contains(refusal(blob + "x", k.key, auth), "do not add up"));
}

TEST(EntryBlob, MissingOrWrongTagIsRefusedWithASecret) {
  const CompiledKernel k = fakeKernel(2048);
  const Authenticator auth = withSecret("0123456789abcdef-fleet");
  EXPECT_TRUE(contains(refusal(encodeEntryBlob(k, keyInputsOf(k), insecure()), k.key, auth),
                       "is not signed (no HMAC tag)"));
  EXPECT_TRUE(
      contains(refusal(encodeEntryBlob(k, keyInputsOf(k), withSecret("another secret 0123456")),
                       k.key, auth),
               "HMAC tag does not verify"));
  // Without a secret (insecure) both are read, unverified.
  EXPECT_EQ(refusal(encodeEntryBlob(k, keyInputsOf(k), auth), k.key, insecure()), "");
}

TEST(EntryBlob, AnotherKeysEntryIsRefused) {
  const CompiledKernel a = fakeKernel(2048), b = fakeKernel(4096);
  const Authenticator auth = withSecret("0123456789abcdef-fleet");
  EXPECT_TRUE(contains(refusal(encodeEntryBlob(a, keyInputsOf(a), auth), b.key, auth),
                       "holds key " + a.key + ", not " + b.key));
}

} // namespace
} // namespace bqjit
