// Arch: a GPU architecture target as NVRTC and the driver name it.
#pragma once

#include <string>

#include <llvm/ADT/StringRef.h>
#include <llvm/Support/Error.h>

namespace bqjit {

/// A real architecture: "sm_<major><minor>" with an optional
/// architecture-specific ('a') or family ('f') suffix: sm_80, sm_90a, sm_100f.
/// The one parser of architecture names in bqjit.
struct Arch {
  int number = 0;  ///< 10 x major + minor, e.g. 90, 100, 120
  char suffix = 0; ///< 0, 'a' or 'f'

  /// The oldest architecture bqjit compiles for.
  static constexpr int kMinNumber = 80;

  /// Parses "sm_90", "sm_90a", "sm_100f". The error names `field` (e.g.
  /// "arch"), the value and the rule; numbers under kMinNumber are refused.
  static llvm::Expected<Arch> parse(llvm::StringRef text, llvm::StringRef field = "arch");
  /// The device's architecture for a compute capability, e.g. (9, 0) -> sm_90.
  static Arch fromComputeCapability(int major, int minor) { return Arch{major * 10 + minor, 0}; }

  int major() const { return number / 10; }
  int minor() const { return number % 10; }
  /// "sm_90a".
  std::string str() const;
  /// Whether a cubin built for this target loads on a device of `device`'s
  /// compute capability (same major and minor; suffixes are targets of the
  /// same device).
  bool runsOn(const Arch& device) const { return number == device.number; }

  bool operator==(const Arch& o) const { return number == o.number && suffix == o.suffix; }
  bool operator!=(const Arch& o) const { return !(*this == o); }
};

} // namespace bqjit
