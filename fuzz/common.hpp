// Helpers shared by the fuzz targets: an invariant check that aborts (so
// that libFuzzer records the input) and error consumption.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include <llvm/Support/Error.h>

#include "bqjit/error.hpp"

#define BQJIT_FUZZ_CHECK(cond, what)                                                               \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      std::fprintf(stderr, "fuzz invariant broken: %s (%s:%d): %s\n", #cond, __FILE__, __LINE__,   \
                   std::string(what).c_str());                                                     \
      std::abort();                                                                                \
    }                                                                                              \
  } while (0)

namespace bqjit::fuzz {

/// Consumes an error, checking that it carries a message (errors always say why).
inline void expectMessage(llvm::Error err) {
  std::string message;
  consumeError(std::move(err), &message);
  BQJIT_FUZZ_CHECK(!message.empty(), "an error without a message");
}

} // namespace bqjit::fuzz
