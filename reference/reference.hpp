// CPU reference of the fused act(gate) * up + per-group quantization
// (docs/contract.md sections 1-3, 6 and 7) and the comparison every GPU test uses.
//
// Written independently of the kernel template (templates/): conversions to the
// narrow formats pick the nearest value from a table of decoded codes instead
// of manipulating bits, so a bug in one is not copied into the other.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bqjit/kernel_spec.hpp"

namespace bqjit::ref {

// ---- number formats -------------------------------------------------------------

/// fp32 -> OCP fp8 e4m3fn: clamp to ±448 (±Inf included), round to nearest
/// even, NaN -> 0x7F with the input's sign bit. The sign of zero is kept, so
/// -0.0 and negative values that round to zero give 0x80.
uint8_t floatToE4M3(float v);
/// fp32 -> fp8 e5m2: clamp to ±57344 (±Inf included), round to nearest even,
/// NaN -> 0x7F / 0xFF, signed zero kept as for e4m3.
uint8_t floatToE5M2(float v);
/// Exact value of an e4m3fn code (0x7F and 0xFF are NaN).
float e4m3ToFloat(uint8_t code);
/// Exact value of an e5m2 code (0x7C / 0xFC are ±Inf, 0x7D-0x7F / 0xFD-0xFF NaN).
float e5m2ToFloat(uint8_t code);
/// Round half to even, saturate to [-128, 127], NaN -> 0.
int8_t floatToInt8(float v);
/// fp32 -> OCP e2m1 (docs/contract.md section 8), a 4-bit code: clamp to ±6
/// (±Inf included), round to nearest even; the sign is bit 3, so -0.0 and
/// negative values that round to zero give 0x8. NaN gives 0x7 with the
/// input's sign (the contract leaves it unspecified).
uint8_t floatToE2M1(float v);
/// Exact value of an e2m1 code (the low 4 bits of `code`).
float e2m1ToFloat(uint8_t code);

/// fp32 -> bf16, round to nearest even (overflow to ±Inf, NaN kept quiet).
uint16_t floatToBf16(float v);
float bf16ToFloat(uint16_t bits);
/// fp32 -> IEEE half, round to nearest even, with subnormals, Inf and NaN.
uint16_t floatToFp16(float v);
float fp16ToFloat(uint16_t bits);

/// docs/contract.md's saturate_round for `dtype`: the byte the kernel stores for `v`
/// (for fp4_e2m1 the 4-bit code, which q packs two a byte).
uint8_t quantize(OutDtype dtype, float v);
/// The value a stored byte (fp4_e2m1: code) stands for (int8 bytes are two's complement).
float dequantize(OutDtype dtype, uint8_t code);
/// The code of element `index` of a q buffer: byte `index`, or for fp4_e2m1
/// the nibble `index % 2` (0: low) of byte `index / 2`.
uint8_t codeAt(OutDtype dtype, const uint8_t* q, int64_t index);
/// True for the NaN codes of fp8 types; never for int8.
bool isNaNCode(OutDtype dtype, uint8_t code);

/// 2^ceil(log2(s)), exactly, for positive s; powers of two and +Inf map to
/// themselves.
float pow2Ceil(float s);

/// The power-of-two scale of a group under `spec`'s rounding (docs/contract.md
/// sections 1 and 7), from its amax (>= 0, NaN-free) and, under ceil, its
/// scale before rounding (amax / QMAX after scale_ub and MIN_SCALE).
/// Ceil: 2^ceil(log2(pre)), at most 2^127. Floor: 2^(ilogb(amax) - EMAX)
/// clamped to 2^-127..2^127; amax 0 gives 2^-127, an infinite amax 2^127.
float pow2Scale(const KernelSpec& spec, float amax, float pre);

/// y = act(gate) * up for one column (docs/contract.md section 6), each step rounded
/// to fp32 as written there; gelu_tanh as g / (1 + exp(-2w)) * u and gelu as
/// g * (0.5 * erfc(-g / sqrt 2)) * u, the same functions without the
/// cancellation of 1 + tanh and 1 + erf for negative g.
float activation(const KernelSpec& spec, float gate, float up);

/// gelu_tanh's sigmoid exponent z = 2w = g (k1 + k3 g^2) in fp32, k1 = 2
/// sqrt(2/pi) and k3 = k1 * 0.044715 each rounded once: a product, a fused
/// multiply-add and a product, the kernel's three roundings.
float geluTanhZ(float g);

/// Reads element `index` of an input array of `dtype` as fp32.
float loadInput(InDtype dtype, const void* x, int64_t index);
/// Writes `v` (rounded to nearest even) as element `index` of an input array.
void storeInput(InDtype dtype, void* x, int64_t index, float v);

// ---- layouts (docs/contract.md section 2) -------------------------------------------------

/// T4 = ceil(T / 4) * 4, the padded row count of col_tma and ue8m0_packed.
int64_t paddedTokens(int64_t tokens);
/// Byte of scale (t, j) in one expert's swizzled_128x4 buffer (docs/contract.md
/// section 8) of `numGroups` groups a row: rows padded to 128, groups to 4,
/// ((t / 128) * (NGp / 4) + j / 4) * 512 + (t % 32) * 16 + ((t % 128) / 32) * 4 + j % 4.
int64_t swizzledOffset(int64_t t, int64_t j, int64_t numGroups);
/// Bytes of the scale buffer for `numExperts` experts of `tokens` rows each:
/// row / col: T * NG * 4; col_tma: T4 * NG * 4; ue8m0_packed: ceil(NG / 4) * T4 * 4;
/// bytes: T * NG; swizzled_128x4: ceil(T / 128) * 128 * ceil(NG / 4) * 4.
int64_t scaleBufferBytes(const KernelSpec& spec, int64_t tokens, int64_t numExperts = 1);
/// Bytes of q: numExperts * tokens * H (H / 2 for fp4_e2m1).
int64_t outputBytes(const KernelSpec& spec, int64_t tokens, int64_t numExperts = 1);
/// Byte offset of scale (t, j) of `expert` in the scale buffer: the fp32 for
/// row / col / col_tma, the scale byte for ue8m0_packed, bytes and
/// swizzled_128x4. `t` may be a padding row (tokens <= t < T4, or < the
/// 128-row padding of swizzled_128x4) of the padded layouts.
int64_t scaleOffset(const KernelSpec& spec, int64_t tokens, int64_t expert, int64_t t, int64_t j);

// ---- the reference ----------------------------------------------------------------

/// One call of the kernel: the spec plus its run-time arguments.
struct Problem {
  KernelSpec spec;
  int64_t tokens = 0;           ///< T (T_max when masked).
  int64_t ldx = 0;              ///< elements between rows of x, >= 2H.
  float scaleUb = 0;            ///< *scale_ub, used when spec.hasScaleUb.
  float globalScale = 0;        ///< *global_scale, used by NVFP4 (finite, > 0).
  int64_t numExperts = 1;       ///< E; must be 1 unless spec.masked.
  std::vector<int32_t> maskedM; ///< live rows per expert (masked only), each in 0..T.
  uint8_t poison = 0xAB;        ///< initial content of q and scales; unwritten bytes keep it.
};

/// What the kernel must produce, plus the intermediates the comparison needs.
/// Per-scale vectors are indexed (e * T + t) * NG + j whatever the layout,
/// per-element vectors (e * T + t) * H + i; entries of rows that are not
/// computed (t >= maskedM[e]) hold NaN.
struct Result {
  std::vector<uint8_t> q;           ///< outputBytes(spec, T, E) bytes.
  std::vector<uint8_t> scales;      ///< scaleBufferBytes(spec, T, E) bytes, in the spec's layout.
  std::vector<float> scaleValue;    ///< the fp32 s of each group.
  std::vector<float> preRound;      ///< y / s of each element, before saturate_round.
  std::vector<float> scalePreRound; ///< s before the power-of-two rounding; under
                                    ///< floor, amax / 2^EMAX (the rounding's boundaries
                                    ///< are its powers of two, as under ceil); NVFP4:
                                    ///< min(global_scale * amax / 6, 448) before E4M3.
  /// NVFP4 only (empty otherwise): y of each element, indexed as preRound, so
  /// that a group whose E4M3 scale is one step off is judged by y * r of the
  /// device's scale. NVFP4's scaleValue is the decoded E4M3 block scale and
  /// preRound is y * r with r = 1 / (scale / global_scale).
  std::vector<float> yValue;
};

/// Computes docs/contract.md section 1 for input `x` ([E][T][ldx] elements of
/// spec.inDtype) and lays the results out as the kernel does. Rows t >=
/// maskedM[e] are neither read nor written (they keep the poison byte), nor
/// are padding rows in masked mode; unmasked padding rows get zero scales.
/// Throws std::invalid_argument for an inconsistent problem.
Result run(const Problem& problem, const void* x);

/// Outcome of comparing a device result with the reference.
struct CompareReport {
  int64_t elements = 0;            ///< quantized values compared (live rows).
  int64_t mismatches = 0;          ///< of those, wrong beyond the tolerance.
  int64_t allowanceUsed = 0;       ///< of those, different but at a rounding boundary.
  int64_t scales = 0;              ///< scales compared (live rows).
  int64_t scaleMismatches = 0;     ///< of those, wrong beyond the tolerance.
  int64_t scaleAllowanceUsed = 0;  ///< ue8m0 scales one power of two off, at a boundary.
  int64_t untouchedBytes = 0;      ///< bytes that must keep poison / padding zeros.
  int64_t untouchedMismatches = 0; ///< of those, changed.
  std::string firstMismatch;       ///< the first bad value, located; empty when ok().

