// bqjit's version: the top-level VERSION file, compiled into core/version.cpp.
#pragma once

namespace bqjit {

/// "MAJOR.MINOR.PATCH", the version of this build (the C API's bqjit_version()).
const char* versionString();

} // namespace bqjit
