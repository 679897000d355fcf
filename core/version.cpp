#include "core/version.hpp"

#ifndef BQJIT_VERSION
#error "BQJIT_VERSION must be defined by the build (core/CMakeLists.txt, from VERSION)"
#endif

namespace bqjit {

const char* versionString() {
  return BQJIT_VERSION;
}

} // namespace bqjit