  bool ok() const { return mismatches == 0 && scaleMismatches == 0 && untouchedMismatches == 0; }
  /// One line with every count and, on failure, the first mismatch.
  std::string summary() const;
};

/// Compares a device result (`q`: outputBytes, `scales`: scaleBufferBytes) with
/// `reference` = run(problem, x), with docs/contract.md's tolerance: scales within 1e-6
/// relative (ue8m0: one power of two off only where the pre-rounding scale lies
/// within 2e-6 relative of a power of two; the group's values are then checked
/// against the device's scale); quantized values identical (any fp8 NaN equals
/// any NaN), except that where y / s lies within 2e-6 relative of a rounding
/// boundary either neighbour of that boundary is accepted. Bytes the kernel
/// must not write, and padding, must equal the reference's bytes exactly.
CompareReport compare(const Problem& problem, const Result& reference, const uint8_t* q,
                      const uint8_t* scales);

// ---- inputs -----------------------------------------------------------------------

/// Deterministic input [numExperts][tokens][ldx] in spec.inDtype: roughly
/// normal values times `scale` in columns 0..2H-1, and NaN / Inf / huge
/// garbage in the padding columns 2H..ldx-1 so that reading them shows.
std::vector<uint8_t> makeInput(const KernelSpec& spec, int64_t tokens, int64_t ldx,
                               int64_t numExperts, uint64_t seed, float scale = 4.0f);

/// Special contents for one row of x.
enum class RowPattern { Zeros, NaNs, Infs, Huge, Mixed, Edges, Limits, Sweep, Tails };

/// Overwrites columns 0..2H-1 of row `row` (counting across experts: e * T + t)
/// with `pattern`: Zeros; NaNs; Infs (gate and up ±Inf); Huge (values near the
/// dtype's largest finite, both signs); Mixed (zeros of both signs, NaN, ±Inf,
/// huge, subnormal and ordinary values, column by column); Edges (the limits of
/// the kernel's fast division, one theme per group, j % 4: 0, zero, subnormal
/// and tiny gates times huge ups; 1, gates around -87, where 1 + exp(-g)
/// nears 2^126, times huge ups; 2, ordinary values with one y = Inf and one
/// y near 1e38; 3, ups from 2^-30 to 2^29, so most quotients are tiny);
/// Limits (swiglu's clamp: gates and ups at, just inside and just outside
/// +-7 and +-1, NaN, +-Inf and ordinary values, one NaN gate and one NaN up
/// per group); Sweep (every 16-bit gate value over 2^16 / H consecutive rows:
/// the gate of column i is the bf16 (fp16 for fp16 inputs; the bf16 value for
/// fp32) whose bits are (row * H + i) mod 2^16, so a group holds neighbouring
/// values of one binade, and up = 1 + (i mod 8) / 8: each y is measured by
/// its group's scale and q, which checks the activation's device math at
/// every input the format has); Tails (gates whose z, the exponent of the
/// activation's sigmoid, lies from -86.9 to -89.5, so 1 + exp(-z) nears
/// 2^126 or overflows: its reciprocal is subnormal or 0, g / (1 + exp(-z))
/// tiny or 0; z = g for silu and gelu, alpha g for swiglu, and gelu_tanh's
/// z from gates of about -10; one theme per group, j % 4: 0, ups of
/// +-2^100; 1, ups from 2^60 to 2^99 across the group; 2, ups from 2^20 to
/// 2^50; 3, ordinary gates between tail gates, ups from 2^0 to 2^99; ups
/// capped at the dtype's largest finite value). Gate and up go where
/// spec.gateUp puts them.
void fillRow(const KernelSpec& spec, uint8_t* x, int64_t row, int64_t ldx, RowPattern pattern);

} // namespace bqjit::ref
