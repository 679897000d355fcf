// Tuning records: the launch shape `bqjit tune` measured fastest for one
// spec and regime, kept as files under the cache directory
// (<cache>/v1/tuned/<key>.<device>.<regime>.json) and read once per process.
// A record holds for one GPU model: an H100's fastest shape is not an H200's.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include <llvm/Support/Error.h>

#include "bqjit/config.hpp"
#include "bqjit/kernel_spec.hpp"
#include "planner/device_profile.hpp"
#include "planner/regime.hpp"

namespace bqjit {

class TuningStore {
public:
  /// `directory` empty: no records (nothing is read, storing is an error).
  /// `codeIdentity` names the kernel code the shapes were measured with (the
  /// template and the compiler): a record of other code is another file.
  TuningStore(std::string directory, std::string codeIdentity, Config config);

  /// The tuned shape of a validated spec without a shape, for one regime;
  /// none when no record exists or the record is unreadable or does not fit
  /// the spec (one warning). Read from disk once per spec and regime.
  std::optional<LaunchShape> find(const KernelSpec& spec, Regime regime,
                                  const DeviceProfile& device) const;

  /// Stores a shape for a spec (its own shape ignored) and regime: the file
  /// is replaced whole, and this process sees it at once.
  llvm::Error store(const KernelSpec& spec, const LaunchShape& shape, Regime regime,
                    const DeviceProfile& device);
  /// store() for the default device of the spec's architecture
  /// (DeviceProfile::forArch), which planning without a device uses.
  llvm::Error store(const KernelSpec& spec, const LaunchShape& shape, Regime regime);

  /// Forgets what was read, so that records another process stored are seen.
  void reload();

  /// Counts store() and reload() calls: an answer derived from the records
  /// is current while this has not changed.
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

  /// The file of a spec's record for a regime and device model ("" without a
  /// directory).
  std::string path(const KernelSpec& spec, Regime regime, const DeviceProfile& device) const;
  const std::string& directory() const { return directory_; }

private:
  std::string directory_;
  std::string codeIdentity_;
  Config config_;
  mutable std::mutex mutex_;
  mutable std::map<std::string, std::optional<LaunchShape>> read_; ///< by path
  std::atomic<uint64_t> generation_{0};
};

} // namespace bqjit
