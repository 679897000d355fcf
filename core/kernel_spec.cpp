#include "bqjit/kernel_spec.hpp"

#include <algorithm>
#include <cctype>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "bqjit/arch.hpp"
#include "bqjit/error.hpp"
#include "core/json_input.hpp"

namespace bqjit {

namespace {

// `value` is already as a message shows it (quoted(), shown() or a number);
// the field is cut, as an unknown key may be anything.
llvm::Error specError(const std::string& field, const std::string& value, const std::string& rule) {
  return makeError(ErrorCode::InvalidSpec,
                   "invalid spec field '" + shownText(field) + "' = " + value + ": " + rule);
}

// A text value in quotes for a message, cut to a few hundred bytes.
std::string quoted(const std::string& text) {
  return "'" + shownText(text) + "'";
}

// A JSON value as text for an error message: cut, never recursing deeper
// than kJsonMaxDepth (fromJson is public: a C++ caller may hand it a value
// nested a million levels deep), invalid UTF-8 (strings from the command
// line) shown as U+FFFD.
std::string shown(const nlohmann::json& v) {
  return shownJson(v);
}

bool isPowerOfTwo(int v) {
  return v > 0 && (v & (v - 1)) == 0;
}

// 2^ceil(log2(v)) of a positive normal fp32, exactly (as the kernel rounds
// power-of-two scales), at most 2^127.
float pow2CeilCapped(float v) {
  int e = 0;
  const float m = std::frexp(v, &e); // v = m * 2^e, 0.5 <= m < 1
  const int ceilLog2 = m == 0.5f ? e - 1 : e;
  return ceilLog2 >= 127 ? 0x1p127f : std::ldexp(1.0f, ceilLog2);
}

// A number the message shows as the fp32 it was rounded to.
std::string floatText(float v) {
  return shortestFloatText(v);
}

} // namespace

int dtypeBytes(InDtype dtype) {
  switch (dtype) {
  case InDtype::BF16:
  case InDtype::FP16:
    return 2;
  case InDtype::FP32:
    return 4;
  }
  return 0;
}

const char* toString(InDtype dtype) {
  switch (dtype) {
  case InDtype::BF16:
    return "bf16";
  case InDtype::FP16:
    return "fp16";
  case InDtype::FP32:
    return "fp32";
  }
  return "?";
}

const char* toString(OutDtype dtype) {
  switch (dtype) {
  case OutDtype::FP8E4M3:
    return "fp8_e4m3";
  case OutDtype::FP8E5M2:
    return "fp8_e5m2";
  case OutDtype::INT8:
    return "int8";
  case OutDtype::FP4E2M1:
    return "fp4_e2m1";
  }
  return "?";
}

const char* toString(ScaleLayout layout) {
  switch (layout) {
  case ScaleLayout::Row:
    return "row";
  case ScaleLayout::Col:
    return "col";
  case ScaleLayout::ColTma:
    return "col_tma";
  case ScaleLayout::Ue8m0Packed:
    return "ue8m0_packed";
  case ScaleLayout::Bytes:
    return "bytes";
  case ScaleLayout::Swizzled128x4:
    return "swizzled_128x4";
  }
  return "?";
}

const char* toString(Activation activation) {
  switch (activation) {
  case Activation::Silu:
    return "silu";
  case Activation::Swiglu:
    return "swiglu";
  case Activation::GeluTanh:
    return "gelu_tanh";
  case Activation::Gelu:
    return "gelu";
  }
  return "?";
}

const char* toString(GateUp gateUp) {
  switch (gateUp) {
  case GateUp::Split:
    return "split";
  case GateUp::Interleaved:
    return "interleaved";
  }
  return "?";
}

const char* toString(ScaleRounding rounding) {
  switch (rounding) {
  case ScaleRounding::Ceil:
    return "ceil";
  case ScaleRounding::Floor:
    return "floor";
  }
  return "?";
}

llvm::Expected<InDtype> parseInDtype(const std::string& text) {
  for (InDtype d : {InDtype::BF16, InDtype::FP16, InDtype::FP32})
    if (text == toString(d))
      return d;
  return specError("in_dtype", quoted(text), "must be one of bf16, fp16, fp32");
}

llvm::Expected<OutDtype> parseOutDtype(const std::string& text) {
  for (OutDtype d : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8, OutDtype::FP4E2M1})
    if (text == toString(d))
      return d;
  return specError("out_dtype", quoted(text), "must be one of fp8_e4m3, fp8_e5m2, int8, fp4_e2m1");
}

