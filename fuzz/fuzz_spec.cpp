// Fuzzes the two ways a KernelSpec enters bqjit from outside: JSON (the C
// API, the Python binding, manifests, cache metadata) and the command line's
// key=value tokens. The bytes are parsed as JSON by the bounded parser
// (jit/json_input) and, without its limits, by nlohmann's, which must agree
// where the bounded one accepts; the plain value (of any depth) is given to
// KernelSpec::fromJson; then the bytes are split on whitespace into tokens
// for KernelSpec::fromFields and for the CLI's parseSpecArgs.
//
// Beyond "no crash, no exception, no sanitizer report", every accepted spec
// must round-trip through its canonical JSON, and the launch heuristic must
// give it a valid shape for every vector-width cap.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bqjit/kernel_spec.hpp"
#include "fuzz/common.hpp"
#include "core/json_input.hpp"
#include "planner/launch_heuristic.hpp"
#include "tools/spec_args.hpp"

namespace {

using bqjit::KernelSpec;

void checkAccepted(const KernelSpec& spec) {
  const std::string canonical = spec.canonical();
  auto again = KernelSpec::fromJson(nlohmann::json::parse(canonical));
  if (!again) {
    std::string message;
    bqjit::consumeError(again.takeError(), &message);
    BQJIT_FUZZ_CHECK(false, "canonical form rejected: " + canonical + ": " + message);
  }
  BQJIT_FUZZ_CHECK(again->canonical() == canonical, "canonical form changed: " + canonical);
  BQJIT_FUZZ_CHECK(!spec.label().empty(), canonical);
  BQJIT_FUZZ_CHECK(spec.numGroups() >= 1, canonical);

  // The heuristic's shapes are valid for every spec that validates, whatever
  // the cap (the C API passes any max_vec_width >= 1).
  for (int cap : {1, 2, 3, 4, 8, 16, 17, 1 << 30}) {
    for (bqjit::Regime regime : bqjit::kRegimes) {
      const bqjit::LaunchShape s = bqjit::chooseLaunchShape(spec, regime, cap);
      BQJIT_FUZZ_CHECK(s.vecWidth <= cap || s.vecWidth == 1, canonical);
      if (auto err = bqjit::validateShape(spec, s))
        BQJIT_FUZZ_CHECK(false, canonical + " cap " + std::to_string(cap) + ": " +
                                    bqjit::consumeToString(std::move(err)));
    }
  }
  KernelSpec resolved = spec;
  resolved.shape = resolved.shape ? bqjit::withDerivedOccupancy(spec, *spec.shape)
                                  : bqjit::chooseLaunchShape(spec);
  if (auto err = resolved.validate())
    BQJIT_FUZZ_CHECK(false, "resolved spec invalid: " + bqjit::consumeToString(std::move(err)));
}

void fromJson(const std::string& text) {
  // As bqjit's callers read a spec: bounded in size and depth, a repeated
  // key refused. What it accepts, nlohmann's plain parser reads alike.
  auto bounded = bqjit::parseJsonInput(text, bqjit::kSpecJsonLimits, "fuzz spec",
                                       bqjit::ErrorCode::InvalidSpec);
  // The plain parse (iterative in nlohmann 3.11) may be any depth:
  // KernelSpec::fromJson is public, and a C++ caller may hand it such a value.
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!bounded)
    bqjit::fuzz::expectMessage(bounded.takeError());
  else
    BQJIT_FUZZ_CHECK(*bounded == j, "the bounded parser read the text differently");
  if (j.is_discarded())
    return;
  auto spec = KernelSpec::fromJson(j);
  if (!spec)
    return bqjit::fuzz::expectMessage(spec.takeError());
  checkAccepted(*spec);
}

void fromTokens(const std::string& text) {
  std::vector<std::string> tokens;
  std::map<std::string, std::string> fields;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t'))
      ++i;
    size_t end = i;
    while (end < text.size() && text[end] != ' ' && text[end] != '\n' && text[end] != '\t')
      ++end;
    if (end > i) {
      std::string token = text.substr(i, end - i);
      const size_t eq = token.find('=');
      if (eq != std::string::npos)
        fields[token.substr(0, eq)] = token.substr(eq + 1);
      tokens.push_back(std::move(token));
    }
    i = end;
  }
  auto spec = KernelSpec::fromFields(fields);
  if (spec)
    checkAccepted(*spec);
  else
    bqjit::fuzz::expectMessage(spec.takeError());

  auto args = bqjit::cli::parseSpecArgs(tokens);
  if (args)
    checkAccepted(args->spec);
  else
    bqjit::fuzz::expectMessage(args.takeError());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fromJson(text);
  fromTokens(text);
  return 0;
}
