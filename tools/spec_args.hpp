// SPEC-FIELDS: the `key=value` tokens that name a kernel on the command line.
#pragma once

#include <string>
#include <vector>

#include <llvm/Support/Error.h>

#include "bqjit/kernel_spec.hpp"

namespace bqjit::cli {

/// Help text listing the field names and their aliases.
extern const char* const kSpecFieldsHelp;

/// A spec parsed from the command line.
struct SpecArgs {
  KernelSpec spec;
  /// Whether an architecture was given (arch=... or --arch); when not, the
  /// GPU commands ask the device for it.
  bool archGiven = false;
  /// Whether a launch-shape field (tpg, vec, gpb) was given.
  bool shapeGiven = false;
};

/// Parses `key=value` tokens with KernelSpec::fromFields. `archOverride`,
/// when not empty, sets (or replaces) the arch. A token without '=', an
/// empty key or a field given twice is an InvalidArgument error naming the
/// token; a bad field or value is fromFields' InvalidSpec error.
llvm::Expected<SpecArgs> parseSpecArgs(const std::vector<std::string>& tokens,
                                       const std::string& archOverride = "");

} // namespace bqjit::cli