llvm::Expected<ScaleLayout> parseScaleLayout(const std::string& text) {
  for (ScaleLayout l : {ScaleLayout::Row, ScaleLayout::Col, ScaleLayout::ColTma,
                        ScaleLayout::Ue8m0Packed, ScaleLayout::Bytes, ScaleLayout::Swizzled128x4})
    if (text == toString(l))
      return l;
  if (text == "e8m0")
    return ScaleLayout::Bytes;
  return specError(
      "scale_layout", quoted(text),
      "must be one of row, col, col_tma, ue8m0_packed, bytes (alias e8m0), swizzled_128x4");
}

llvm::Expected<Activation> parseActivation(const std::string& text) {
  for (Activation a :
       {Activation::Silu, Activation::Swiglu, Activation::GeluTanh, Activation::Gelu})
    if (text == toString(a))
      return a;
  return specError("activation", quoted(text), "must be one of silu, swiglu, gelu_tanh, gelu");
}

llvm::Expected<GateUp> parseGateUp(const std::string& text) {
  for (GateUp g : {GateUp::Split, GateUp::Interleaved})
    if (text == toString(g))
      return g;
  return specError("gate_up", quoted(text), "must be one of split, interleaved");
}

llvm::Expected<ScaleRounding> parseScaleRounding(const std::string& text) {
  for (ScaleRounding r : {ScaleRounding::Ceil, ScaleRounding::Floor})
    if (text == toString(r))
      return r;
  return specError("scale_rounding", quoted(text), "must be one of ceil, floor");
}

float quantMax(OutDtype dtype) {
  switch (dtype) {
  case OutDtype::FP8E4M3:
    return 448.0f;
  case OutDtype::FP8E5M2:
    return 57344.0f;
  case OutDtype::INT8:
    return 127.0f;
  case OutDtype::FP4E2M1:
    return 6.0f;
  }
  return 0.0f;
}

float minScale(OutDtype dtype) {
  switch (dtype) {
  case OutDtype::FP8E4M3:
    return 1.0f / (448.0f * 512.0f);
  case OutDtype::FP8E5M2:
    return 1.0f / (57344.0f * 512.0f);
  case OutDtype::INT8:
    return 1.1920928955078125e-07f; // FLT_EPSILON, 2^-23
  case OutDtype::FP4E2M1:
    // None of its own (docs/contract.md section 8): the smallest E8M0 scale,
    // 2^-127, an fp32 subnormal. NVFP4's scales do not use it.
    return 0x1p-127f;
  }
  return 0.0f;
}

int maxNormalExponent(OutDtype dtype) {
  switch (dtype) {
  case OutDtype::FP8E4M3:
    return 8; // 448 = 1.75 * 2^8
  case OutDtype::FP8E5M2:
    return 15; // 57344 = 1.75 * 2^15
  case OutDtype::INT8:
    return 0;
  case OutDtype::FP4E2M1:
    return 2; // 6 = 1.5 * 2^2
  }
  return 0;
}

int outBits(OutDtype dtype) {
  return dtype == OutDtype::FP4E2M1 ? 4 : 8;
}

std::string shortestFloatText(float v) {
  if (std::isnan(v))
    return "nan";
  if (std::isinf(v))
    return v < 0 ? "-inf" : "inf";
  char buf[32];
  // Nine significant digits always read back as the same fp32.
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, static_cast<double>(v));
    if (std::strtof(buf, nullptr) == v &&
        std::signbit(std::strtof(buf, nullptr)) == std::signbit(v))
      break;
  }
  return buf;
}

bool ActivationForm::operator==(const ActivationForm& o) const {
  auto same = [](const std::optional<float>& a, const std::optional<float>& b) {
    if (a.has_value() != b.has_value())
      return false;
    return !a || std::memcmp(&*a, &*b, sizeof(float)) == 0;
  };
  return activation == o.activation && same(alpha, o.alpha) && same(beta, o.beta) &&
         same(limit, o.limit);
}

