// The on-disk form of one cache entry: kernel.cubin, kernel.ptx and
// meta.json. The metadata carries checksums of both files and of itself.
#pragma once

#include <string>

#include <llvm/Support/Error.h>
#include <nlohmann/json.hpp>

#include "bqjit/compiled_kernel.hpp"

namespace bqjit {

inline constexpr const char* kCubinFile = "kernel.cubin";
inline constexpr const char* kPtxFile = "kernel.ptx";
inline constexpr const char* kMetaFile = "meta.json";

/// Metadata of a compiled kernel (everything but the PTX and cubin bytes),
/// with "meta_xxh3", a checksum over the rest of the object.
nlohmann::json makeMetadata(const CompiledKernel& kernel, const std::string& keyInputs);

/// Parses and checks metadata text read from disk: JSON syntax, the self
/// checksum, every field's type, the format version. Fills all of `out` but
/// ptx and cubin. Errors name the field and say what is wrong.
llvm::Error parseMetadata(const std::string& text, CompiledKernel& out);

/// Checks the cubin and PTX bytes against the sizes and checksums in `meta`.
llvm::Error checkPayload(const nlohmann::json& meta, const std::vector<char>& cubin,
                         const std::string& ptx);

} // namespace bqjit
