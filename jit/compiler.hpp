// The compiler: a resolved KernelSpec in, PTX + cubin + resource report out.
#pragma once

#include <string>
#include <vector>

#include <llvm/Support/Error.h>

#include "bqjit/compiled_kernel.hpp"
#include "bqjit/kernel_spec.hpp"
#include "jit/cache_key.hpp"
#include "jit/toolchain.hpp"

namespace bqjit {

class Compiler {
public:
  /// Queries NVRTC's identity once; every key this compiler makes includes it.
  static llvm::Expected<Compiler> create();

  const NvrtcIdentity& identity() const { return identity_; }

  /// The NVRTC options for a spec, in canonical order.
  static std::vector<std::string> options(const KernelSpec& spec);

  /// Everything the cache key of a spec hashes; the one place it is assembled.
  KeyInputs keyInputs(const KernelSpec& spec) const;

  /// The cache key of a resolved spec (launch shape set).
  std::string cacheKey(const KernelSpec& resolved) const;

  /// Compiles a validated spec with a resolved launch shape. On failure the
  /// error carries the spec, the options and NVRTC's full log.
  llvm::Expected<CompiledKernel> compile(const KernelSpec& resolved) const;

private:
  explicit Compiler(NvrtcIdentity id) : identity_(std::move(id)) {}
  NvrtcIdentity identity_;
};

} // namespace bqjit
