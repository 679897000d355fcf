#include "bqjit/error.hpp"

namespace bqjit {

char BqjitError::ID = 0;

const char* errorCodeName(ErrorCode code) {
  switch (code) {
  case ErrorCode::InvalidSpec:
    return "invalid-spec";
  case ErrorCode::InvalidArgument:
    return "invalid-argument";
  case ErrorCode::CompileFailed:
    return "compile-failed";
  case ErrorCode::CacheError:
    return "cache-error";
  case ErrorCode::DriverError:
    return "driver-error";
  case ErrorCode::NoDriver:
    return "no-driver";
  case ErrorCode::ArchMismatch:
    return "arch-mismatch";
  case ErrorCode::NotInCache:
    return "not-in-cache";
  case ErrorCode::Internal:
    return "internal";
  }
  return "unknown";
}

void BqjitError::log(llvm::raw_ostream& os) const {
  os << errorCodeName(code_) << ": " << message_;
}

std::error_code BqjitError::convertToErrorCode() const {
  return std::error_code(static_cast<int>(code_), std::generic_category());
}

llvm::Error makeError(ErrorCode code, std::string message) {
  return llvm::make_error<BqjitError>(code, std::move(message));
}

ErrorCode consumeError(llvm::Error err, std::string* message) {
  ErrorCode code = ErrorCode::Internal;
  std::string text;
  llvm::handleAllErrors(
      std::move(err),
      [&](const BqjitError& e) {
        code = e.code();
        text += (text.empty() ? "" : "\n") + e.text();
      },
      [&](const llvm::ErrorInfoBase& e) { text += (text.empty() ? "" : "\n") + e.message(); });
  if (message)
    *message = text;
  return code;
}

std::string consumeToString(llvm::Error err) {
  std::string message;
  ErrorCode code = consumeError(std::move(err), &message);
  return std::string(errorCodeName(code)) + ": " + message;
}

} // namespace bqjit
