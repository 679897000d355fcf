#include "tools/manifest.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"

namespace bqjit::cli {

namespace {

llvm::Error manifestError(const std::string& path, const std::string& what,
                          ErrorCode code = ErrorCode::InvalidArgument) {
  return makeError(code, "manifest '" + path + "': " + what);
}

// Re-wraps an error from KernelSpec::fromJson with the manifest's location.
llvm::Error locate(llvm::Error err, const std::string& path, const std::string& where) {
  std::string message;
  const ErrorCode code = consumeError(std::move(err), &message);
  return manifestError(path, where + ": " + message, code);
}

// Every entry of "archs", each checked by validating a minimal spec with it.
llvm::Expected<std::vector<std::string>> readArchs(const nlohmann::json& archs,
                                                   const std::string& path) {
  if (!archs.is_array() || archs.empty())
    return manifestError(path, "\"archs\" must be a non-empty array of strings like \"sm_90\", "
                               "got " +
                                   archs.dump());
  std::vector<std::string> out;
  for (size_t i = 0; i < archs.size(); ++i) {
    const std::string where = "archs[" + std::to_string(i) + "]";
    if (!archs[i].is_string())
      return manifestError(path,
                           where + " must be a string like \"sm_90\", got " + archs[i].dump());
    KernelSpec probe;
    probe.hidden = probe.groupSize;
    probe.arch = archs[i].get<std::string>();
    if (auto err = probe.validate())
      return locate(std::move(err), path, where);
    out.push_back(probe.arch);
  }
  return out;
}

} // namespace

llvm::Expected<Manifest> parseManifest(const std::string& text, const std::string& path,
                                       const std::vector<std::string>& archOverride) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // parse_error, and out_of_range for a number too large for a double (1e999).
    return manifestError(path, std::string("not valid JSON: ") + e.what());
  }
  if (!root.is_object())
    return manifestError(path, "must be a JSON object with \"specs\" (and \"archs\", "
                               "\"defaults\"), got " +
                                   std::string(root.type_name()));
  for (auto it = root.begin(); it != root.end(); ++it)
    if (it.key() != "archs" && it.key() != "defaults" && it.key() != "specs" &&
        it.key() != "comment")
      return manifestError(path, "unknown top-level field \"" + it.key() +
                                     "\" (known: archs, defaults, specs, comment)");
  if (!root.contains("specs"))
    return manifestError(path, "missing \"specs\" (an array of spec objects)");
  const nlohmann::json& specs = root["specs"];
  if (!specs.is_array())
    return manifestError(path, "\"specs\" must be an array of spec objects, got " +
                                   std::string(specs.type_name()));

  nlohmann::json defaults = nlohmann::json::object();
  if (root.contains("defaults")) {
    defaults = root["defaults"];
    if (!defaults.is_object())
      return manifestError(path,
                           "\"defaults\" must be an object of spec fields, got " + defaults.dump());
    defaults.erase("comment");
    if (defaults.contains("arch"))
      return manifestError(path, "\"defaults\" may not set \"arch\"; list architectures in "
                                 "\"archs\" or pass --arch");
  }

  std::vector<std::string> archs = archOverride;
  if (archs.empty() && root.contains("archs")) {
    auto read = readArchs(root["archs"], path);
    if (!read)
      return read.takeError();
    archs = std::move(*read);
  } else if (!archs.empty()) {
    auto read = readArchs(nlohmann::json(archs), path);
    if (!read)
      return read.takeError();
  }

  Manifest manifest;
  manifest.path = path;
  std::set<std::string> seen;
  const std::string withDefaults = defaults.empty() ? "" : " (with \"defaults\" applied)";
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::string where = "specs[" + std::to_string(i) + "]";
    if (!specs[i].is_object())
      return manifestError(path, where + " must be a spec object, got " + specs[i].dump());
    nlohmann::json merged = defaults;
    for (auto it = specs[i].begin(); it != specs[i].end(); ++it)
      if (it.key() != "comment")
        merged[it.key()] = it.value();
    const bool pinned = merged.contains("arch");
    if (!pinned && archs.empty())
      return manifestError(path, where + " names no \"arch\" and the manifest has no "
                                         "\"archs\"; add \"archs\" or pass --arch");
    for (const std::string& arch : pinned ? std::vector<std::string>{""} : archs) {
      nlohmann::json j = merged;
      if (!pinned)
        j["arch"] = arch;
      auto spec = KernelSpec::fromJson(j);
      if (!spec)
        return locate(spec.takeError(), path, where + withDefaults);
      if (seen.insert(spec->canonical()).second)
        manifest.items.push_back(std::move(*spec));
      else
        ++manifest.duplicates;
    }
  }
  return manifest;
}

llvm::Expected<Manifest> loadManifest(const std::string& path,
                                      const std::vector<std::string>& archOverride) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return manifestError(path, std::string("cannot read it: ") + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad())
    return manifestError(path, "cannot read it: I/O error");
  return parseManifest(text.str(), path, archOverride);
}

} // namespace bqjit::cli
