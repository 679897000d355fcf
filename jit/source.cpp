#include "jit/source.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "jit/template_source.hpp"

namespace bqjit {

namespace {

// The template's own names for each choice: the spec's enums map to them by
// name, so reordering an enum cannot silently change a kernel.
const char* templateName(InDtype dtype) {
  switch (dtype) {
  case InDtype::BF16:
    return "kBF16";
  case InDtype::FP16:
    return "kFP16";
  case InDtype::FP32:
    return "kFP32";
  }
  return "?";
}

const char* templateName(OutDtype dtype) {
  switch (dtype) {
  case OutDtype::FP8E4M3:
    return "kE4M3";
  case OutDtype::FP8E5M2:
    return "kE5M2";
  case OutDtype::INT8:
    return "kInt8";
  case OutDtype::FP4E2M1:
    return "kE2M1";
  }
  return "?";
}

const char* templateName(ScaleLayout layout) {
  switch (layout) {
  case ScaleLayout::Row:
    return "kRow";
  case ScaleLayout::Col:
    return "kCol";
  case ScaleLayout::ColTma:
    return "kColTma";
  case ScaleLayout::Ue8m0Packed:
    return "kUe8m0Packed";
  case ScaleLayout::Bytes:
    return "kBytes";
  case ScaleLayout::Swizzled128x4:
    return "kSwizzled128x4";
  }
  return "?";
}

const char* templateName(Activation activation) {
  switch (activation) {
  case Activation::Silu:
    return "kSilu";
  case Activation::Swiglu:
    return "kSwiglu";
  case Activation::GeluTanh:
    return "kGeluTanh";
  case Activation::Gelu:
    return "kGelu";
  }
  return "?";
}

const char* templateName(GateUp gateUp) {
  switch (gateUp) {
  case GateUp::Split:
    return "kSplit";
  case GateUp::Interleaved:
    return "kInterleaved";
  }
  return "?";
}

const char* templateName(ScaleRounding rounding) {
  switch (rounding) {
  case ScaleRounding::Ceil:
    return "kCeil";
  case ScaleRounding::Floor:
    return "kFloor";
  }
  return "?";
}

// An exact fp32 literal: hexadecimal, so no decimal rounding stands between
// the spec's fp32 and the kernel's (docs/contract.md section 6), e.g. 0x1.b3b646p+0f.
std::string hexFloat(float v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%af", static_cast<double>(v));
  return buf;
}

std::string bitsHex(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", bits);
  return buf;
}

} // namespace

uint32_t limitPair16(const KernelSpec& spec) {
  const ActivationForm form = spec.activationForm();
  if (!form.limit || spec.inDtype == InDtype::FP32)
    return 0;
  const float limit = *form.limit; // finite and > 0 (validated)
  uint32_t half = 0;
  if (spec.inDtype == InDtype::BF16) {
    uint32_t bits;
    std::memcpy(&bits, &limit, sizeof bits);
    if ((bits & 0xffffu) != 0)
      return 0;
    half = bits >> 16;
  } else {
    // fp16: 1 + 10 bits from 2^-14 up to 65504, multiples of 2^-24 below.
    if (!(limit >= 0x1p-24f && limit <= 65504.0f))
      return 0;
    int e = 0;
    std::frexp(limit, &e); // limit = m * 2^e, m in [0.5, 1)
    const int exponent = e - 1;
    if (exponent >= -14) {
      const double m = std::ldexp(static_cast<double>(limit), 10 - exponent); // 1024..2047
      if (m != std::floor(m))
        return 0;
      half = static_cast<uint32_t>(exponent + 15) << 10 | (static_cast<uint32_t>(m) - 1024u);
    } else {
      const double m = std::ldexp(static_cast<double>(limit), 24);
      if (m != std::floor(m))
        return 0;
      half = static_cast<uint32_t>(m);
    }
  }
  return half << 16 | half;
}

namespace {

// A readable name for the struct, so that profilers and the PTX name the
// kernel's specialization: H7168_G128_bf16_fp8_e4m3_row_tpg8_vec8_gpb32_mbs0.
std::string structName(const KernelSpec& spec) {
  const LaunchShape& s = *spec.shape;
  std::ostringstream name;
  name << "H" << spec.hidden << "_G" << spec.groupSize << "_" << toString(spec.inDtype) << "_"
       << toString(spec.outDtype) << "_" << toString(spec.scaleLayout)
       << (spec.ue8m0 ? "_ue8m0" : "") << (spec.hasScaleUb ? "_ub" : "")
       << (spec.masked ? "_masked" : "");
  // Only what differs from silu, split and ceil, so older names stay as they were.
  const ActivationForm form = spec.activationForm();
  if (form.activation != Activation::Silu)
    name << "_" << toString(form.activation);
  if (form.alpha)
    name << "_a" << bitsHex(*form.alpha);
  if (form.beta)
    name << "_b" << bitsHex(*form.beta);
  if (form.limit)
    name << "_l" << bitsHex(*form.limit);
  if (spec.gateUp != GateUp::Split)
    name << "_" << toString(spec.gateUp);
  if (spec.scaleRounding != ScaleRounding::Ceil)
    name << "_" << toString(spec.scaleRounding);
  if (const std::optional<float> m = spec.minScaleForm())
    name << "_m" << bitsHex(*m);
  name << "_tpg" << s.threadsPerGroup << "_vec" << s.vecWidth << "_gpb" << s.groupsPerBlock
       << "_mbs" << s.minBlocksPerSm;
  return name.str();
}

} // namespace

GeneratedSource generateSource(const KernelSpec& spec) {
  const LaunchShape& s = *spec.shape;
  const std::string name = structName(spec);
  auto flag = [](bool b) { return b ? "true" : "false"; };
  const ActivationForm form = spec.activationForm();
  std::ostringstream text;
  // The spec is echoed so that a PTX or log read by a person says what it is.
  text << "// bqjit specialization " << spec.canonical() << "\n"
       << "#include \"" << kTemplateHeaderName << "\"\n"
       << "namespace bqjit_kernel {\n"
       << "struct " << name << " {\n"
       << "  static constexpr int kHidden = " << spec.hidden << ";\n"
       << "  static constexpr int kGroupSize = " << spec.groupSize << ";\n"
       << "  static constexpr int kInDtype = " << templateName(spec.inDtype) << ";\n"
       << "  static constexpr int kOutDtype = " << templateName(spec.outDtype) << ";\n"
       << "  static constexpr int kScaleLayout = " << templateName(spec.scaleLayout) << ";\n"
       << "  static constexpr bool kPow2Scales = " << flag(spec.ue8m0) << ";\n"
       << "  static constexpr bool kHasScaleUb = " << flag(spec.hasScaleUb) << ";\n"
       << "  static constexpr bool kMasked = " << flag(spec.masked) << ";\n"
       << "  static constexpr int kActivation = " << templateName(form.activation) << ";\n"
       << "  static constexpr float kAlpha = " << hexFloat(form.alpha.value_or(1.0f)) << ";\n"
       << "  static constexpr float kBeta = " << hexFloat(form.beta.value_or(0.0f)) << ";\n"
       << "  static constexpr bool kHasLimit = " << flag(form.limit.has_value()) << ";\n"
       << "  static constexpr float kLimit = " << hexFloat(form.limit.value_or(0.0f)) << ";\n"
       << "  static constexpr unsigned kLimitPair = 0x" << std::hex << limitPair16(spec) << std::dec
       << "u;\n"
       << "  static constexpr int kGateUp = " << templateName(spec.gateUp) << ";\n"
       << "  static constexpr int kScaleRounding = " << templateName(spec.scaleRounding) << ";\n"
       << "  static constexpr float kMinScale = " << hexFloat(spec.minScaleValue()) << ";\n"
       << "  static constexpr int kThreadsPerGroup = " << s.threadsPerGroup << ";\n"
       << "  static constexpr int kVecWidth = " << s.vecWidth << ";\n"
       << "  static constexpr int kGroupsPerBlock = " << s.groupsPerBlock << ";\n"
       << "  static constexpr int kMinBlocksPerSm = " << s.minBlocksPerSm << ";\n"
       << "};\n"
       << "} // namespace bqjit_kernel\n";

  GeneratedSource out;
  out.fileName = "bqjit_silu_mul_quant.cu";
  out.nameExpression = "bqjit_kernel::silu_mul_quant<bqjit_kernel::" + name + ">";
  out.text = text.str();
  return out;
}

} // namespace bqjit
