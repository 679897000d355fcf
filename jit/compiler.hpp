// The compiler: a resolved spec's identity (what its cache key hashes) and,
// from that identity, PTX + cubin + resource report.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <llvm/Support/Error.h>

#include "bqjit/compiled_kernel.hpp"
#include "bqjit/kernel_spec.hpp"
#include "jit/cache_key.hpp"
#include "jit/source.hpp"
#include "jit/toolchain.hpp"

namespace bqjit {

/// Everything that makes one kernel, computed once per resolved spec: the
/// generated source, the options and the cache key over them. Made by
/// Compiler::identify and passed through lookup, compile and publish.
struct KernelIdentity {
  KernelSpec spec;                  ///< validated, launch shape and occupancy resolved
  GeneratedSource source;           ///< the translation unit NVRTC compiles
  std::vector<std::string> options; ///< NVRTC options, in order
  std::string keyText;              ///< KeyInputs::canonical(), kept in the entry's metadata
  std::string key;                  ///< hash of keyText
};

class Compiler {
public:
  /// Queries NVRTC's identity once; every key this compiler makes includes it.
  static llvm::Expected<Compiler> create();

  const NvrtcIdentity& identity() const { return identity_; }

  /// Names the code kernels are made from (the template and this NVRTC), for
  /// records that hold for one kernel code only (tuned shapes).
  std::string codeIdentity() const;

  /// The NVRTC options for a spec, in canonical order.
  static std::vector<std::string> options(const KernelSpec& spec);

  /// For a plain architecture newer than every one this NVRTC targets (a GPU
  /// released after it), the newest virtual architecture it supports: the
  /// kernel is then PTX for that target, which the device's driver compiles
  /// when it loads it. None otherwise (a suffixed target is never emulated).
  static std::optional<int> ptxFallback(const KernelSpec& spec);

  /// The identity of a spec that the planner validated and resolved (launch
  /// shape with occupancy set); an Internal error if it is not resolved.
  llvm::Expected<KernelIdentity> identify(const KernelSpec& resolved) const;

  /// Compiles a kernel. On failure the error carries the spec, the options
  /// and NVRTC's full log.
  llvm::Expected<CompiledKernel> compile(const KernelIdentity& kernel) const;

private:
  explicit Compiler(NvrtcIdentity id) : identity_(std::move(id)) {}
  NvrtcIdentity identity_;
};

} // namespace bqjit
