// KernelSpec: the value type that names one specialization of the fused
// activation(gate) * up + per-group quantization kernel (docs/contract.md sections 4,
// 6 and 7).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <llvm/Support/Error.h>
#include <nlohmann/json.hpp>

#include "bqjit/arch.hpp"

namespace bqjit {

/// Element type of the input tensor `x` (gate and up halves).
enum class InDtype : int { BF16 = 0, FP16 = 1, FP32 = 2 };

/// Element type of the quantized output `q`. FP4E2M1 (OCP E2M1, docs/contract.md
/// section 8) packs two values a byte, element 2k in the low nibble; it is NVFP4
/// (G = 16, E4M3 scale bytes, a run-time global scale) or MXFP4 (G = 32, ue8m0).
enum class OutDtype : int { FP8E4M3 = 0, FP8E5M2 = 1, INT8 = 2, FP4E2M1 = 3 };

/// Where scale (t, j) is stored (docs/contract.md sections 2, 7 and 8). `Bytes` is one
/// byte per scale, row-major (canonical name "bytes", alias "e8m0"): E8M0 for
/// power-of-two scales, E4M3 for NVFP4. `Swizzled128x4` is the same bytes in
/// the 128x4 tiles that Blackwell's block-scaled GEMMs read, padding zeroed.
enum class ScaleLayout : int {
  Row = 0,
  Col = 1,
  ColTma = 2,
  Ue8m0Packed = 3,
  Bytes = 4,
  Swizzled128x4 = 5
};

/// y = act(gate) * up (docs/contract.md section 6). Swiglu takes alpha, beta and limit.
enum class Activation : int { Silu = 0, Swiglu = 1, GeluTanh = 2, Gelu = 3 };

/// Where gate and up of column i lie in a row of x (docs/contract.md section 6):
/// Split: x[i] and x[H + i]; Interleaved: x[2i] and x[2i + 1].
enum class GateUp : int { Split = 0, Interleaved = 1 };

/// How power-of-two scales are rounded (docs/contract.md section 7): Ceil is
/// 2^ceil(log2(amax / QMAX)) (no element saturates), Floor the OCP MX rule
/// 2^(floor(log2(amax)) - EMAX).
enum class ScaleRounding : int { Ceil = 0, Floor = 1 };

/// Bytes of one input element.
int dtypeBytes(InDtype dtype);
/// Canonical names used in JSON, on the command line and in the Python binding.
const char* toString(InDtype dtype);
const char* toString(OutDtype dtype);
const char* toString(ScaleLayout layout);
const char* toString(Activation activation);
const char* toString(GateUp gateUp);
const char* toString(ScaleRounding rounding);
llvm::Expected<InDtype> parseInDtype(const std::string& text);
llvm::Expected<OutDtype> parseOutDtype(const std::string& text);
/// Also accepts "e8m0", the alias of "bytes".
llvm::Expected<ScaleLayout> parseScaleLayout(const std::string& text);
llvm::Expected<Activation> parseActivation(const std::string& text);
llvm::Expected<GateUp> parseGateUp(const std::string& text);
llvm::Expected<ScaleRounding> parseScaleRounding(const std::string& text);

/// The largest finite magnitude of the output type (QMAX in docs/contract.md).
float quantMax(OutDtype dtype);
/// The smallest scale the kernel emits (MIN_SCALE in docs/contract.md).
float minScale(OutDtype dtype);
/// The exponent of the output type's largest normal (EMAX of docs/contract.md
/// section 7: 8 for fp8_e4m3, 15 for fp8_e5m2, 2 for fp4_e2m1); 0 for int8,
/// which has none.
int maxNormalExponent(OutDtype dtype);
/// Bits of one quantized value: 4 for fp4_e2m1, 8 for the others.
int outBits(OutDtype dtype);

/// The shortest decimal text that reads back as exactly `v` in fp32
/// ("1.702" for 1.702f), as the canonical JSON stores swiglu's parameters.
std::string shortestFloatText(float v);

/// The activation of a spec with its parameters in canonical form: swiglu
/// with alpha 1, beta 0 (either sign) and no limit is silu; alpha and beta
/// at their defaults are unset; -0 is +0. Specs with equal ActivationForm
/// compute the same y and have the same canonical JSON.
struct ActivationForm {
  Activation activation = Activation::Silu;
  std::optional<float> alpha; ///< set only when not 1 (swiglu)
  std::optional<float> beta;  ///< set only when not 0 (swiglu)
  std::optional<float> limit; ///< the clamp, when there is one (swiglu)

