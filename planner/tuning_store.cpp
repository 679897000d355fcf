#include "planner/tuning_store.hpp"

#include <cstdio>

#include <nlohmann/json.hpp>
// Inline: xxHash is a build-time header, never a library a host must link.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "bqjit/error.hpp"
#include "core/fs_util.hpp"
#include "core/json_input.hpp"

namespace bqjit {

TuningStore::TuningStore(std::string directory, std::string codeIdentity, Config config)
    : directory_(std::move(directory)), codeIdentity_(std::move(codeIdentity)),
      config_(std::move(config)) {}

std::string TuningStore::path(const KernelSpec& spec, Regime regime,
                              const DeviceProfile& device) const {
  if (directory_.empty())
    return "";
  KernelSpec base = spec;
  base.shape.reset();
  const std::string text = base.canonical() + "\n" + codeIdentity_;
  const XXH128_hash_t h = XXH3_128bits(text.data(), text.size());
  char name[33];
  std::snprintf(name, sizeof name, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return directory_ + "/" + name + "." + device.slug() + "." + regimeName(regime) + ".json";
}

std::optional<LaunchShape> TuningStore::find(const KernelSpec& spec, Regime regime,
                                             const DeviceProfile& device) const {
  if (directory_.empty())
    return std::nullopt;
  const std::string file = path(spec, regime, device);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = read_.find(file); it != read_.end())
      return it->second;
  }
  std::optional<LaunchShape> found;
  if (auto text = fs::readFile(file)) {
    auto parsed = parseJsonInput(llvm::StringRef(text->data(), text->size()),
                                 kTuningRecordJsonLimits, "tuning record '" + file + "'");
    nlohmann::json j;
    if (parsed)
      j = std::move(*parsed);
    else
      llvm::consumeError(parsed.takeError());
    if (j.is_object() && j.contains("spec")) {
      auto tuned = KernelSpec::fromJson(j["spec"]);
      if (tuned && tuned->shape) {
        // A record may hold a shape that does not fit this spec (a copied or
        // stale file): then it is ignored.
        if (llvm::Error invalid = validateShape(spec, *tuned->shape))
          llvm::consumeError(std::move(invalid));
        else
          found = tuned->shape;
      }
      if (!tuned)
        llvm::consumeError(tuned.takeError());
    }
    if (!found)
      config_.log(LogLevel::Warn, "ignoring unreadable tuning record " + file);
  } else {
    llvm::consumeError(text.takeError()); // no record: the usual case
  }
  std::lock_guard<std::mutex> lock(mutex_);
  read_[file] = found;
  return found;
}

llvm::Error TuningStore::store(const KernelSpec& spec, const LaunchShape& shape, Regime regime) {
  auto arch = Arch::parse(spec.arch);
  if (!arch)
    return arch.takeError();
  return store(spec, shape, regime, DeviceProfile::forArch(*arch));
}

llvm::Error TuningStore::store(const KernelSpec& spec, const LaunchShape& shape, Regime regime,
                               const DeviceProfile& device) {
  if (directory_.empty())
    return makeError(ErrorCode::CacheError, "no cache directory to store the tuned shape in");
  KernelSpec tuned = spec;
  tuned.shape = shape;
  if (auto err = tuned.validate())
    return err;
  if (auto err = fs::createDirectories(directory_))
    return err;
  const std::string file = path(spec, regime, device);
  const std::string text =
      jsonText(nlohmann::json({{"spec", tuned.toJson()}, {"device", device.slug()}}), 2) + "\n";
  if (auto err = fs::replaceFile(file, text.data(), text.size()))
    return makeError(ErrorCode::CacheError,
                     "cannot write tuning record: " + consumeToString(std::move(err)));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    read_[file] = shape;
  }
  generation_.fetch_add(1, std::memory_order_acq_rel);
  return llvm::Error::success();
}

void TuningStore::reload() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    read_.clear();
  }
  generation_.fetch_add(1, std::memory_order_acq_rel);
}

} // namespace bqjit
