// A compiled kernel without NVRTC, for the layers that store bytes and do
// not look inside them (the disk cache, the remote tier, bundles).
#pragma once

#include <string>

#include "bqjit/compiled_kernel.hpp"
#include "jit/cache_key.hpp"
#include "planner/launch_heuristic.hpp"

namespace bqjit::test {

/// A compiled kernel without NVRTC: the disk layer stores bytes, it does not
/// look inside them. `hidden` makes specs (and keys) distinct.
inline CompiledKernel fakeKernel(int hidden, size_t cubinBytes = 4096) {
  CompiledKernel k;
  k.spec.hidden = hidden;
  k.spec.groupSize = 128;
  k.spec.shape = chooseLaunchShape(k.spec);
  KeyInputs in;
  in.canonicalSpec = k.spec.canonical();
  in.templateSource = TextDigest::of("test template");
  in.options = {"--gpu-architecture=sm_90"};
  in.nvrtcIdentity = "test";
  in.arch = k.spec.arch;
  k.key = computeCacheKey(in);
  k.loweredName = "_Z6kernel" + std::to_string(hidden);
  k.ptx = "// PTX of " + k.spec.canonical() + "\n.version 9.0\n.target sm_90\n";
  k.cubin.resize(cubinBytes);
  k.cubin[0] = 0x7f;
  k.cubin[1] = 'E';
  k.cubin[2] = 'L';
  k.cubin[3] = 'F';
  for (size_t i = 4; i < k.cubin.size(); ++i)
    k.cubin[i] = static_cast<char>((i * 131 + static_cast<size_t>(hidden)) & 0xff);
  k.resources.registers = 40;
  k.resources.barriers = 1;
  k.options = in.options;
  k.nvrtcVersion = "13.0 (V13.0.88 CL-36424714)";
  k.compileMs = 123.25;
  k.log = "ptxas info    : Used 40 registers";
  return k;
}

inline std::string keyInputsOf(const CompiledKernel& k) {
  return "{\"key inputs of\":\"" + k.key + "\"}";
}

} // namespace bqjit::test
