// The properties of a GPU model that launch shapes derive from, read from the
// driver on a GPU and from a table of known models where there is none (a
// build machine prewarming for a fleet).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <llvm/ADT/StringRef.h>

#include "bqjit/arch.hpp"

namespace bqjit {

/// One GPU model's properties, as the driver reports them.
struct DeviceProfile {
  /// The model as the driver names it, less a leading "NVIDIA ", e.g. "H200",
  /// "H100 80GB HBM3"; empty for an architecture's default profile.
  std::string model;
  Arch arch;
  int smCount = 0;
  int64_t memoryClockKHz = 0; ///< peak memory clock (CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
  int busWidthBits = 0;       ///< memory bus width
  int64_t l2Bytes = 0;
  int registersPerSm = 0;
  int maxThreadsPerSm = 0;

  /// Peak DRAM bandwidth, bytes a second: two transfers a memory clock
  /// across the bus.
  double peakBandwidth() const;
  /// Peak bandwidth per multiprocessor over the reference model's (the H100
  /// SXM, where the heuristic was first measured). Memory latency is about
  /// the same across these GPUs, so by Little's law the bytes each SM must
  /// keep in flight grow with this ratio.
  double inFlightScale() const;

  /// "H200" -> "H200", "H100 80GB HBM3" -> "H100_80GB_HBM3": the model in file
  /// names (tuning records); "arch-sm_90" for an architecture's default.
  std::string slug() const;

  /// The properties of a known model (the driver's name, with or without
  /// "NVIDIA "), or none.
  static std::optional<DeviceProfile> known(llvm::StringRef model);
  /// Every model in the table.
  static const std::vector<DeviceProfile>& knownModels();
  /// The table's model names, quoted and comma-separated, for messages.
  static std::string knownModelList();
  /// The profile planning uses for an architecture when the device is not
  /// known: the reference class (inFlightScale 1), today's H100 shapes.
  static DeviceProfile forArch(const Arch& arch);
  /// The reference model's profile (the H100 SXM), for planning without a device.
  static const DeviceProfile& reference();
  /// The model name for a driver's device name: "NVIDIA H200" -> "H200".
  static std::string modelName(llvm::StringRef driverName);

  bool operator==(const DeviceProfile& o) const;
  bool operator!=(const DeviceProfile& o) const { return !(*this == o); }
};

} // namespace bqjit
