// RAII owner of one nvrtcProgram, with value-or-error accessors.
#pragma once

#include <cstdint>
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

/// NVRTC registers the teardown it runs at process exit with the C library's
/// exit handlers while it compiles: about 3300 handlers in a process's first
/// compile, more in the first compile for each further architecture (17 for
/// sm_100a after sm_90). A compile still running on another thread when they
/// run crashes the process (tests/test_compile_worker.cpp). An exit handler
/// that must run before them (one that waits for the compiles in flight) is
/// registered again whenever NVRTC may have registered more since: exit
/// handlers run in the reverse order of their registration.
///
/// The number of compiles that have returned in this process.
uint64_t nvrtcCompilesReturned();

/// Makes sure NVRTC's first teardown is registered: nothing to do once a
/// compile has returned in this process; otherwise a compile of an empty
/// program (about 40 ms on a cold process, most of it NVRTC loading what the
/// next compile needs anyway).
llvm::Error ensureNvrtcExitTeardownRegistered();

/// "NVRTC_ERROR_COMPILATION (6)" style text for a result code.
std::string nvrtcResultText(nvrtcResult result);

} // namespace bqjit
