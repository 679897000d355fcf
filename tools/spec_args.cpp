#include "tools/spec_args.hpp"

#include <map>

#include "bqjit/error.hpp"

namespace bqjit::cli {

const char* const kSpecFieldsHelp =
    "SPEC-FIELDS are key=value tokens: hidden|H (required), group_size|G|group (128), "
    "in_dtype|in (bf16|fp16|fp32; bf16), out_dtype|out (fp8_e4m3|fp8_e5m2|int8|fp4_e2m1; "
    "fp8_e4m3; fp4_e2m1 is NVFP4 at G=16 or MXFP4 at G=32 with ue8m0), "
    "scale_layout|layout (row|col|col_tma|ue8m0_packed|bytes, alias e8m0|swizzled_128x4; row), "
    "ue8m0, "
    "scale_ub, masked (true|false|on|off|1|0; false), activation|act "
    "(silu|swiglu|gelu_tanh|gelu; silu), alpha, beta, limit (swiglu only; numbers, 1, 0, "
    "no clamp), gate_up (split|interleaved; split), scale_rounding|rounding (ceil|floor; ceil; "
    "floor needs ue8m0 and a floating-point output), min_scale (the scale's floor, a number; "
    "MIN_SCALE of the output type; not with floor), arch (e.g. sm_90), and the launch shape "
    "threads_per_group|tpg, vec_width|vec, groups_per_block|gpb (all three or none). "
    "Example: H=7168 G=128 in=bf16 out=fp8_e4m3 layout=col_tma ue8m0=1; gpt-oss MXFP8: "
    "H=2880 G=32 act=swiglu alpha=1.702 beta=1 limit=7 gate_up=interleaved layout=bytes "
    "ue8m0=1 rounding=floor; NVFP4 for Blackwell: H=7168 G=16 out=fp4_e2m1 layout=swizzled_128x4";

llvm::Expected<SpecArgs> parseSpecArgs(const std::vector<std::string>& tokens,
                                       const std::string& archOverride) {
  std::map<std::string, std::string> fields;
  std::map<std::string, std::string> seen; // canonical name -> token that set it
  for (const std::string& token : tokens) {
    const size_t eq = token.find('=');
    if (eq == std::string::npos)
      return makeError(ErrorCode::InvalidArgument,
                       "spec field '" + token + "' is not of the form key=value (e.g. H=7168)");
    const std::string key = token.substr(0, eq);
    if (key.empty())
      return makeError(ErrorCode::InvalidArgument,
                       "spec field '" + token + "' has an empty key (expected key=value)");
    const std::string name = canonicalFieldName(key);
    if (auto it = seen.find(name); it != seen.end())
      return makeError(ErrorCode::InvalidArgument, "spec field '" + token + "' sets " + name +
                                                       " again (already set by '" + it->second +
                                                       "')");
    seen[name] = token;
    fields[key] = token.substr(eq + 1);
  }
  SpecArgs out;
  out.archGiven = !archOverride.empty() || seen.count("arch");
  out.shapeGiven =
      seen.count("threads_per_group") || seen.count("vec_width") || seen.count("groups_per_block");
  if (!archOverride.empty())
    fields["arch"] = archOverride;
  auto spec = KernelSpec::fromFields(fields);
  if (!spec)
    return spec.takeError();
  out.spec = std::move(*spec);
  return out;
}

} // namespace bqjit::cli
