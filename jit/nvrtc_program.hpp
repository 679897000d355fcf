// RAII owner of one nvrtcProgram, with value-or-error accessors.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <llvm/Support/Error.h>
#include <nvrtc.h>

namespace bqjit {

class NvrtcProgram {
public:
  using Header = std::pair<std::string, std::string>; ///< include name, text

  static llvm::Expected<NvrtcProgram> create(const std::string& source, const std::string& name,
                                             const std::vector<Header>& headers,
                                             const std::vector<std::string>& nameExpressions);
  NvrtcProgram(NvrtcProgram&& other) noexcept : program_(std::exchange(other.program_, nullptr)) {}
  NvrtcProgram& operator=(NvrtcProgram&& other) noexcept;
  NvrtcProgram(const NvrtcProgram&) = delete;
  NvrtcProgram& operator=(const NvrtcProgram&) = delete;
  ~NvrtcProgram();

  /// Compiles; on failure the error holds the options and the full log.
  llvm::Error compile(const std::vector<std::string>& options);
  std::string log() const;
  llvm::Expected<std::string> ptx() const;
  /// The cubin; an error when the options named a virtual architecture.
  llvm::Expected<std::vector<char>> cubin() const;
  llvm::Expected<std::string> loweredName(const std::string& nameExpression) const;

private:
  explicit NvrtcProgram(nvrtcProgram p) : program_(p) {}
  nvrtcProgram program_ = nullptr;
};

/// Makes sure NVRTC has registered the teardown it runs at process exit.
/// NVRTC registers it with the C library's exit handlers during the first
/// compile of a process, and a compile still running on another thread when
/// it runs crashes the process (tests/test_compile_worker.cpp). An exit
/// handler that must run before it (one that waits for the compiles in
/// flight) is registered after this returns: exit handlers run in the reverse
/// order of their registration. Nothing to do once a compile has completed in
/// this process; otherwise a compile of an empty program (about 40 ms on a
/// cold process, most of it NVRTC loading what the next compile needs anyway).
llvm::Error ensureNvrtcExitTeardownRegistered();

/// "NVRTC_ERROR_COMPILATION (6)" style text for a result code.
std::string nvrtcResultText(nvrtcResult result);

} // namespace bqjit
