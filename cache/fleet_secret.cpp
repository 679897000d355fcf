#include "cache/fleet_secret.hpp"

#include <cerrno>
#include <cstring>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/stat.h>

#include "bqjit/error.hpp"
#include "core/fs_util.hpp"

namespace bqjit {

llvm::Expected<FleetSecret> FleetSecret::load(const std::string& path, const TrustPolicy& policy) {
  struct stat st;
  auto bytes = fs::readFileNoFollow(path, &st);
  if (!bytes)
    return makeError(ErrorCode::CacheError,
                     "cannot read the fleet secret (BQJIT_CACHE_SECRET_FILE): " +
                         consumeToString(bytes.takeError()));
  const std::string what = "the fleet secret file '" + path + "' (BQJIT_CACHE_SECRET_FILE, mode " +
                           modeText(st.st_mode) + ", owner uid " + std::to_string(st.st_uid) + ")";
  if (!S_ISREG(st.st_mode))
    return makeError(ErrorCode::CacheError, what + " is not a regular file");
  if (st.st_uid != policy.user && st.st_uid != 0)
    return makeError(ErrorCode::CacheError, what + " is owned by another user: it must be " +
                                                "the current user's or root's; fix: chown it");
  const bool groupMayRead = policy.group >= 0 && static_cast<int>(st.st_gid) == policy.group;
  if ((st.st_mode & S_IRWXO) || (st.st_mode & S_IWGRP) || ((st.st_mode & S_IRWXG) && !groupMayRead))
    return makeError(ErrorCode::CacheError,
                     what +
                         " is readable or writable by others: anyone who reads it can sign "
                         "kernels; fix: chmod 600 '" +
                         path + "'" +
                         (policy.group >= 0 ? " (or 640 for the BQJIT_CACHE_GROUP)" : ""));
  std::string key(bytes->begin(), bytes->end());
  if (!key.empty() && key.back() == '\n')
    key.pop_back();
  if (key.size() < 16)
    return makeError(ErrorCode::CacheError,
                     what + " holds " + std::to_string(key.size()) +
                         " bytes: a secret has at least 16 (e.g. `head -c 32 /dev/urandom | "
                         "base64 > FILE`)");
  return FleetSecret(std::move(key));
}

Tag FleetSecret::tag(llvm::StringRef data) const {
  Tag out{};
  unsigned int length = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &length);
  return out;
}

bool FleetSecret::verify(llvm::StringRef data, llvm::StringRef tagBytes) const {
  if (tagBytes.size() != kTagBytes)
    return false;
  const Tag expected = tag(data);
  return CRYPTO_memcmp(expected.data(), tagBytes.data(), kTagBytes) == 0;
}

llvm::Expected<Authenticator> Authenticator::fromConfig(const Config& config,
                                                        const std::string& what) {
  Authenticator a;
  if (!config.secretFile.empty()) {
    auto secret = FleetSecret::load(config.secretFile, TrustPolicy::of(config));
    if (!secret)
      return secret.takeError();
    a.secret.emplace(std::move(*secret));
    return a;
  }
  if (config.insecureUnsigned) {
    a.insecure = true;
    return a;
  }
  return makeError(ErrorCode::CacheError,
                   what +
                       " needs the fleet secret: set BQJIT_CACHE_SECRET_FILE to a file of at "
                       "least 16 random bytes, mode 0600, the same on every host (or "
                       "BQJIT_INSECURE_UNSIGNED=1 to go without, which lets anyone who can "
                       "write the Redis database or hand over a bundle run code in this process)");
}

} // namespace bqjit
