// The prewarm manifest: which specs to compile, for which architectures.
//
//   {
//     "comment":  "optional free text",
//     "archs":    ["sm_90", "sm_100"],           // each spec is compiled for each arch
//     "devices":  ["H100 80GB HBM3", "H200"],    // and for each GPU model's launch shapes
//     "defaults": {"group_size": 128, ...},      // optional, merged under every spec
//     "specs": [
//       {"hidden": 7168},                        // spec JSON (KernelSpec::fromJson)
//       {"hidden": 2048, "scale_layout": "col_tma", "ue8m0": true},
//       {"hidden": 4096, "arch": "sm_90a", "comment": "pinned to one arch"}
//     ]
//   }
//
// A spec that names its own "arch" is compiled for that arch only; the others
// for every entry of "archs" (which `--arch` on the command line replaces).
// An entry of "archs" plans launch shapes for that architecture's default
// device; an entry of "devices" (a model of DeviceProfile's table, as the
// driver names it, "NVIDIA " optional) plans them for that model, on its
// architecture. A pinned spec takes the devices of its architecture.
// Unknown fields, at the top level or in a spec, are errors.
#pragma once

#include <string>
#include <vector>

#include <llvm/Support/Error.h>

#include "bqjit/kernel_spec.hpp"
#include "planner/device_profile.hpp"

namespace bqjit::cli {

/// One spec to compile, with the device whose launch shapes it takes.
struct ManifestItem {
  KernelSpec spec;
  DeviceProfile device; ///< a known model, or the arch's default (empty model)
  /// The spec's label, with " for <model>" where a model was named.
  std::string label() const;
};

/// One manifest, expanded to the distinct spec x arch (x device) items.
struct Manifest {
  std::string path;
  std::vector<ManifestItem> items; ///< in manifest order, each once
  int duplicates = 0;              ///< spec x arch items dropped as repeats
};

/// Reads and validates a manifest file. `archOverride`, when not empty,
/// replaces the manifest's "archs". Errors (InvalidArgument or InvalidSpec)
/// name the path and, for a bad spec, "specs[i]" and the field.
llvm::Expected<Manifest> loadManifest(const std::string& path,
                                      const std::vector<std::string>& archOverride = {});

/// The same from text already read (`path` is used in messages only).
llvm::Expected<Manifest> parseManifest(const std::string& text, const std::string& path,
                                       const std::vector<std::string>& archOverride = {});

} // namespace bqjit::cli
