// Who may write the kernels bqjit loads. A cubin runs in the host's CUDA
// context with access to all of its GPU memory, so whoever can write an
// entry that bqjit loads can run code there: the cache root and the tree
// bqjit creates below it (not its parents) must be writable by no one but
// the current user and root, or, for a cache deliberately shared by service
// accounts, by the group named in BQJIT_CACHE_GROUP (Config::cacheGroup).
#pragma once

#include <optional>
#include <string>

#include <sys/stat.h>

#include "bqjit/config.hpp"

namespace bqjit {

struct TrustPolicy {
  unsigned user = 0; ///< the effective uid of this process
  int group = -1;    ///< Config::cacheGroup: a group trusted to write, or -1

  static TrustPolicy of(const Config& config);
};

/// Why the file or directory `path`, whose status is `st`, may be written by
/// someone `policy` does not trust (its owner, its mode, the fix), or
/// std::nullopt when it is trusted: owned by the current user, by root or
/// (with a trusted group) by a member of that group, and writable neither by
/// others nor by a group other than the trusted one. `isLink`: `st` is an
/// lstat of a symbolic link, which bqjit never creates below the cache root.
std::optional<std::string> untrustedWriter(const std::string& path, const struct stat& st,
                                           const TrustPolicy& policy, bool isLink = false);

/// untrustedWriter() of a path, or the reason it cannot be examined; a
/// missing path is trusted (there is nothing in it to load). `follow`: stat,
/// else lstat.
std::optional<std::string> checkWriters(const std::string& path, const TrustPolicy& policy,
                                        bool follow = false);

/// "0755".
std::string modeText(unsigned mode);

} // namespace bqjit
