// What a compile produces: PTX, cubin and the resources ptxas reported.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bqjit/kernel_spec.hpp"

namespace bqjit {

/// Per-kernel resource use as reported by ptxas for the cubin.
struct ResourceReport {
  int registers = 0;       ///< registers per thread
  int spillStoreBytes = 0; ///< bytes of spill stores (-1: unknown, no ptxas report)
  int spillLoadBytes = 0;  ///< bytes of spill loads (-1: unknown)
  int stackFrameBytes = 0; ///< per-thread stack frame (local memory)
  int sharedBytes = 0;     ///< static shared memory per block
  int barriers = 0;        ///< named barriers used (-1: unknown)

  /// Whether the kernel keeps values in local memory (spill stores or a
  /// stack frame): where a promise of blocks an SM left ptxas too few
  /// registers.
  bool spills() const { return spillStoreBytes > 0 || stackFrameBytes > 0; }
  nlohmann::json toJson() const;
  static ResourceReport fromJson(const nlohmann::json& j);
  bool operator==(const ResourceReport& o) const { return toJson() == o.toJson(); }
};

/// One compiled specialization. `spec` always has its launch shape resolved.
struct CompiledKernel {
  KernelSpec spec;
  std::string key;         ///< cache key (hex)
  std::string loweredName; ///< mangled name of the __global__ function
  std::string ptx;
  std::vector<char> cubin;
  ResourceReport resources;
  std::vector<std::string> options; ///< NVRTC options used
  std::string nvrtcVersion;         ///< e.g. "13.0 (V13.0.88, CL-36424714)"
  double compileMs = 0.0;           ///< wall time of the NVRTC compile
  std::string log;                  ///< NVRTC log (ptxas info included)
};

} // namespace bqjit
