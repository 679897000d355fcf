#include "tools/manifest.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"
#include "core/json_input.hpp"

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
                                   shownJson(archs));
  std::vector<std::string> out;
  for (size_t i = 0; i < archs.size(); ++i) {
    const std::string where = "archs[" + std::to_string(i) + "]";
    if (!archs[i].is_string())
      return manifestError(path,
                           where + " must be a string like \"sm_90\", got " + shownJson(archs[i]));
    KernelSpec probe;
    probe.hidden = probe.groupSize;
    probe.arch = archs[i].get<std::string>();
    if (auto err = probe.validate())
      return locate(std::move(err), path, where);
    out.push_back(probe.arch);
  }
  return out;
}

// Every entry of "devices": a model of the table.
llvm::Expected<std::vector<DeviceProfile>> readDevices(const nlohmann::json& devices,
                                                       const std::string& path) {
  const std::string knownList = DeviceProfile::knownModelList();
  if (!devices.is_array() || devices.empty())
    return manifestError(path, "\"devices\" must be a non-empty array of GPU model names (" +
                                   knownList + "), got " + shownJson(devices));
  std::vector<DeviceProfile> out;
  for (size_t i = 0; i < devices.size(); ++i) {
    const std::string where = "devices[" + std::to_string(i) + "]";
    if (!devices[i].is_string())
      return manifestError(path, where + " must be a GPU model name, got " + shownJson(devices[i]));
    auto known = DeviceProfile::known(devices[i].get<std::string>());
    if (!known)
      return manifestError(path, where + " = " + shownJson(devices[i]) +
                                     ": not a known GPU model; known: " + knownList +
                                     " (an unknown GPU plans as its architecture's default: "
                                     "list its architecture in \"archs\")");
    out.push_back(*known);
  }
  return out;
}

} // namespace

std::string ManifestItem::label() const {
  return device.model.empty() ? spec.label() : spec.label() + " for " + device.model;
}

llvm::Expected<Manifest> parseManifest(const std::string& text, const std::string& path,
                                       const std::vector<std::string>& archOverride) {
  // Bounded: a manifest nested 100000 levels deep once overflowed the stack.
  auto parsed = parseJsonInput(text, kManifestJsonLimits, "manifest '" + path + "'");
  if (!parsed)
    return parsed.takeError();
  nlohmann::json root = std::move(*parsed);
  if (!root.is_object())
    return manifestError(path, "must be a JSON object with \"specs\" (and \"archs\", "
                               "\"defaults\"), got " +
                                   std::string(root.type_name()));
  for (auto it = root.begin(); it != root.end(); ++it)
    if (it.key() != "archs" && it.key() != "devices" && it.key() != "defaults" &&
        it.key() != "specs" && it.key() != "comment")
      return manifestError(path, "unknown top-level field " + shownJson(it.key()) +
                                     " (known: archs, devices, defaults, specs, comment)");
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
      return manifestError(path, "\"defaults\" must be an object of spec fields, got " +
                                     shownJson(defaults));
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

  std::vector<DeviceProfile> devices;
  if (root.contains("devices")) {
    auto read = readDevices(root["devices"], path);
    if (!read)
      return read.takeError();
    devices = std::move(*read);
  }

  // Checked after "archs" and "defaults", so that their errors come first.
  if (specs.empty())
    return manifestError(path, "\"specs\" is empty; a manifest lists at least one spec to compile");

  Manifest manifest;
  manifest.path = path;
  std::set<std::string> seen;
  const std::string withDefaults = defaults.empty() ? "" : " (with \"defaults\" applied)";
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::string where = "specs[" + std::to_string(i) + "]";
    if (!specs[i].is_object())
      return manifestError(path, where + " must be a spec object, got " + shownJson(specs[i]));
    nlohmann::json merged = defaults;
    for (auto it = specs[i].begin(); it != specs[i].end(); ++it)
      if (it.key() != "comment")
        merged[it.key()] = it.value();
    const bool pinned = merged.contains("arch");
    if (!pinned && archs.empty() && devices.empty())
      return manifestError(path, where + " names no \"arch\" and the manifest has no "
                                         "\"archs\" or \"devices\"; add one or pass --arch");
    // Each target: an architecture's default device, or a named model.
    std::vector<std::pair<std::string, std::optional<DeviceProfile>>> targets;
    if (pinned) {
      targets.push_back({"", std::nullopt});
    } else {
      for (const std::string& arch : archs)
        targets.push_back({arch, std::nullopt});
    }
    for (const DeviceProfile& d : devices)
      targets.push_back({pinned ? "" : d.arch.str(), d});
    for (const auto& [arch, device] : targets) {
      nlohmann::json j = merged;
      if (!arch.empty())
        j["arch"] = arch;
      auto spec = KernelSpec::fromJson(j);
      if (!spec)
        return locate(spec.takeError(), path, where + withDefaults);
      auto target = Arch::parse(spec->arch);
      if (!target)
        return locate(target.takeError(), path, where + withDefaults);
      // A pinned spec takes only the devices of its own architecture.
      if (device && pinned && device->arch.number != target->number)
        continue;
      ManifestItem item{std::move(*spec), device ? *device : DeviceProfile::forArch(*target)};
      if (seen.insert(item.spec.canonical() + "\n" + item.device.slug()).second)
        manifest.items.push_back(std::move(item));
      else
        ++manifest.duplicates;
    }
  }
  return manifest;
}

llvm::Expected<Manifest> loadManifest(const std::string& path,
                                      const std::vector<std::string>& archOverride) {
  // A directory opens and then reads as empty text ("unexpected end of
  // input"): say what it is instead.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    return makeError(ErrorCode::InvalidArgument, "manifest '" + path +
                                                     "' is a directory, not a manifest file (a "
                                                     "JSON file with \"specs\")");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return manifestError(path, std::string("cannot read it: ") + std::strerror(errno));
  // Read no more than the limit allows (the file may be a pipe, or
  // /dev/zero): past it, the size is the error.
  const size_t limit = kManifestJsonLimits.maxBytes;
  std::string text;
  char buf[1 << 16];
  while (text.size() <= limit && in.read(buf, sizeof buf).gcount() > 0)
    text.append(buf, static_cast<size_t>(in.gcount()));
  if (in.bad())
    return manifestError(path, "cannot read it: I/O error");
  const std::string limitText =
      std::to_string(limit) + " bytes (" + std::to_string(limit / (1024 * 1024)) + " MiB)";
  if (text.size() > limit)
    return manifestError(path, S_ISREG(st.st_mode) && static_cast<size_t>(st.st_size) > limit
                                   ? std::to_string(st.st_size) + " bytes is over the limit of " +
                                         limitText
                                   : "more than the limit of " + limitText);
  return parseManifest(text, path, archOverride);
}

} // namespace bqjit::cli
