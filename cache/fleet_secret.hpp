// The fleet secret that authenticates remote entries and bundles: an
// HMAC-SHA256 tag (OpenSSL's libcrypto) over each entry's key and contents.
// Whoever can write the Redis database or hand over a bundle can run code in
// every process that loads from it; the tag makes that "whoever holds the
// secret". Read from BQJIT_CACHE_SECRET_FILE, which must be the current
// user's or root's and readable by no one else (by the trusted group at most).
#pragma once

#include <array>
#include <optional>
#include <string>

#include <llvm/ADT/StringRef.h>
#include <llvm/Support/Error.h>

#include "bqjit/config.hpp"
#include "cache/trust.hpp"

namespace bqjit {

inline constexpr size_t kTagBytes = 32;
using Tag = std::array<unsigned char, kTagBytes>;

class FleetSecret {
public:
  /// Reads a secret file: at least 16 bytes (one trailing newline is not part
  /// of it), owned by the current user or root, no permission for others (a
  /// trusted group may read it). Errors (CacheError) name the file and the rule.
  static llvm::Expected<FleetSecret> load(const std::string& path, const TrustPolicy& policy);
  /// A secret from bytes (tests, tools).
  static FleetSecret fromBytes(std::string bytes) { return FleetSecret(std::move(bytes)); }

  /// HMAC-SHA256 of `data`.
  Tag tag(llvm::StringRef data) const;
  /// Whether `tag` is the tag of `data`, compared in constant time.
  bool verify(llvm::StringRef data, llvm::StringRef tag) const;

private:
  explicit FleetSecret(std::string key) : key_(std::move(key)) {}
  std::string key_;
};

/// How remote entries and bundles are authenticated: with the fleet secret,
/// or (BQJIT_INSECURE_UNSIGNED=1) not at all.
struct Authenticator {
  std::optional<FleetSecret> secret;
  bool insecure = false; ///< no secret: entries are written unsigned and read unverified

  /// The secret of Config::secretFile; without one, an error that says what
  /// to set unless Config::insecureUnsigned. `what` names the user ("the
  /// remote cache", "bundle export").
  static llvm::Expected<Authenticator> fromConfig(const Config& config, const std::string& what);
};

} // namespace bqjit