ActivationForm KernelSpec::activationForm() const {
  ActivationForm form;
  form.activation = activation;
  if (activation != Activation::Swiglu) {
    // Parameters on another activation make the spec invalid; they are kept
    // as given so that the error and the JSON show them.
    form.alpha = alpha;
    form.beta = beta;
    form.limit = limit;
    return form;
  }
  if (alpha && *alpha != 1.0f)
    form.alpha = *alpha == 0.0f ? 0.0f : *alpha; // -0 -> +0: alpha * g' is +-0 either way
  if (beta && *beta != 0.0f)
    form.beta = beta;
  form.limit = limit;
  if (!form.alpha && !form.beta && !form.limit)
    form.activation = Activation::Silu; // docs/contract.md section 6: one canonical form
  return form;
}

float KernelSpec::minScaleValue() const {
  return minScaleForm().value_or(bqjit::minScale(outDtype));
}

std::optional<float> KernelSpec::minScaleForm() const {
  if (!minScale)
    return std::nullopt;
  const float m = *minScale;
  // An invalid value (or one with floor, where it is an error) stays as
  // given, so that the error and the JSON show it.
  if (!(std::isfinite(m) && m >= FLT_MIN) || scaleRounding != ScaleRounding::Ceil)
    return minScale;
  const float def = bqjit::minScale(outDtype);
  if (ue8m0) {
    // The floor only reaches the scale through 2^ceil(log2(.)), which is
    // monotone: max(a, m) and max(a, 2^ceil(log2 m)) round to the same power.
    const float p = pow2CeilCapped(m);
    if (p == pow2CeilCapped(def))
      return std::nullopt;
    return p;
  }
  if (m == def)
    return std::nullopt;
  return m;
}

bool KernelSpec::sameMinScale(const KernelSpec& o) const {
  const std::optional<float> a = minScaleForm(), b = o.minScaleForm();
  if (a.has_value() != b.has_value())
    return false;
  return !a || std::memcmp(&*a, &*b, sizeof(float)) == 0;
}

llvm::Error validateShape(const KernelSpec& spec, const LaunchShape& s) {
  const std::string v = std::to_string(s.vecWidth);
  if (!isPowerOfTwo(s.vecWidth) || s.vecWidth * dtypeBytes(spec.inDtype) > 16)
    return specError("launch.vec_width", v,
                     "must be a power of two with vec_width * sizeof(" +
                         std::string(toString(spec.inDtype)) + ") <= 16 bytes");
  if (spec.groupSize % s.vecWidth != 0)
    return specError("launch.vec_width", v,
                     "must divide group_size (" + std::to_string(spec.groupSize) + ")");
  const int vectors = spec.groupSize / s.vecWidth;
  if (s.threadsPerGroup < 1 || s.threadsPerGroup > 32)
    return specError("launch.threads_per_group", std::to_string(s.threadsPerGroup),
                     "must be in 1..32");
  if (vectors % s.threadsPerGroup != 0)
    return specError("launch.threads_per_group", std::to_string(s.threadsPerGroup),
                     "must divide the group's " + std::to_string(vectors) +
                         " vectors (group_size / vec_width)");
  // A step of a thread makes vec_width columns (split) or vec_width / 2
  // (interleaved pairs; 1 when vec_width is 1).
  const int stepColumns = spec.gateUp == GateUp::Split ? s.vecWidth : std::max(1, s.vecWidth / 2);
  if (spec.outDtype == OutDtype::FP4E2M1 && stepColumns % 2 != 0)
    return specError(
        "launch.vec_width", v,
        std::string("fp4_e2m1 packs two values a byte, so a thread's step must make an "
                    "even number of columns: vec_width >= ") +
            (spec.gateUp == GateUp::Split ? "2 (gate_up split)" : "4 (gate_up interleaved)"));
  if (s.groupsPerBlock < 1 || s.threadsPerBlock() > 1024)
    return specError("launch.groups_per_block", std::to_string(s.groupsPerBlock),
                     "must be >= 1 with groups_per_block * threads_per_group (rounded up to a "
                     "power of two) <= 1024");
  if (s.minBlocksPerSm != LaunchShape::kDerived &&
      (s.minBlocksPerSm < 0 || s.minBlocksPerSm > LaunchShape::kMaxMinBlocksPerSm))
    return specError("launch.min_blocks_per_sm", std::to_string(s.minBlocksPerSm),
                     "must be in 0.." + std::to_string(LaunchShape::kMaxMinBlocksPerSm) +
                         " (0: registers left to ptxas)");
  return llvm::Error::success();
}

