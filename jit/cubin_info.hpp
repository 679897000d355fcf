// Reads a kernel's register count and stack frame from the cubin itself
// (the EIATTR records of its .nv.info section), so that the resource report
// does not depend on ptxas's verbose log being present or formatted as
// expected.
#pragma once

#include <string>
#include <vector>

#include <llvm/Support/Error.h>

namespace bqjit {

struct CubinKernelInfo {
  int registers = -1;   ///< EIATTR_REGCOUNT
  int frameBytes = -1;  ///< EIATTR_FRAME_SIZE
  int sharedBytes = -1; ///< size of .nv.shared.<kernel>, the static shared memory
};

/// Finds `loweredName` in the cubin's symbol table and reads its attributes.
/// Every offset is bounds-checked: a malformed cubin is an error, never a crash.
llvm::Expected<CubinKernelInfo> readCubinKernelInfo(const std::vector<char>& cubin,
                                                    const std::string& loweredName);

} // namespace bqjit
