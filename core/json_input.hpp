// Bounded JSON input: every JSON text bqjit reads from outside (a spec given
// to the C API, a prewarm manifest, a cache entry's metadata, a tuning
// record) goes through parseJsonInput, which checks its size first and then
// parses it without ever nesting deeper than a fixed limit, so that no input
// can exhaust the stack of the process bqjit is linked into. Objects that
// repeat a key are rejected (otherwise the last one would silently win).
//
// And the one way to show a JSON value or an outside text in a message:
// cut to a few hundred characters, never recursing past the depth limit.
#pragma once

#include <cstddef>
#include <string>

#include <llvm/ADT/StringRef.h>
#include <llvm/Support/Error.h>
#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"

namespace bqjit {

/// How much of one JSON input bqjit accepts.
struct JsonLimits {
  size_t maxBytes; ///< the text's size
  int maxDepth;    ///< nesting of arrays and objects; the outermost one is level 1
};

/// No JSON input of bqjit nests arrays and objects deeper than this (a spec
/// needs 2 levels, a manifest 3, metadata 3).
inline constexpr int kJsonMaxDepth = 64;
/// A spec (the C API, the Python binding): a few hundred bytes in practice.
inline constexpr JsonLimits kSpecJsonLimits{64 * 1024, kJsonMaxDepth};
/// A prewarm manifest: thousands of specs of about 100 bytes each fit many times over.
inline constexpr JsonLimits kManifestJsonLimits{16 * 1024 * 1024, kJsonMaxDepth};
/// A cache entry's meta.json: about 2 KiB, plus the NVRTC log (usually empty).
inline constexpr JsonLimits kMetadataJsonLimits{4 * 1024 * 1024, kJsonMaxDepth};
/// A tuning record (cache/tuned/*.json): one spec.
inline constexpr JsonLimits kTuningRecordJsonLimits{64 * 1024, kJsonMaxDepth};

/// Parses `text` as one JSON value within `limits`. Errors carry `code` and
/// start with `what` (e.g. "spec_json" or "manifest 'm.json'"), then say the
/// rule the text breaks: its size, "not valid JSON" with the line, column and
/// byte, the nesting depth with the byte and the place, or a repeated key
/// with the place (e.g. "specs[2]").
llvm::Expected<nlohmann::json> parseJsonInput(llvm::StringRef text, const JsonLimits& limits,
                                              llvm::StringRef what,
                                              ErrorCode code = ErrorCode::InvalidArgument);

/// Characters of a value or text that a message shows before cutting it.
inline constexpr size_t kShownChars = 200;

/// `text` for a message: invalid UTF-8 replaced by U+FFFD, and when longer
/// than `maxChars`, its start followed by "... (N bytes)".
std::string shownText(llvm::StringRef text, size_t maxChars = kShownChars);

/// A JSON value for a message, cut like shownText. A value that nests deeper
/// than kJsonMaxDepth (one built in memory by a C++ caller; parsed input
/// never does) is not printed: only its type and that it is too deep.
std::string shownJson(const nlohmann::json& value, size_t maxChars = kShownChars);

/// The JSON text bqjit writes (files, reports, the C API's answers), with
/// `indent` as nlohmann::json::dump takes it. A string that holds invalid
/// UTF-8 (a path, or a name from the environment, is any bytes on Linux) is
/// written with U+FFFD in place of those bytes, where a plain dump() throws.
std::string jsonText(const nlohmann::json& value, int indent = -1);

/// How deeply `value` nests arrays and objects (0 for a scalar), counted
/// without recursion and without looking further than `stopAbove` levels
/// (the result is then stopAbove + 1).
int jsonDepth(const nlohmann::json& value, int stopAbove = kJsonMaxDepth);

} // namespace bqjit
