// The C API's exception barrier: nothing a C caller calls may unwind into it.
#pragma once

#include <exception>
#include <new>
#include <string>

#include "bqjit/bqjit.h"
#include "bqjit/error.hpp"

namespace bqjit {

/// Runs the body of the C API entry point `entry` and returns its status. An
/// exception thrown anywhere below it (an allocation, a library bqjit calls)
/// becomes BQJIT_ERROR_INTERNAL, its message recorded by `fail(code, text)`
/// as "<entry>: unexpected failure: <what>", instead of unwinding into a C
/// caller's frames (undefined; in practice the host aborts). Where recording
/// the message throws too, the status is returned all the same.
template <class Body, class Fail>
bqjit_status guardedCall(const char* entry, Body&& body, Fail&& fail) noexcept {
  auto internal = [&](const char* what) noexcept {
    try {
      return fail(ErrorCode::Internal, std::string(entry) + ": unexpected failure: " + what);
    } catch (...) {
      return BQJIT_ERROR_INTERNAL;
    }
  };
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return internal("out of host memory");
  } catch (const std::exception& e) {
    return internal(e.what());
  } catch (...) {
    return internal("an exception that is not a std::exception");
  }
}

} // namespace bqjit
