// Identity of the NVRTC in use: version and build, part of every cache key.
#pragma once

#include <string>

#include <llvm/Support/Error.h>

namespace bqjit {

struct NvrtcIdentity {
  int major = 0;
  int minor = 0;
  std::string build; ///< e.g. "V13.0.88 CL-36424714", read from NVRTC's own PTX header

  /// "13.0 (V13.0.88 CL-36424714)"
  std::string toString() const;
};

/// Asks NVRTC for its version and compiles an empty program once to read the
/// build identifiers it stamps into PTX.
llvm::Expected<NvrtcIdentity> queryNvrtcIdentity();

/// Architectures NVRTC can target, as numbers (80, 90, 100, ...).
std::vector<int> nvrtcSupportedArchs();

} // namespace bqjit