  /// Compares the parameters bit by bit (so a NaN equals itself).
  bool operator==(const ActivationForm& o) const;
  bool operator!=(const ActivationForm& o) const { return !(*this == o); }
};

/// How the kernel maps work to threads. A team of `threadsPerGroup` threads
/// quantizes one group of G columns, each thread loading `vecWidth` input
/// elements at a time; a block holds `groupsPerBlock` teams. The planner
/// (planner/) chooses it, and a user may give it.
struct LaunchShape {
  /// minBlocksPerSm's value while the planner has not derived it.
  static constexpr int kDerived = -1;
  static constexpr int kMaxMinBlocksPerSm = 32;

  int threadsPerGroup = 0;
  int vecWidth = 0;
  int groupsPerBlock = 0;
  /// Blocks per multiprocessor promised to ptxas (`__launch_bounds__`'s
  /// second argument), which caps registers per thread; 0 leaves registers
  /// to ptxas. kDerived until the planner resolves it from the other fields.
  int minBlocksPerSm = kDerived;

  /// Lanes one team occupies: threadsPerGroup rounded up to a power of two
  /// (a team never straddles a warp; the extra lanes idle).
  int teamSlot() const {
    int slot = 1;
    while (slot < threadsPerGroup)
      slot *= 2;
    return slot;
  }
  int threadsPerBlock() const { return teamSlot() * groupsPerBlock; }
  /// "tpg=4 vec=8 gpb=32", as `bqjit tune` and the autotuner print it.
  std::string label() const;
  /// The spec's "launch" object: threads_per_group, vec_width,
  /// groups_per_block, and min_blocks_per_sm once resolved.
  nlohmann::json toJson() const;
  bool operator==(const LaunchShape& o) const {
    return threadsPerGroup == o.threadsPerGroup && vecWidth == o.vecWidth &&
           groupsPerBlock == o.groupsPerBlock && minBlocksPerSm == o.minBlocksPerSm;
  }
  bool operator!=(const LaunchShape& o) const { return !(*this == o); }
};

/// One specialization: every compile-time choice of docs/contract.md section 4.
/// Run-time values (T, pointers, ld_x, stream) are not part of it.
struct KernelSpec {
  static constexpr int kMaxHidden = 65536;
  static constexpr int kMinGroup = 16;
  static constexpr int kMaxGroup = 1024;
  static constexpr int kMinArch = Arch::kMinNumber; ///< sm_80 (Ampere) is the oldest target.

  int hidden = 0;                             ///< H: columns of gate (and of up).
  int groupSize = 128;                        ///< G: columns per quantization group.
  InDtype inDtype = InDtype::BF16;            ///< dtype of x.
  OutDtype outDtype = OutDtype::FP8E4M3;      ///< dtype of q.
  ScaleLayout scaleLayout = ScaleLayout::Row; ///< where scales go.
  bool ue8m0 = false;                         ///< power-of-two scales.
  bool hasScaleUb = false;                    ///< clamp scales by *scale_ub.
  bool masked = false;                        ///< MoE masked batch [E, T_max, 2H].
  std::string arch = "sm_90";                 ///< target, e.g. sm_80, sm_90a, sm_100.
  std::optional<LaunchShape> shape;           ///< unset: the heuristic (or a tuned record) picks.
  Activation activation = Activation::Silu;   ///< y = act(gate) * up.
  /// Swiglu's parameters (docs/contract.md section 6), fp32 compile-time constants;
  /// unset: alpha 1, beta 0, no clamp. Set on another activation, invalid.
  std::optional<float> alpha;
  std::optional<float> beta;
  std::optional<float> limit;
  GateUp gateUp = GateUp::Split;                     ///< where gate and up lie in a row.
  ScaleRounding scaleRounding = ScaleRounding::Ceil; ///< power-of-two rounding (ue8m0 only).
  /// The scale's floor (docs/contract.md section 1's MIN_SCALE), an fp32
  /// compile-time constant; unset: MIN_SCALE of the output type. A normal
  /// fp32 (>= 2^-126); not with scale_rounding floor, which has no floor.
  /// Lets code that floors amax with its own epsilon (amax.clamp(min=eps)
  /// then / QMAX) be matched exactly: min_scale = fl32(eps / QMAX).
  std::optional<float> minScale;

