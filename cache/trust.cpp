#include "cache/trust.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include "bqjit/error.hpp"

namespace bqjit {

namespace {

std::string userName(unsigned uid) {
  struct passwd pw;
  struct passwd* found = nullptr;
  std::vector<char> buffer(16384);
  std::string name = "uid " + std::to_string(uid);
  if (::getpwuid_r(uid, &pw, buffer.data(), buffer.size(), &found) == 0 && found)
    name += " (" + std::string(found->pw_name) + ")";
  return name;
}

std::string groupName(int gid) {
  struct group g;
  struct group* found = nullptr;
  std::vector<char> buffer(16384);
  std::string name = "gid " + std::to_string(gid);
  if (::getgrgid_r(static_cast<gid_t>(gid), &g, buffer.data(), buffer.size(), &found) == 0 && found)
    name += " (" + std::string(found->gr_name) + ")";
  return name;
}

// Whether `uid` belongs to `gid` (its primary group or a listed member).
bool inGroup(unsigned uid, int gid) {
  struct passwd pw;
  struct passwd* user = nullptr;
  std::vector<char> buffer(16384);
  if (::getpwuid_r(uid, &pw, buffer.data(), buffer.size(), &user) != 0 || !user)
    return false;
  if (static_cast<int>(user->pw_gid) == gid)
    return true;
  struct group g;
  struct group* found = nullptr;
  std::vector<char> gbuffer(65536);
  if (::getgrgid_r(static_cast<gid_t>(gid), &g, gbuffer.data(), gbuffer.size(), &found) != 0 ||
      !found)
    return false;
  for (char** member = found->gr_mem; member && *member; ++member)
    if (std::strcmp(*member, user->pw_name) == 0)
      return true;
  return false;
}

} // namespace

TrustPolicy TrustPolicy::of(const Config& config) {
  TrustPolicy p;
  p.user = static_cast<unsigned>(::geteuid());
  p.group = config.cacheGroup;
  return p;
}

std::string modeText(unsigned mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", mode & 07777);
  return text;
}

std::optional<std::string> untrustedWriter(const std::string& path, const struct stat& st,
                                           const TrustPolicy& policy, bool isLink) {
  const std::string what = "'" + path + "' (owner " + userName(st.st_uid) + ", group " +
                           groupName(static_cast<int>(st.st_gid)) + ", mode " +
                           modeText(st.st_mode) + ")";
  const std::string trusted =
      "bqjit loads kernels only from a cache that no one but " + userName(policy.user) +
      (policy.user != 0 ? " and root" : "") +
      (policy.group >= 0 ? " and the group " + groupName(policy.group) + " (BQJIT_CACHE_GROUP)"
                         : "") +
      " can write";
  const std::string shared =
      policy.group >= 0 ? "" : ", or name the group that shares the cache in BQJIT_CACHE_GROUP";
  if (isLink)
    return what + " is a symbolic link, which bqjit never creates in its cache: " + trusted +
           "; fix: remove it (`bqjit cache verify --remove-bad` removes bad entries)";
  const bool ownerOk = st.st_uid == policy.user || st.st_uid == 0 ||
                       (policy.group >= 0 && inGroup(st.st_uid, policy.group));
  if (!ownerOk)
    return what + " is owned by another user: " + trusted + "; fix: chown " +
           userName(policy.user).substr(4) + " '" + path + "' (or remove it)" + shared;
  if (st.st_mode & S_IWOTH)
    return what + " is writable by others: " + trusted + "; fix: chmod o-w '" + path + "'";
  if ((st.st_mode & S_IWGRP) && !(policy.group >= 0 && static_cast<int>(st.st_gid) == policy.group))
    return what + " is writable by its group: " + trusted + "; fix: chmod g-w '" + path + "'" +
           shared;
  return std::nullopt;
}

std::optional<std::string> checkWriters(const std::string& path, const TrustPolicy& policy,
                                        bool follow) {
  struct stat st;
  if ((follow ? ::stat(path.c_str(), &st) : ::lstat(path.c_str(), &st)) != 0) {
    if (errno == ENOENT)
      return std::nullopt;
    return "cannot examine '" + path + "': " + std::strerror(errno);
  }
  return untrustedWriter(path, st, policy, S_ISLNK(st.st_mode));
}

} // namespace bqjit