llvm::Error KernelSpec::validate() const {
  if (hidden < 1 || hidden > kMaxHidden)
    return specError("hidden", std::to_string(hidden),
                     "must be in 1.." + std::to_string(kMaxHidden));
  if (groupSize < kMinGroup || groupSize > kMaxGroup)
    return specError("group_size", std::to_string(groupSize),
                     "must be in " + std::to_string(kMinGroup) + ".." + std::to_string(kMaxGroup));
  if (hidden % groupSize != 0)
    return specError("group_size", std::to_string(groupSize),
                     "must divide hidden (" + std::to_string(hidden) + ")");
  // docs/contract.md section 8: fp4_e2m1 is NVFP4 (G = 16, E4M3 scale bytes)
  // or MXFP4 (G = 32, ue8m0), nothing else.
  if (outDtype == OutDtype::FP4E2M1) {
    const std::string g = std::to_string(groupSize);
    if (groupSize == 16 && ue8m0)
      return specError("ue8m0", "true",
                       "must be false for fp4_e2m1 with group_size 16 (NVFP4, whose scales are "
                       "E4M3 bytes); MXFP4 is group_size 32 with ue8m0");
    if (groupSize == 32 && !ue8m0)
      return specError("ue8m0", "false",
                       "must be true for fp4_e2m1 with group_size 32 (MXFP4, whose scales are "
                       "E8M0); NVFP4 is group_size 16 without ue8m0");
    if (groupSize != 16 && groupSize != 32)
      return specError("group_size", g,
                       "fp4_e2m1 needs G = 16 (NVFP4) or G = 32 with ue8m0 (MXFP4)");
    if (isNvfp4() && hasScaleUb)
      return specError("scale_ub", "true",
                       "must be false for NVFP4 (fp4_e2m1, group_size 16): its block scales are "
                       "bounded by 448 and set by the run-time global_scale");
    if (isNvfp4() && scaleLayout != ScaleLayout::Bytes && scaleLayout != ScaleLayout::Swizzled128x4)
      return specError("scale_layout", quoted(toString(scaleLayout)),
                       "NVFP4 (fp4_e2m1, group_size 16) stores E4M3 scale bytes: must be bytes "
                       "or swizzled_128x4");
  }
  if (scaleLayout == ScaleLayout::Ue8m0Packed && !ue8m0)
    return specError("ue8m0", "false",
                     "must be true when scale_layout is ue8m0_packed "
                     "(packed scales are exponents of powers of two)");
  if (scaleLayout == ScaleLayout::Bytes && !ue8m0 && !isNvfp4())
    return specError("ue8m0", "false",
                     "must be true when scale_layout is bytes "
                     "(its E8M0 bytes are exponents of powers of two; only NVFP4 stores E4M3 "
                     "bytes)");
  if (scaleLayout == ScaleLayout::Swizzled128x4 && !ue8m0 && !isNvfp4())
    return specError("scale_layout", "'swizzled_128x4'",
                     "holds scale bytes: needs ue8m0 true (E8M0) or NVFP4 (fp4_e2m1, group_size "
                     "16: E4M3); fp32 scales have no 128x4 layout");
  if (activation != Activation::Swiglu) {
    const std::string rule = std::string("applies only to activation swiglu (activation is ") +
                             toString(activation) + ")";
    if (alpha)
      return specError("alpha", shortestFloatText(*alpha), rule);
    if (beta)
      return specError("beta", shortestFloatText(*beta), rule);
    if (limit)
      return specError("limit", shortestFloatText(*limit), rule);
  }
  if (alpha && !std::isfinite(*alpha))
    return specError("alpha", shortestFloatText(*alpha), "must be a finite number");
  if (beta && !std::isfinite(*beta))
    return specError("beta", shortestFloatText(*beta), "must be a finite number");
  if (limit && !(std::isfinite(*limit) && *limit > 0.0f))
    return specError("limit", shortestFloatText(*limit),
                     "must be a finite number > 0 after rounding to fp32 (leave it out for no "
                     "clamp)");
  if (scaleRounding == ScaleRounding::Floor) {
    if (!ue8m0)
      return specError("scale_rounding", "'floor'",
                       "needs ue8m0 true (it rounds power-of-two scales)");
    if (outDtype == OutDtype::INT8)
      return specError("scale_rounding", "'floor'",
                       "needs a floating-point out_dtype (fp8_e4m3, fp8_e5m2 or fp4_e2m1), not "
                       "int8");
    if (hasScaleUb)
      return specError("scale_ub", "true",
                       "must be false with scale_rounding floor (the OCP MX rule has no upper "
                       "bound)");
    if (minScale)
      return specError("min_scale", floatText(*minScale),
                       "applies only to scale_rounding ceil (the OCP MX floor rule takes "
                       "2^(floor(log2(amax)) - EMAX) with no minimum scale); leave it out");
  }
  if (minScale && outDtype == OutDtype::FP4E2M1)
    return specError("min_scale", floatText(*minScale),
                     "does not apply to fp4_e2m1 (docs/contract.md section 8: NVFP4's scales "
                     "follow global_scale, MXFP4's floor is 2^-127); leave it out");
  if (minScale && !(std::isfinite(*minScale) && *minScale >= FLT_MIN))
    return specError("min_scale", floatText(*minScale),
                     "must be a finite fp32 number >= 1.17549435e-38 (2^-126, the smallest "
                     "normal) after rounding to fp32: the scale is a divisor, and a subnormal "
                     "or zero scale has no exact reciprocal in the kernel (leave it out for "
                     "MIN_SCALE of the output type)");
  if (auto parsed = Arch::parse(arch); !parsed)
    return parsed.takeError();
  if (shape)
    return validateShape(*this, *shape);
  return llvm::Error::success();
}

