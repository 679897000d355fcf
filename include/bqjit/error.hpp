// The one error type of bqjit: an llvm::ErrorInfo with a code (mapped to
// exit statuses and C API return codes) and a message that carries its
// context (spec, architecture, options, NVRTC log, driver error name).
#pragma once

#include <string>
#include <system_error>

#include <llvm/Support/Error.h>

namespace bqjit {

/// What kind of failure an error is. Stable numbers: the C API returns them.
enum class ErrorCode : int {
  InvalidSpec = 1,     ///< a KernelSpec field breaks a rule
  InvalidArgument = 2, ///< a run-time argument (pointer, T, stream, file) is bad
  CompileFailed = 3,   ///< NVRTC rejected the generated source
  CacheError = 4,      ///< the disk cache could not be read or written
  DriverError = 5,     ///< a CUDA driver call failed
  NoDriver = 6,        ///< libcuda.so.1 is missing or has no device
  ArchMismatch = 7,    ///< the spec's architecture differs from the device's
  NotInCache = 8,      ///< strict mode (BQJIT_NO_COMPILE) and the kernel is not cached
  Internal = 9,        ///< a broken invariant inside bqjit
};

/// Short stable name of a code, e.g. "invalid-spec".
const char* errorCodeName(ErrorCode code);

class BqjitError : public llvm::ErrorInfo<BqjitError> {
public:
  static char ID;
  BqjitError(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  ErrorCode code() const { return code_; }
  const std::string& text() const { return message_; }

  void log(llvm::raw_ostream& os) const override;
  std::error_code convertToErrorCode() const override;

private:
  ErrorCode code_;
  std::string message_;
};

/// Builds an llvm::Error of bqjit's type.
llvm::Error makeError(ErrorCode code, std::string message);

/// Consumes an error and returns "code: message" text (code name first).
std::string consumeToString(llvm::Error err);

/// Consumes an error, returning its code and writing its message.
ErrorCode consumeError(llvm::Error err, std::string* message);

} // namespace bqjit