  /// The floor the kernel applies: minScale, or MIN_SCALE of the output type.
  float minScaleValue() const;
  /// minScale in canonical form: unset when it gives the default's results
  /// (bit-equal to MIN_SCALE, or, with power-of-two ceil scales, of the same
  /// power-of-two ceiling as MIN_SCALE); with ue8m0 (ceil) the power of two
  /// 2^ceil(log2(min_scale)) (at most 2^127), which gives the same scales.
  std::optional<float> minScaleForm() const;

  int numGroups() const { return hidden / groupSize; }
  /// The activation and its parameters in canonical form.
  ActivationForm activationForm() const;
  /// Whether the scale buffer holds one byte per scale (ue8m0_packed, bytes,
  /// swizzled_128x4) rather than fp32s.
  bool scalesAreBytes() const {
    return scaleLayout == ScaleLayout::Ue8m0Packed || scaleLayout == ScaleLayout::Bytes ||
           scaleLayout == ScaleLayout::Swizzled128x4;
  }
  /// NVFP4 (docs/contract.md section 8): fp4_e2m1 with G = 16 and no ue8m0. Its
  /// scales are E4M3 bytes, and a launch needs the device fp32 `global_scale`.
  bool isNvfp4() const { return outDtype == OutDtype::FP4E2M1 && !ue8m0; }
  /// Whether a launch takes the run-time `global_scale` pointer (NVFP4 only).
  bool needsGlobalScale() const { return isNvfp4(); }
  /// Bytes of one row of q: H, or H / 2 for fp4_e2m1.
  int64_t outputRowBytes() const { return static_cast<int64_t>(hidden) * outBits(outDtype) / 8; }

  /// Checks every field against the rules of docs/contract.md section 4. The error
  /// names the field, the value and the rule that it breaks.
  llvm::Error validate() const;
  /// `arch` parsed; nullopt where it does not parse (never for a validated spec).
  std::optional<Arch> targetArch() const;

  /// Canonical JSON: fixed field names, canonical enum spellings, the launch
  /// shape only when set; activation, its parameters, gate_up,
  /// scale_rounding and min_scale only when not the default (activationForm(),
  /// minScaleForm(); parameters as shortestFloatText), so that specs of before
  /// these fields keep their text. Equal specs give byte-identical `canonical()`.
  nlohmann::json toJson() const;
  std::string canonical() const;
  /// Parses and validates. Unknown fields are an error (they could silently
  /// change nothing while a user believes they changed the kernel).
  static llvm::Expected<KernelSpec> fromJson(const nlohmann::json& j);
  /// Parses `field=value` pairs as given on the command line, e.g.
  /// {"hidden": "7168", "group": "96", "in": "bf16"}; see README for names.
  static llvm::Expected<KernelSpec> fromFields(const std::map<std::string, std::string>& fields);

  /// A short human-readable label, e.g. "H=7168 G=128 bf16->fp8_e4m3 row sm_90".
  std::string label() const;

  /// Field by field, the activation by activationForm(): equal specs have
  /// equal canonical() (no allocation).
  bool operator==(const KernelSpec& o) const {
    return hidden == o.hidden && groupSize == o.groupSize && inDtype == o.inDtype &&
           outDtype == o.outDtype && scaleLayout == o.scaleLayout && ue8m0 == o.ue8m0 &&
           hasScaleUb == o.hasScaleUb && masked == o.masked && arch == o.arch && shape == o.shape &&
           gateUp == o.gateUp && scaleRounding == o.scaleRounding &&
           activationForm() == o.activationForm() && sameMinScale(o);
  }
  bool operator!=(const KernelSpec& o) const { return !(*this == o); }
  /// A hash of every field, consistent with operator== (no allocation).
  size_t hash() const;

private:
  /// minScaleForm() of both, compared bit by bit.
  bool sameMinScale(const KernelSpec& o) const;
};

/// The canonical field name of a command-line alias ("G" -> "group_size",
/// "tpg" -> "threads_per_group", ...); other names are returned unchanged.
std::string canonicalFieldName(const std::string& name);

/// Validates an explicit launch shape against a spec (the vector width must
/// divide G, the team must divide the group's vectors, and so on).
llvm::Error validateShape(const KernelSpec& spec, const LaunchShape& shape);

} // namespace bqjit