std::optional<Arch> KernelSpec::targetArch() const {
  auto parsed = Arch::parse(arch);
  if (!parsed) {
    llvm::consumeError(parsed.takeError());
    return std::nullopt;
  }
  return *parsed;
}

nlohmann::json KernelSpec::toJson() const {
  nlohmann::json j;
  j["hidden"] = hidden;
  j["group_size"] = groupSize;
  j["in_dtype"] = toString(inDtype);
  j["out_dtype"] = toString(outDtype);
  j["scale_layout"] = toString(scaleLayout);
  j["ue8m0"] = ue8m0;
  j["scale_ub"] = hasScaleUb;
  j["masked"] = masked;
  j["arch"] = arch;
  // Defaults are left out, so that the specs of before these fields keep
  // their canonical text and cache keys.
  const ActivationForm form = activationForm();
  if (form.activation != Activation::Silu)
    j["activation"] = toString(form.activation);
  for (auto [name, value] :
       {std::pair<const char*, const std::optional<float>*>{"alpha", &form.alpha},
        {"beta", &form.beta},
        {"limit", &form.limit}})
    if (*value) {
      // The shortest decimal that reads back as the fp32 (as a double, whose
      // shortest form that same text is); a non-finite one stays text.
      const std::string text = shortestFloatText(**value);
      if (std::isfinite(**value))
        j[name] = std::strtod(text.c_str(), nullptr);
      else
        j[name] = text;
    }
  if (gateUp != GateUp::Split)
    j["gate_up"] = toString(gateUp);
  if (scaleRounding != ScaleRounding::Ceil)
    j["scale_rounding"] = toString(scaleRounding);
  if (const std::optional<float> m = minScaleForm()) {
    const std::string text = shortestFloatText(*m);
    if (std::isfinite(*m))
      j["min_scale"] = std::strtod(text.c_str(), nullptr);
    else
      j["min_scale"] = text;
  }
  if (shape)
    j["launch"] = shape->toJson();
  return j;
}

std::string KernelSpec::canonical() const {
  return jsonText(toJson());
}

namespace {

// `label` is the field's name in messages (e.g. "launch.vec_width"); `name` by default.
llvm::Expected<int> intField(const nlohmann::json& j, const char* name,
                             const std::string& label = "") {
  const auto& v = j.at(name);
  const std::string field = label.empty() ? std::string(name) : label;
  if (!v.is_number_integer())
    return specError(field, shown(v), "must be an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX))
    return specError(field, shown(v), "must fit in 32 bits");
  auto x = v.get<int64_t>();
  if (x < INT32_MIN || x > INT32_MAX)
    return specError(field, shown(v), "must fit in 32 bits");
  return static_cast<int>(x);
}

llvm::Expected<bool> boolField(const nlohmann::json& j, const char* name) {
  const auto& v = j.at(name);
  if (!v.is_boolean())
    return specError(name, shown(v), "must be true or false");
  return v.get<bool>();
}

// A JSON number rounded to fp32 (nearest, ties to even). Whether it is finite
// and in range is validate()'s rule; one beyond fp32's range is refused here,
// as an integer beyond 32 bits is.
llvm::Expected<float> floatField(const nlohmann::json& j, const char* name) {
  const auto& v = j.at(name);
  if (!v.is_number())
    return specError(name, shown(v), "must be a number");
  const double d = v.get<double>();
  // Half an ulp above FLT_MAX rounds to infinity (ties to even: FLT_MAX is odd).
  constexpr double kRoundsToInf = 0x1.ffffffp127;
  if (std::isfinite(d) && std::fabs(d) >= kRoundsToInf)
    return specError(name, shown(v),
                     "must fit in fp32 (magnitude below 3.4028235e+38 after rounding)");
  if (std::isfinite(d) && std::fabs(d) > FLT_MAX)
    return d < 0 ? -FLT_MAX : FLT_MAX;
  return static_cast<float>(d);
}

llvm::Expected<std::string> stringField(const nlohmann::json& j, const char* name) {
  const auto& v = j.at(name);
  if (!v.is_string())
    return specError(name, shown(v), "must be a string");
  return v.get<std::string>();
}

} // namespace

llvm::Expected<KernelSpec> KernelSpec::fromJson(const nlohmann::json& j) {
  if (!j.is_object())
    return specError("spec", shown(j), "must be a JSON object");
  static const char* const kKnown[] = {
      "hidden",   "group_size", "in_dtype", "out_dtype",      "scale_layout", "ue8m0",
      "scale_ub", "masked",     "arch",     "launch",         "activation",   "alpha",
      "beta",     "limit",      "gate_up",  "scale_rounding", "min_scale"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (const char* k : kKnown)
      known |= it.key() == k;
    if (!known)
      return specError(it.key(), shown(it.value()),
                       "unknown field (known: hidden, group_size, in_dtype, out_dtype, "
                       "scale_layout, ue8m0, scale_ub, masked, arch, launch, activation, alpha, "
                       "beta, limit, gate_up, scale_rounding, min_scale)");
  }
  if (!j.contains("hidden"))
    return specError("hidden", "(missing)", "is required");
  KernelSpec spec;
  auto hidden = intField(j, "hidden");
  if (!hidden)
    return hidden.takeError();
  spec.hidden = *hidden;
  if (j.contains("group_size")) {
    auto g = intField(j, "group_size");
    if (!g)
      return g.takeError();
    spec.groupSize = *g;
  }
  if (j.contains("in_dtype")) {
    auto s = stringField(j, "in_dtype");
    if (!s)
      return s.takeError();
    auto d = parseInDtype(*s);
    if (!d)
      return d.takeError();
    spec.inDtype = *d;
  }
  if (j.contains("out_dtype")) {
    auto s = stringField(j, "out_dtype");
    if (!s)
      return s.takeError();
    auto d = parseOutDtype(*s);
    if (!d)
      return d.takeError();
    spec.outDtype = *d;
  }
  if (j.contains("scale_layout")) {
    auto s = stringField(j, "scale_layout");
    if (!s)
      return s.takeError();
    auto l = parseScaleLayout(*s);
    if (!l)
      return l.takeError();
    spec.scaleLayout = *l;
  }
  for (auto [name, field] : {std::pair<const char*, bool*>{"ue8m0", &spec.ue8m0},
                             {"scale_ub", &spec.hasScaleUb},
                             {"masked", &spec.masked}}) {
    if (!j.contains(name))
      continue;
    auto b = boolField(j, name);
    if (!b)
      return b.takeError();
    *field = *b;
  }
  if (j.contains("arch")) {
    auto s = stringField(j, "arch");
    if (!s)
      return s.takeError();
    spec.arch = *s;
  }
  if (j.contains("activation")) {
    auto s = stringField(j, "activation");
    if (!s)
      return s.takeError();
    auto a = parseActivation(*s);
    if (!a)
      return a.takeError();
    spec.activation = *a;
  }
  for (auto [name, field] : {std::pair<const char*, std::optional<float>*>{"alpha", &spec.alpha},
                             {"beta", &spec.beta},
                             {"limit", &spec.limit},
                             {"min_scale", &spec.minScale}}) {
    if (!j.contains(name))
      continue;
    auto f = floatField(j, name);
    if (!f)
      return f.takeError();
    *field = *f;
  }
  if (j.contains("gate_up")) {
    auto s = stringField(j, "gate_up");
    if (!s)
      return s.takeError();
    auto g = parseGateUp(*s);
    if (!g)
      return g.takeError();
    spec.gateUp = *g;
  }
  if (j.contains("scale_rounding")) {
    auto s = stringField(j, "scale_rounding");
    if (!s)
      return s.takeError();
    auto r = parseScaleRounding(*s);
    if (!r)
      return r.takeError();
    spec.scaleRounding = *r;
  }
  if (j.contains("launch")) {
    const auto& l = j.at("launch");
    if (!l.is_object())
      return specError("launch", shown(l), "must be an object");
    LaunchShape shape;
    for (auto [name, field] :
         {std::pair<const char*, int*>{"threads_per_group", &shape.threadsPerGroup},
          {"vec_width", &shape.vecWidth},
          {"groups_per_block", &shape.groupsPerBlock},
          {"min_blocks_per_sm", &shape.minBlocksPerSm}}) {
      const bool optional = field == &shape.minBlocksPerSm;
      if (!l.contains(name)) {
        if (optional)
          continue;
        return specError(std::string("launch.") + name, "(missing)", "is required in launch");
      }
      auto v = intField(l, name, std::string("launch.") + name);
      if (!v)
        return v.takeError();
      *field = *v;
    }
    if (l.size() != 3u + (l.contains("min_blocks_per_sm") ? 1u : 0u))
      return specError("launch", shown(l),
                       "takes exactly threads_per_group, vec_width, groups_per_block and "
                       "optionally min_blocks_per_sm");
    spec.shape = shape;
  }
  if (auto err = spec.validate())
    return std::move(err);
  return spec;
}

std::string canonicalFieldName(const std::string& name) {
  // Short aliases for the command line.
  static const std::map<std::string, std::string> kAlias = {{"H", "hidden"},
                                                            {"G", "group_size"},
                                                            {"group", "group_size"},
                                                            {"in", "in_dtype"},
                                                            {"out", "out_dtype"},
                                                            {"layout", "scale_layout"},
                                                            {"tpg", "threads_per_group"},
                                                            {"vec", "vec_width"},
                                                            {"gpb", "groups_per_block"},
                                                            {"mbs", "min_blocks_per_sm"},
                                                            {"act", "activation"},
                                                            {"rounding", "scale_rounding"}};
  auto it = kAlias.find(name);
  return it == kAlias.end() ? name : it->second;
}

llvm::Expected<KernelSpec>
KernelSpec::fromFields(const std::map<std::string, std::string>& fields) {
  nlohmann::json j = nlohmann::json::object();
  nlohmann::json launch = nlohmann::json::object();
  for (const auto& [rawName, value] : fields) {
    const std::string name = canonicalFieldName(rawName);
    const bool isLaunch = name == "threads_per_group" || name == "vec_width" ||
                          name == "groups_per_block" || name == "min_blocks_per_sm";
    if (name == "hidden" || name == "group_size" || isLaunch) {
      size_t used = 0;
      long long n = 0;
      try {
        n = std::stoll(value, &used);
      } catch (...) {
        used = 0;
      }
      if (used == 0 || used != value.size())
        return specError(name, quoted(value), "must be an integer");
      (isLaunch ? launch : j)[name] = n;
    } else if (name == "alpha" || name == "beta" || name == "limit" || name == "min_scale") {
      // Decimal or hexadecimal, or nan / inf, which validate() then names.
      bool ok = !value.empty() && !std::isspace(static_cast<unsigned char>(value[0]));
      double d = 0.0;
      if (ok) {
        char* end = nullptr;
        d = std::strtod(value.c_str(), &end);
        ok = end != value.c_str() && *end == '\0';
      }
      if (!ok)
        return specError(name, quoted(value), "must be a number");
      j[name] = d;
    } else if (name == "ue8m0" || name == "scale_ub" || name == "masked") {
      if (value == "1" || value == "true" || value == "on")
        j[name] = true;
      else if (value == "0" || value == "false" || value == "off")
        j[name] = false;
      else
        return specError(name, quoted(value), "must be true/false, on/off or 1/0");
    } else {
      j[name] = value;
    }
  }
  if (!launch.empty())
    j["launch"] = launch;
  return fromJson(j);
}

std::string LaunchShape::label() const {
  return "tpg=" + std::to_string(threadsPerGroup) + " vec=" + std::to_string(vecWidth) +
         " gpb=" + std::to_string(groupsPerBlock);
}

nlohmann::json LaunchShape::toJson() const {
  nlohmann::json j = {{"threads_per_group", threadsPerGroup},
                      {"vec_width", vecWidth},
                      {"groups_per_block", groupsPerBlock}};
  if (minBlocksPerSm != kDerived)
    j["min_blocks_per_sm"] = minBlocksPerSm;
  return j;
}

std::string KernelSpec::label() const {
  std::ostringstream os;
  os << "H=" << hidden << " G=" << groupSize << " " << toString(inDtype) << "->"
     << toString(outDtype) << " " << toString(scaleLayout);
  if (ue8m0)
    os << " ue8m0";
  if (hasScaleUb)
    os << " ub";
  if (masked)
    os << " masked";
  if (scaleRounding != ScaleRounding::Ceil)
    os << " " << toString(scaleRounding);
  const ActivationForm form = activationForm();
  if (form.activation != Activation::Silu || form.alpha || form.beta || form.limit) {
    os << " " << toString(form.activation);
    for (auto [name, value] :
         {std::pair<const char*, const std::optional<float>*>{"alpha", &form.alpha},
          {"beta", &form.beta},
          {"limit", &form.limit}})
      if (*value)
        os << " " << name << "=" << shortestFloatText(**value);
  }
  if (gateUp != GateUp::Split)
    os << " " << toString(gateUp);
  if (const std::optional<float> m = minScaleForm())
    os << " min_scale=" << shortestFloatText(*m);
  os << " " << arch;
  if (shape)
    os << " tpg=" << shape->threadsPerGroup << " vec=" << shape->vecWidth
       << " gpb=" << shape->groupsPerBlock;
  if (shape && shape->minBlocksPerSm != LaunchShape::kDerived)
    os << " mbs=" << shape->minBlocksPerSm;
  return os.str();
}

size_t KernelSpec::hash() const {
  // boost-style combining of std::hash values: cheap, and no allocation.
  size_t h = 0;
  auto mix = [&h](size_t v) { h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
  for (int v :
       {hidden, groupSize, static_cast<int>(inDtype), static_cast<int>(outDtype),
        static_cast<int>(scaleLayout), int(ue8m0) | int(hasScaleUb) << 1 | int(masked) << 2})
    mix(std::hash<int>()(v));
  mix(std::hash<std::string>()(arch));
  const ActivationForm form = activationForm();
  mix(std::hash<int>()(static_cast<int>(form.activation) | static_cast<int>(gateUp) << 4 |
                       static_cast<int>(scaleRounding) << 8));
  const std::optional<float> floorForm = minScaleForm();
  for (const std::optional<float>* p : {&form.alpha, &form.beta, &form.limit, &floorForm}) {
    uint32_t bits = 0;
    if (*p)
      std::memcpy(&bits, &**p, sizeof bits);
    mix(std::hash<uint64_t>()(uint64_t(p->has_value()) << 32 | bits));
  }
  if (shape)
    for (int v :
         {shape->threadsPerGroup, shape->vecWidth, shape->groupsPerBlock, shape->minBlocksPerSm})
      mix(std::hash<int>()(v));
  return h;
}

} // namespace bqjit
