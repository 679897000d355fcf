// bqjit kernel template: y = act(gate) * up, quantized per group of G columns
// with fp32 (or power-of-two) scales, or to fp4 (NVFP4, MXFP4) with scale
// bytes. docs/contract.md sections 1, 2, 6, 7 and 8 are the contract.
//
// Compiled by NVRTC for one specialization: the generated source defines a
// struct of named constants (kHidden, kGroupSize, kInDtype, kActivation,
// kAlpha, kMinScale, ...; see jit/source.cpp) and instantiates silu_mul_quant with it.
// Every choice is a compile-time constant: an activation is a specialization
// of Activation<S>, not a branch at run time. It includes no header, so a
// cold compile stays fast.
#pragma once

namespace bqjit_kernel {

typedef long long i64;
typedef unsigned int u32;

enum : int { kBF16 = 0, kFP16 = 1, kFP32 = 2 };
enum : int { kE4M3 = 0, kE5M2 = 1, kInt8 = 2, kE2M1 = 3 };
enum : int { kRow = 0, kCol = 1, kColTma = 2, kUe8m0Packed = 3, kBytes = 4, kSwizzled128x4 = 5 };
enum : int { kSilu = 0, kSwiglu = 1, kGeluTanh = 2, kGelu = 3 };
enum : int { kSplit = 0, kInterleaved = 1 };
enum : int { kCeil = 0, kFloor = 1 };

// Lanes a team of T threads occupies: T rounded up to a power of two.
template <int T> struct TeamSlot {
  static constexpr int value = T <= 1 ? 1 : T <= 2 ? 2 : T <= 4 ? 4 : T <= 8 ? 8 : T <= 16 ? 16 : 32;
};

template <int IN> struct InBytes { static constexpr int value = IN == kFP32 ? 4 : 2; };

// ---- input: a vector of VEC elements is loaded as raw 32-bit words ----------

template <int BYTES> struct Raw {
  static constexpr int kWords = BYTES >= 4 ? BYTES / 4 : 1;
  u32 w[kWords];
};

// Inputs are read exactly once: the non-coherent path, no L1 allocation.
// PREFETCH256: the L2 fetches the 256 bytes around each request from memory
// (Geometry::kPrefetch256 says where that pays). EVICT_FIRST: the lines the
// loads bring into the L2 are the first it evicts (an L2::evict_first cache
// policy), so that streaming through the input pushes out its own lines
// before the lines written ahead of the kernel (Geometry::kEvictFirst). The
// policy lives in a register of the asm block (NVVM takes no named operands).
#define BQJIT_LOAD_RAW(PRE, QUAL, POL)                                                             \
  if constexpr (BYTES == 16) {                                                                     \
    asm volatile(PRE "ld.global.nc.L1::no_allocate" QUAL ".v4.u32 {%0,%1,%2,%3}, [%4]" POL         \
                 : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3])                          \
                 : "l"(p));                                                                        \
  } else if constexpr (BYTES == 8) {                                                               \
    asm volatile(PRE "ld.global.nc.L1::no_allocate" QUAL ".v2.u32 {%0,%1}, [%2]" POL               \
                 : "=r"(r.w[0]), "=r"(r.w[1])                                                      \
                 : "l"(p));                                                                        \
  } else if constexpr (BYTES == 4) {                                                               \
    asm volatile(PRE "ld.global.nc.L1::no_allocate" QUAL ".u32 %0, [%1]" POL                       \
                 : "=r"(r.w[0])                                                                    \
                 : "l"(p));                                                                        \
  } else {                                                                                         \
    unsigned short h;                                                                              \
    asm volatile(PRE "ld.global.nc.L1::no_allocate" QUAL ".u16 %0, [%1]" POL : "=h"(h) : "l"(p));  \
    r.w[0] = h;                                                                                    \
  }
#define BQJIT_EVICT_FIRST_POLICY                                                                   \
  "{\n.reg .b64 pol;\ncreatepolicy.fractional.L2::evict_first.b64 pol, 1.0;\n"
template <int BYTES, bool PREFETCH256 = false, bool EVICT_FIRST = false>
__device__ __forceinline__ Raw<BYTES> loadRaw(const void* p) {
  Raw<BYTES> r;
  if constexpr (EVICT_FIRST && PREFETCH256) {
    BQJIT_LOAD_RAW(BQJIT_EVICT_FIRST_POLICY, ".L2::cache_hint.L2::256B", ", pol;\n}")
  } else if constexpr (EVICT_FIRST) {
    BQJIT_LOAD_RAW(BQJIT_EVICT_FIRST_POLICY, ".L2::cache_hint", ", pol;\n}")
  } else if constexpr (PREFETCH256) {
    BQJIT_LOAD_RAW("", ".L2::256B", ";")
  } else {
    BQJIT_LOAD_RAW("", "", ";")
  }
  return r;
}
#undef BQJIT_EVICT_FIRST_POLICY
#undef BQJIT_LOAD_RAW

// The VEC values of a raw vector as floats. Every word is ORed with dep, which
// is zero at run time (see siluMulFast); for bf16 that costs no instruction:
// the shift becomes a byte permute and the mask a three-input LOP.
template <int IN, int VEC, int BYTES>
__device__ __forceinline__ void unpack(const Raw<BYTES>& r, float (&out)[VEC], u32 dep = 0u) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const u32 w = r.w[k / (IN == kFP32 ? 1 : 2)];
    if constexpr (IN == kFP32) {
      out[k] = __uint_as_float(w | dep);
    } else if constexpr (IN == kBF16) {
      out[k] = __uint_as_float(k % 2 == 0 ? __byte_perm(w, dep, 0x1054) : (w & 0xffff0000u) | dep);
    } else {
      const unsigned short h = static_cast<unsigned short>(((w | dep) >> (16 * (k % 2))) & 0xffffu);
      asm("cvt.f32.f16 %0, %1;" : "=f"(out[k]) : "h"(h));
    }
  }
}

// ---- output conversions -------------------------------------------------------

// The output format's trait: kBits per value, QMAX (kMax) and its correctly
// rounded reciprocal, MIN_SCALE, and kEmax, the exponent of the largest
// normal (docs/contract.md section 7's EMAX).
template <int OUT> struct QuantTraits;
// kEmax: the exponent of the largest normal (docs/contract.md section 7's EMAX).
// MIN_SCALE is the specialization's kMinScale (the host's minScale(), or the
// spec's min_scale).
template <> struct QuantTraits<kE4M3> {
  static constexpr int kBits = 8;
  static constexpr int kEmax = 8;
  static constexpr float kMax = 448.0f;
  static constexpr float kInvMax = 0x1.24924ap-9f; // 1 / 448, correctly rounded
};
template <> struct QuantTraits<kE5M2> {
  static constexpr int kBits = 8;
  static constexpr int kEmax = 15;
  static constexpr float kMax = 57344.0f;
  static constexpr float kInvMax = 0x1.24924ap-16f; // 1 / 57344, correctly rounded
};
template <> struct QuantTraits<kInt8> {
  static constexpr int kBits = 8;
  static constexpr float kMax = 127.0f;
  static constexpr float kInvMax = 0x1.020408p-7f; // 1 / 127, correctly rounded
};
// e2m1 (docs/contract.md section 8): two values a byte. MIN_SCALE is the smallest
// E8M0 scale, 2^-127 (an fp32 subnormal); NVFP4's scales do not use it.
template <> struct QuantTraits<kE2M1> {
  static constexpr int kBits = 4;
  static constexpr int kEmax = 2;
  static constexpr float kMax = 6.0f;
  static constexpr float kInvMax = 0x1.555556p-3f; // 1 / 6, correctly rounded
  static constexpr float kMinScale = 0x1p-127f;
};

// PTX's conversions to e2m1x2 and ue8m0x2 exist only for the
// architecture-specific and family-specific targets of Blackwell (sm_100a/f,
// sm_103a/f, sm_110f, sm_120a/f, ...), for which NVRTC defines
// __CUDA_ARCH_FAMILY_SPECIFIC__ (1000, 1200, ...). Plain sm_100 and sm_120
// (and older GPUs) convert in software, to the same bits.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FAMILY_SPECIFIC__) && __CUDA_ARCH_FAMILY_SPECIFIC__ >= 1000
#define BQJIT_HW_FP4_CVT 1
#else
#define BQJIT_HW_FP4_CVT 0
#endif

// fp32 -> fp8 with saturation to the largest finite value and round to nearest
// even, NaN kept as NaN. In software for targets without the cvt instruction.
template <int OUT> __device__ __forceinline__ u32 fp8Soft(float f) {
  constexpr int kMantBits = OUT == kE4M3 ? 3 : 2;
  constexpr int kBias = OUT == kE4M3 ? 7 : 15;
  constexpr int kShift = 23 - kMantBits;
  // Smallest normal of the target format, and the subnormal step's inverse.
  constexpr float kMinNormal = OUT == kE4M3 ? 0.015625f : 6.103515625e-05f;
  constexpr float kSubInv = OUT == kE4M3 ? 512.0f : 65536.0f;
  const u32 bits = __float_as_uint(f);
  const u32 sign = (bits >> 24) & 0x80u;
  if (f != f)
    return sign | 0x7fu;
  const float a = fminf(fabsf(f), QuantTraits<OUT>::kMax);
  if (a < kMinNormal)
    return sign | static_cast<u32>(rintf(a * kSubInv)); // exact scaling, then RNE
  u32 ab = __float_as_uint(a);
  ab += ((1u << (kShift - 1)) - 1u) + ((ab >> kShift) & 1u);
  ab >>= kShift;
  return sign | (ab - (static_cast<u32>(127 - kBias) << kMantBits));
}

// Two values to two fp8 bytes: lo in bits 0..7, hi in bits 8..15.
template <int OUT> __device__ __forceinline__ u32 fp8Pair(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned short r;
  if constexpr (OUT == kE4M3)
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  else
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return fp8Soft<OUT>(lo) | (fp8Soft<OUT>(hi) << 8);
#endif
}

// fp32 -> e2m1 code (sign in bit 3): clamp to 6, round to nearest even.
// The code of a = |v| is rint(2a) below 2 (steps of 0.5: codes 0..4),
// rint(a) + 2 from 2 to 4 and rint(a / 2) + 4 from 4 to 6; each of the three
// is at least the right one outside its range, so the code is their minimum
// (and at most 7). Each rint is one FMA's rounding of the exact a * k + 1.5 *
// 2^23 + offset, whose low mantissa bits are then the code: FMA-pipe work
// and three min instead of the float-to-int conversions or bit arithmetic
// of the ALU pipe, which runs at half the FMA pipe's rate (equal to the bit
// arithmetic it replaced over all 2^32 inputs, checked on the CPU). -0 gives
// 0x8; NaN (unspecified by the contract) gives 0x7 with its sign.
// e2m1CodeOfAbs gives the float 1.5 * 2^23 + code of |v|, whose low four
// bits are the code (bit 3 clear).
__device__ __forceinline__ float e2m1CodeOfAbs(float v) {
  constexpr float kMagic = 12582912.0f; // 1.5 * 2^23: its ulp is 1
  const float a = fabsf(v);
  return fminf(fminf(__fmaf_rn(a, 2.0f, kMagic), __fadd_rn(a, kMagic + 2.0f)),
               fminf(__fmaf_rn(a, 0.5f, kMagic + 4.0f), kMagic + 7.0f));
}
__device__ __forceinline__ u32 e2m1Soft(float v) {
  return ((__float_as_uint(v) >> 28) & 0x8u) | (__float_as_uint(e2m1CodeOfAbs(v)) & 0xfu);
}

// N (4 or 8) values to 4N bits of codes, value k in bits 4k..4k+3 (the
// packing of e2m1Pair, N / 2 times over). The codes and the signs are shifted
// into place by funnel shifts, one each a value (a code's nibble in at the
// top, the earlier ones moving down; a value's top nibble, its sign in bit 3,
// in at the bottom), and one bit select joins them: where e2m1Soft's sign and
// mask and the packing took about four instructions a value.
template <int N> __device__ __forceinline__ u32 e2m1Nibbles(const float (&v)[N]) {
  static_assert(N == 4 || N == 8, "a half word or a word");
  u32 codes = 0u, signs = 0u;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    codes = __funnelshift_r(codes, __float_as_uint(e2m1CodeOfAbs(v[k])), 4);
    signs = __funnelshift_l(__float_as_uint(v[N - 1 - k]), signs, 4);
  }
  if constexpr (N == 4)
    codes >>= 16;
  return (codes & 0x77777777u) | (signs & 0x88888888u & (N == 8 ? ~0u : 0xffffu));
}

// Two values to one byte: lo in bits 0..3, hi in bits 4..7.
__device__ __forceinline__ u32 e2m1Pair(float lo, float hi) {
#if BQJIT_HW_FP4_CVT
  unsigned short r;
  asm("{\n\t.reg .b8 pair;\n\tcvt.rn.satfinite.e2m1x2.f32 pair, %1, %2;\n\tcvt.u16.u8 %0, pair;\n\t}"
      : "=h"(r)
      : "f"(hi), "f"(lo));
  return r;
#else
  return e2m1Soft(lo) | (e2m1Soft(hi) << 4);
#endif
}

// The value of a non-negative E4M3 code (0x00..0x7E), exactly.
__device__ __forceinline__ float e4m3Value(u32 code) {
  const float normal = __uint_as_float((code << 20) + (120u << 23));
  const float subnormal = static_cast<float>(code & 7u) * 0x1p-9f;
  return code < 8u ? subnormal : normal;
}

__device__ __forceinline__ u32 int8Sat(float v) {
  if (v != v)
    return 0u;
  const float r = fminf(fmaxf(rintf(v), -128.0f), 127.0f);
  return static_cast<u32>(static_cast<int>(r)) & 0xffu;
}

// Two values to their codes, lo in the low kBits bits, hi in the next kBits.
template <int OUT> __device__ __forceinline__ u32 quantPair(float lo, float hi) {
  if constexpr (OUT == kInt8)
    return int8Sat(lo) | (int8Sat(hi) << 8);
  else if constexpr (OUT == kE2M1)
    return e2m1Pair(lo, hi);
  else
    return fp8Pair<OUT>(lo, hi);
}

// Stores VEC output bytes (VEC is 1, 2, 4, 8 or 16).
template <int VEC> __device__ __forceinline__ void storeBytes(unsigned char* p, const u32 (&w)[(VEC + 3) / 4]) {
  if constexpr (VEC == 16)
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  else if constexpr (VEC == 8)
    *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
  else if constexpr (VEC == 4)
    *reinterpret_cast<u32*>(p) = w[0];
  else if constexpr (VEC == 2)
    *reinterpret_cast<unsigned short*>(p) = static_cast<unsigned short>(w[0]);
  else
    *p = static_cast<unsigned char>(w[0]);
}

// ---- division ----------------------------------------------------------------
//
// A correctly rounded a / b is what docs/contract.md asks for. The compiler's div.rn
// computes, per division: rc = rcp.approx(b); r = rc + rc * (1 - b * rc);
// q0 = a * r; q1 = q0 + r * (a - b * q0), each step one rounding (FMA), and
// checks (FCHK) per division whether a and b lie in the range where q1 is
// the correctly rounded quotient, calling a slow routine where they do not.
// Here r is computed once per divisor (once per group for y / s), the range
// check is made once per thread or team from bounds the kernel already has,
// and the slow routine (__fdiv_rn) runs for a whole team where a bound fails.
// Inside the range the result is bit-identical to __fdiv_rn: the same r, the
// same roundings. The residual's sign is flipped so that a zero dividend
// keeps its sign (-0 / b = -0), which the FMA with +0 would lose.
__device__ __forceinline__ float rcpRefined(float b) {
  float rc;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(rc) : "f"(b));
  return fmaf(rc, fmaf(-b, rc, 1.0f), rc);
}

__device__ __forceinline__ float divFast(float a, float b, float r) {
  const float q0 = a * r;
  const float negResidual = fmaf(b, q0, -a);
  return fmaf(-r, negResidual, q0);
}

// 1 / b within one ulp (rcp.approx; b must be a normal number below 2^126).
// The activation's sigma = 1 / (1 + exp(-z)) takes it: docs/contract.md
// allows the activation's device math an error as long as section 1's
// tolerance holds for every input, and y = a * (1 / d) * b is then within
// about 3.5 ulp (4.2e-7 relative) of the correctly rounded a / d * b, below
// the 1e-6 the scales may differ by. Two instructions instead of the six of
// a correctly rounded division. y / s stays a correctly rounded division,
// as the contract asks.
__device__ __forceinline__ float rcpApprox(float b) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(b));
  return r;
}

// max and min that return NaN if either operand is NaN (fmaxf and fminf
// ignore a NaN).
__device__ __forceinline__ float maxNaN(float a, float b) {
  float m;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(m) : "f"(a), "f"(b));
  return m;
}
__device__ __forceinline__ float minNaN(float a, float b) {
  float m;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(m) : "f"(a), "f"(b));
  return m;
}

// The largest of a team's amax values, NaN (the fast path's signal) winning
// as with max.NaN. Non-negative floats and their NaNs order as unsigned
// integers do, so where the team is a whole warp redux.sync.max.u32 takes one
// instruction for the five dependent shuffle-max pairs, the chain a decode
// launch waits on; two halves of a warp take two (WARP_WIDE: every lane of
// the warp comes here or has exited). Other teams shuffle.
template <int TEAM, bool WARP_WIDE>
__device__ __forceinline__ float teamMaxNaN(float v, unsigned teamMask) {
  if constexpr (TEAM == 32) {
    u32 r;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(__float_as_uint(v)));
    return __uint_as_float(r);
  } else if constexpr (TEAM == 16 && WARP_WIDE) {
    const bool low = (threadIdx.x & 16u) == 0;
    const u32 b = __float_as_uint(v);
    u32 lo, hi;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(lo) : "r"(low ? b : 0u));
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(hi) : "r"(low ? 0u : b));
    return __uint_as_float(low ? lo : hi);
  } else {
#pragma unroll
    for (int off = TEAM / 2; off > 0; off /= 2)
      v = maxNaN(v, __shfl_xor_sync(teamMask, v, off, TEAM));
    return v;
  }
}

// 1 + exp(x) in six instructions (the toolkit's expf takes eight, and one
// more for the 1 +): x * log2(e) = t + c exactly, t the rounded product and c
// its remainder (an FMA, exact) plus x times log2(e)'s own remainder; exp(x)
// = 2^t * 2^c with 2^c = 1 + c * ln 2 to within 2^-35 (|c| <= 2^-17 where 2^t
// is finite and normal). Within about 2 ulp of 1 + exp(x) besides ex2's own
// error for x below 88.7 and above -2.3e38 (2^t flushed to 0 gives 1). Not
// for every x: an infinite x or one beyond -2.3e38 gives NaN, and an x from
// 88.7 up an infinity of either sign (c's sign is arbitrary there). Callers
// keep x below 88.7 (or clamp it there) and send a NaN y to the exact path,
// which takes onePlusExpExact.
inline constexpr float kLog2e = 0x1.715476p+0f;   // log2(e) rounded to fp32
inline constexpr float kLog2eLo = 0x1.4ae0cp-26f; // log2(e) - kLog2e
inline constexpr float kLn2 = 0x1.62e430p-1f;
__device__ __forceinline__ float onePlusExp(float x) {
  const float t = __fmul_rn(x, kLog2e);
  const float c = fmaf(x, kLog2eLo, fmaf(x, kLog2e, -t));
  float p;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(p) : "f"(t));
  return fmaf(p, fmaf(c, kLn2, 1.0f), 1.0f);
}

// 1 + exp(x) for every x (the exact path's), by the steps of the toolkit's
// expf (libdevice) with its last product and the addition fused: one
// rounding fewer than 1.0f + expf(x). The saturating first step keeps the
// exponent in range for infinite and huge x.
__device__ __forceinline__ float onePlusExpExact(float x) {
  float t, j, p;
  asm("fma.rn.sat.f32 %0, %1, 0f3BBB989D, 0f3F000000;" : "=f"(t) : "f"(x)); // x*log2(e)/252 + 1/2
  asm("fma.rm.f32 %0, %1, 0f437C0000, 0f4B400001;" : "=f"(j) : "f"(t));     // the exponent, biased
  float f = fmaf(x, kLog2e, -(j - __int_as_float(0x4B40007F)));
  f = fmaf(x, kLog2eLo, f); // x*log2(e) - exponent, to about 2^-48
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(p) : "f"(f));
  return fmaf(p, __int_as_float(__float_as_int(j) << 23), 1.0f);
}

// Lane-wise minimum of two packed pairs of 16-bit floats (minPair), and the
// minimum and maximum that keep a NaN (NaN in, NaN out, as torch.clamp; the
// contract's clamps in section 6).
#define BQJIT_PAIR_OP(NAME, OP)                                                                    \
  template <int IN> __device__ __forceinline__ u32 NAME(u32 a, u32 b) {                            \
    u32 m;                                                                                         \
    if constexpr (IN == kBF16)                                                                     \
      asm(OP ".bf16x2 %0, %1, %2;" : "=r"(m) : "r"(a), "r"(b));                                    \
    else                                                                                           \
      asm(OP ".f16x2 %0, %1, %2;" : "=r"(m) : "r"(a), "r"(b));                                     \
    return m;                                                                                      \
  }
BQJIT_PAIR_OP(minPair, "min")
BQJIT_PAIR_OP(minNaNPair, "min.NaN")
BQJIT_PAIR_OP(maxNaNPair, "max.NaN")
#undef BQJIT_PAIR_OP

// (inline: external linkage, so that no name in the PTX carries NVRTC's
// per-compile unique id of internal-linkage objects and equal sources give
// equal PTX.)
// Gates at or below this make 1 + exp(-g) >= 2^126, whose approximate
// reciprocal flushes to zero: such a thread takes the exact division.
inline constexpr float kFastGateMin = -87.0f;
// y / s by the fast path needs s < 2^126 (a normal reciprocal) and quotients
// far from overflow; only a scale upper bound can break the second.
inline constexpr float kFastScaleMax = 8.507059173023461586e37f;    // 2^126
inline constexpr float kFastQuotientMax = 1.329227995784915873e36f; // 2^120

// 2^ceil(log2(s)) for positive s, exactly, by bit manipulation.
__device__ __forceinline__ float pow2Ceil(float s) {
  u32 b = __float_as_uint(s);
  const u32 expBits = b & 0x7f800000u;
  if ((b & 0x007fffffu) != 0u && expBits != 0x7f800000u)
    b = expBits + 0x00800000u;
  return __uint_as_float(b);
}

// 1 / s for s = 2^e, e in -127..127, exactly (2^127 and 2^-127, a subnormal, included).
__device__ __forceinline__ float pow2Reciprocal(float s) {
  const u32 b = __float_as_uint(s);
  // 2^-127 (byte 0, the one subnormal s) has no exponent bits: its reciprocal is 2^127.
  if (b < 0x00800000u)
    return __uint_as_float(0x7f000000u);
  const u32 biased = b >> 23; // 1..254
  return biased == 254u ? __uint_as_float(0x00400000u) : __uint_as_float((254u - biased) << 23);
}

// The largest power-of-two scale: E8M0 byte 254. Byte 255 (NaN) is never written.
inline constexpr float kMaxPow2Scale = 1.7014118346046923173e38f; // 2^127

// The exponent of the OCP MX scale (docs/contract.md section 7, scale_rounding floor)
// of a group's amax (>= 0, not NaN): floor(log2(amax)) - EMAX, read from
// amax's fp32 bits (subnormals included) and clamped to -127..127; amax 0
// gives -127, an infinite amax 127.
template <int OUT> __device__ __forceinline__ int floorMxExponent(float amax) {
  const u32 b = __float_as_uint(amax);
  const int biased = static_cast<int>(b >> 23);
  int e;
  if (b == 0u)
    e = -127;
  else if (biased == 255)
    e = 127;
  else if (biased == 0)
    e = -118 - __clz(static_cast<int>(b)) - QuantTraits<OUT>::kEmax; // subnormal: 2^(-149 + msb)
  else
    e = biased - 127 - QuantTraits<OUT>::kEmax;
  return e < -127 ? -127 : (e > 127 ? 127 : e);
}

// 2^e for e in -127..127, exactly (2^-127 is an fp32 subnormal).
__device__ __forceinline__ float exp2Exact(int e) {
  return e == -127 ? __uint_as_float(0x00400000u) : __uint_as_float(static_cast<u32>(e + 127) << 23);
}

// ---- activations (docs/contract.md section 6) ------------------------------------------------
//
// Activation<S> for the spec's kActivation. The sigmoid family (silu, swiglu,
// gelu_tanh) computes y = a / (1 + exp(-z)) * b and gives a, z and b
// (kSigmoid); the kernel divides by the fast or the exact path, and the fast
// one needs z > kFastGateMin. gelu gives y itself. Intermediate products are
// written with __fmul_rn / __fadd_rn so that no contraction can change a
// rounding: the CPU reference (reference/) rounds each step the same way.

template <class S, int ACT = S::kActivation> struct Activation;

template <class S> struct Activation<S, kSilu> {
  static constexpr bool kSigmoid = true;
  static constexpr bool kScaledTail = false; // gates <= -87 are the rare path
  template <bool kClamped = false>
  __device__ static __forceinline__ void terms(float g, float u, float& a, float& z, float& b) {
    a = g;
    z = g;
    b = u;
  }
};

// g' * sigma(alpha * g') * (u' + beta) with g' = min(g, limit) and u' =
// clamp(u, -limit, limit) by the NaN-propagating min and max (one instruction
// each), so that a NaN stays NaN (fminf would make it the limit). beta = 0 adds nothing: u' + 0 would turn -0 into
// +0, and swiglu(1, 0) is silu exactly. kClamped: g and u are clamped
// already (PackedClamp).
template <class S> struct Activation<S, kSwiglu> {
  static constexpr bool kSigmoid = true;
  static constexpr bool kScaledTail = false; // alpha * g <= -87 is the rare path
  template <bool kClamped = false>
  __device__ static __forceinline__ void terms(float g, float u, float& a, float& z, float& b) {
    if constexpr (S::kHasLimit && !kClamped) {
      g = minNaN(g, S::kLimit);
      u = maxNaN(minNaN(u, S::kLimit), -S::kLimit);
    }
    a = g;
    z = __fmul_rn(S::kAlpha, g);
    if constexpr (S::kBeta != 0.0f)
      b = __fadd_rn(u, S::kBeta);
    else
      b = u;
  }
};

// 0.5 * g * (1 + tanh(w)) * u with w = sqrt(2/pi) * (g + 0.044715 * g^3),
// computed as g / (1 + exp(-2w)) * u: the same function (0.5 * (1 + tanh(w))
// = sigma(2w)) without the cancellation of 1 + tanh(w) for w << 0, where a
// one-ulp difference of tanhf would change y by a large relative amount.
// z = 2w is multiplied out as g * (k1 + k3 * g^2): three operations and
// three roundings where the written order takes six of each (the reference
// rounds the same three steps).
inline constexpr float kGeluTanhK1 = 0x1.988454p+0f; // 2 sqrt(2 / pi)
inline constexpr float kGeluTanhK3 = 0x1.2444f2p-4f; // 2 sqrt(2 / pi) 0.044715
template <class S> struct Activation<S, kGeluTanh> {
  static constexpr bool kSigmoid = true;
  // z = 2w <= -87 from gates of about -10 down, in many groups of wide
  // inputs: the fast path scales its division there (actMulFast) instead of
  // sending the group to the exact path.
  static constexpr bool kScaledTail = true;
  template <bool kClamped = false>
  __device__ static __forceinline__ void terms(float g, float u, float& a, float& z, float& b) {
    a = g;
    z = __fmul_rn(g, __fmaf_rn(kGeluTanhK3, __fmul_rn(g, g), kGeluTanhK1));
    b = u;
  }
};

// erfc(a) for a >= 0 (a NaN or above 10.1 gives erfc(10.1), 0 in fp32), in
// about 28 instructions where the toolkit's erfcf takes about 45: erfc(a) =
// t * 2^(-a^2 log2(e) + P(s)), t = 1 / (1 + a / 2), P a degree-9 polynomial
// in s = kErfcS1 * t + kErfcS0 (t mapped onto [-1, 1] over a in [0, 10.1]),
// fitted (minimax) to log2(erfc(a) / t) + a^2 log2(e) to 6.6e-8. t carries
// the rounding of 1 + a / 2 and the reciprocal's error into the result about
// twice over, so both are corrected (the dlo term and one Newton step). a^2 is
// split exactly (hi + lo) and hi's multiple n of ln 2 taken out by Cody and
// Waite's two constants, so that ex2 sees a small argument; n >= -126 keeps
// 2^n normal, and the last product rounds once into the subnormals, as the
// reference's float(erfc) does. Checked on the CPU against erfc in double over
// every fp32 a in [2^-30, 10.2] with the approximate instructions emulated 1
// (rcp) and 2 (ex2) ulp off either way: 0.5 * erfc within 6.1e-7 relative
// (3.7e-7 with them exact) where it is normal; the toolkit's erfcf promises 4
// ulp (4.8e-7).
inline constexpr float kErfcS1 = 0x1.32b16cp+1f;
inline constexpr float kErfcS0 = -0x1.6562dap+0f;
inline constexpr float kErfcP[10] = {-0x1.9d4ee8p-1f, 0x1.a5ebaap-1f,  0x1.78ea7ap-6f,  -0x1.5df012p-5f,
                                     -0x1.a063c6p-10f, 0x1.6186fcp-8f, -0x1.507cccp-12f, -0x1.9841d8p-11f,
                                     0x1.ba3ca2p-14f,  0x1.4c528ap-14f};
inline constexpr float kLn2Hi = 0x1.62e400p-1f; // ln 2 to 15 bits: n * kLn2Hi is exact
inline constexpr float kLn2Lo = 0x1.7f7d1cp-20f;
__device__ __forceinline__ float erfcFast(float a) {
  a = fminf(a, 10.1f);
  const float d = fmaf(0.5f, a, 1.0f);
  const float dlo = fmaf(0.5f, a, __fsub_rn(1.0f, d)); // (1 + a / 2) - d, exactly
  float t = rcpApprox(d);
  t = fmaf(t, fmaf(-t, dlo, fmaf(-d, t, 1.0f)), t);
  const float s = fmaf(t, kErfcS1, kErfcS0);
  float p = kErfcP[9];
#pragma unroll
  for (int i = 8; i >= 0; --i)
    p = fmaf(p, s, kErfcP[i]);
  const float hi = __fmul_rn(a, a);
  const float lo = fmaf(a, a, -hi);
  const float n = fmaxf(__fsub_rn(fmaf(hi, -kLog2e, 0x1.8p23f), 0x1.8p23f), -126.0f);
  const float r = fmaf(n, -kLn2Lo, fmaf(n, -kLn2Hi, -hi)); // -hi - n ln 2, |r| <= 0.35
  const float x2 = fmaf(r, kLog2e, fmaf(lo, -kLog2e, p));
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x2));
  // 2^n from the bits of n + 1.5 * 2^23 + 127 (an FADD and a shift, no conversion).
  const float pow2n = __int_as_float(__float_as_int(__fadd_rn(n, 0x1.8p23f + 127.0f)) << 23);
  return __fmul_rn(__fmul_rn(t, e), pow2n);
}

// 0.5 * g * (1 + erf(g / sqrt 2)) * u, as g * (0.5 * erfc(-g / sqrt 2)) * u
// (the same function without the cancellation of 1 + erf for g << 0), with
// erfc(-x) = 2 - erfc(x) for x > 0.
inline constexpr float kInvSqrt2 = 0x1.6a09e6p-1f; // 1 / sqrt(2)
template <class S> struct Activation<S, kGelu> {
  static constexpr bool kSigmoid = false;
  __device__ static __forceinline__ float y(float g, float u) {
    const float x = __fmul_rn(g, kInvSqrt2);
    const float e = erfcFast(fabsf(x));
    const float phi = x < 0.0f ? __fmul_rn(0.5f, e) : fmaf(-0.5f, e, 1.0f);
    return __fmul_rn(__fmul_rn(g, phi), u);
  }
};

// ---- where a thread's gate and up lie ------------------------------------------------
//
// A thread works in steps; a step loads kLoads vectors of VEC elements and
// computes kOutVec columns. Split: a gate vector and the up vector H further
// (kOutVec = VEC). Interleaved: one vector of VEC / 2 (gate, up) pairs, so
// that a team's loads stay contiguous; with VEC = 1 (odd G) two adjacent
// elements. Step c of lane l covers output vector c * TPG + l.
template <class S> struct Geometry {
  static constexpr int kInBytes = InBytes<S::kInDtype>::value;
  static constexpr int kVec = S::kVecWidth;
  static constexpr int kVecBytes = kVec * kInBytes;
  static constexpr bool kPairs = S::kGateUp == kInterleaved; // interleaved gate, up
  static constexpr int kLoads = !kPairs || kVec == 1 ? 2 : 1;
  static constexpr int kOutVec = kLoads * kVec / 2;
  static constexpr int kSteps = S::kGroupSize / kOutVec / S::kThreadsPerGroup;
  static_assert(S::kGroupSize % (kOutVec * S::kThreadsPerGroup) == 0, "steps must tile the group");
  static constexpr int kGroupInBytes = S::kGroupSize * (kPairs ? 2 : 1) * kInBytes;

  // Across groups ("transposed" teams). The L2 serves requests, one line
  // of 128 bytes each with any of its four 32-byte sectors, at a fixed rate.
  // A load instruction makes one request a line it touches: where a team's
  // step reads one sector and no other team reads that line in the same
  // instruction (teams of 2 at G = 32 on interleaved input: each group a line
  // of its own), every request carries one sector, and the L2's tag stage
  // limits the kernel (88% busy, 13% slower than G = 128; Nsight Compute,
  // H200). There a team of TPG * kAcrossGroups threads takes kAcrossGroups
  // consecutive groups of a row instead, kStepsPerGroup steps of every lane in
  // each, so that an instruction reads two or more sectors of each line it
  // touches. The team takes the fewest groups that make requests of two
  // sectors (2 for gpt-oss's teams of 2): teams of 4 groups, whole lines a
  // request, were about 0.7% slower on the H200 (more reductions and scales a
  // thread), and 2 divides more rows (gpt-oss's H = 2880 has 90 groups).
  // Where requests carry two sectors already (split input
  // at G = 32, G = 64) the mapping gains nothing and its per-group work (a
  // reduction and a scale a group for every thread) costs 1-2%, so it is not
  // taken. Same threads a block and the same groups a block, so the host's
  // grid is unchanged; the scale layout's task order must keep a team's
  // groups in one row (row and bytes; swizzled_128x4 up to 4), and in one
  // block.
  static constexpr int kSectorsPerRequest =
      S::kThreadsPerGroup * kVecBytes * (kGroupInBytes >= 128 ? 1 : 128 / kGroupInBytes) / 32;
  // Whether a team of TPG * P lanes may take P groups (swizzled_128x4's task
  // order keeps 4 consecutive groups in a row).
  __device__ static constexpr bool acrossFits(int p) {
    return p > 1 && kSteps % p == 0 && S::kThreadsPerGroup * p <= 32 &&
           ((S::kThreadsPerGroup * p) & (S::kThreadsPerGroup * p - 1)) == 0 &&
           S::kThreadsPerGroup * p * kVecBytes >= 64 && (S::kHidden / S::kGroupSize) % p == 0 &&
           S::kGroupsPerBlock % p == 0 && (S::kScaleLayout != kSwizzled128x4 || 4 % p == 0);
  }
  __device__ static constexpr int acrossGroups() {
    if (kSectorsPerRequest > 1 || TeamSlot<S::kThreadsPerGroup>::value != S::kThreadsPerGroup ||
        !(S::kScaleLayout == kRow || S::kScaleLayout == kBytes ||
          S::kScaleLayout == kSwizzled128x4))
      return 1;
    for (int p = 2; p <= kSteps; p *= 2)
      if (acrossFits(p))
        return p;
    return 1;
  }
  static constexpr int kAcrossGroups = acrossGroups();
  static constexpr bool kAcross = kAcrossGroups > 1;
  static constexpr int kStepsPerGroup = kSteps / kAcrossGroups;
  // Lanes of a team (a power of two, aligned in the warp; the lanes past TPG
  // of a team of any size only take part in its reductions), and the amax
  // values a thread keeps (one a group).
  static constexpr int kTeamLanes =
      kAcross ? S::kThreadsPerGroup * kAcrossGroups : TeamSlot<S::kThreadsPerGroup>::value;
  static constexpr int kGroupsPerTeam = kAcrossGroups;
  // A step of a team reads kTeamLanes vectors in a row of each input. Where
  // that is half a 128-byte line (G = 64 and 96 in teams of 4 on an H200,
  // gpt-oss's interleaved G = 32 in teams of 4 lanes across two groups),
  // asking the L2 to fetch 256 bytes a request was 0.3-2.4% faster at T >=
  // 1024; where a step reads a whole line (G = 128 in teams of 8) it was up
  // to 1.8% slower, a sector (split G = 32 in teams of 2) 1.2-1.6% slower,
  // and FP4's 16-byte steps 0.4-0.8% slower (NVIDIA H200, bench/NOTES.md,
  // ninth session).
  static constexpr bool kPrefetch256 =
      S::kOutDtype != kE2M1 && kTeamLanes * kVecBytes >= 64 && kTeamLanes * kVecBytes < 128;
  // Threads of two or more vectors an input (the many-token shapes on an
  // H200) read with an evict_first policy: the lines written before the
  // kernel (the producer's output, or a benchmark's flush) stay in the L2
  // instead of being written back while the kernel reads. 0.4-3% faster at T
  // >= 1024 (2048 x 8192 x 64: 25.04 -> 24.28 us); 1% slower in threads of
  // one vector (the few-token shapes, one wave or less) and for FP4, which
  // keep the default policy. Not for gelu_tanh and gelu either: ptxas then
  // took 48 registers for gelu_tanh instead of 40, and with fewer warps to
  // hide its math it ran 4-7% slower (NVIDIA H200, bench/NOTES.md, tenth
  // session).
  static constexpr bool kEvictFirst = S::kOutDtype != kE2M1 && kSteps >= 2 &&
                                      (S::kActivation == kSilu || S::kActivation == kSwiglu);
  // The team's group that step c of a lane is in.
  __device__ static __forceinline__ constexpr int groupOfStep(int c) {
    return kAcross ? c / kStepsPerGroup : 0;
  }

  // Load i of step c of lane l, from the first input of the team's (first) group.
  __device__ static __forceinline__ const unsigned char* at(const unsigned char* in, int c, int lane,
                                                           int i) {
    // The vector's index in its group, and the group's offset from `in`.
    const int v =
        kAcross ? (c % kStepsPerGroup) * kTeamLanes + lane : c * S::kThreadsPerGroup + lane;
    const unsigned char* group = kAcross ? in + groupOfStep(c) * kGroupInBytes : in;
    if constexpr (kPairs)
      return group + (v * kLoads + i) * kVecBytes;
    else // up lies H elements after gate
      return (i == 0 ? group : group + static_cast<i64>(S::kHidden) * kInBytes) + v * kVecBytes;
  }
  // Gate and up of a step's kOutVec columns from its loaded values.
  __device__ static __forceinline__ void split(const float (&v)[kLoads * kVec], float (&g)[kOutVec],
                                               float (&u)[kOutVec]) {
#pragma unroll
    for (int k = 0; k < kOutVec; ++k) {
      g[k] = kPairs ? v[2 * k] : v[k];
      u[k] = kPairs ? v[2 * k + 1] : v[kVec + k];
    }
  }
};

// swiglu's clamps on the raw 16-bit inputs, two values an instruction
// (min.NaN / max.NaN of packed pairs), where the limit is exactly a value
// of the input format (kLimitPair, from the host: 7 is, 7.1 is not in
// bf16): min(g, L) and clamp(u, -L, L) select one of their operands, so
// clamping before or after the widening to fp32 gives the same value, NaN
// kept. Split input clamps the gate vector's words with (L, L) and the up
// vector's with (L, L) then (-L, -L); interleaved words hold (gate, up)
// and take (L, L) then (-inf, -L). 1.5 instructions an element instead of 3
// (split), 2 instead of 3 (interleaved).
template <class S> struct PackedClamp {
  static constexpr bool kOn = S::kActivation == kSwiglu && S::kHasLimit && S::kInDtype != kFP32 &&
                              S::kLimitPair != 0u;
  static constexpr u32 kUpper = S::kLimitPair;              // (L, L)
  static constexpr u32 kLower = S::kLimitPair ^ 0x80008000u; // (-L, -L)
  // -inf in the low half (the gate's), -L in the high half (the up's)
  static constexpr u32 kLowerPairs =
      (kLower & 0xffff0000u) | (S::kInDtype == kBF16 ? 0xff80u : 0xfc00u);
  template <int BYTES, int LOADS>
  __device__ static __forceinline__ void apply(Raw<BYTES> (&r)[LOADS]) {
    constexpr int IN = S::kInDtype;
    if constexpr (LOADS == 1) {
#pragma unroll
      for (int i = 0; i < Raw<BYTES>::kWords; ++i)
        r[0].w[i] = maxNaNPair<IN>(minNaNPair<IN>(r[0].w[i], kUpper), kLowerPairs);
    } else {
      // A 2-byte vector (G odd) holds its value in the low half; the high
      // half's zero stays zero.
#pragma unroll
      for (int i = 0; i < Raw<BYTES>::kWords; ++i) {
        r[0].w[i] = minNaNPair<IN>(r[0].w[i], kUpper);
        r[1].w[i] = maxNaNPair<IN>(minNaNPair<IN>(r[1].w[i], kUpper), kLower);
      }
    }
  }
};

// ---- the per-thread steps -----------------------------------------------------------

// y = act(g, u) for this thread's steps of the team's group(s) at `in` (the
// first input element). Every load is issued before the first use. Gives the
// thread's amax of each group it works in, or, for the sigmoid family, NaN
// in every one where the fast division cannot be trusted for this thread (a
// NaN y, or a z at or below kFastGateMin): the caller then recomputes with
// actMulExact. zero must be 0 at run time in a way the compiler cannot see.
template <class S>
__device__ __forceinline__ void actMulFast(const unsigned char* in, int vecLane, u32 zero,
                                           float (&y)[Geometry<S>::kSteps][Geometry<S>::kOutVec],
                                           float (&amax)[Geometry<S>::kGroupsPerTeam]) {
  using Geo = Geometry<S>;
  using Act = Activation<S>;
  constexpr int IN = S::kInDtype;
  constexpr int VEC = Geo::kVec;
  constexpr int kSteps = Geo::kSteps;
  constexpr int kLoads = Geo::kLoads;
  constexpr int kOutVec = Geo::kOutVec;
  constexpr int kVecBytes = Geo::kVecBytes;
  // silu, and swiglu with alpha > 0 (z = alpha * g' rises with g), on split
  // 16-bit gates: the minimum gate in packed pairs, half the work.
  constexpr bool kPairMin =
      (S::kActivation == kSilu || (S::kActivation == kSwiglu && S::kAlpha > 0.0f)) &&
      !Geo::kPairs && IN != kFP32;
  using Clamp = PackedClamp<S>;
  Raw<kVecBytes> raw[kSteps][kLoads];
#pragma unroll
  for (int c = 0; c < kSteps; ++c)
#pragma unroll
    for (int i = 0; i < kLoads; ++i)
      raw[c][i] =
          loadRaw<kVecBytes, Geo::kPrefetch256, Geo::kEvictFirst>(Geo::at(in, c, vecLane, i));
  // ptxas sinks each load to just before its first use, which would issue the
  // later loads only after the math of the earlier ones, halving the bytes in
  // flight. A word that depends on every load, zero at run time, folded into
  // the first vector of each step keeps all loads at the top.
  u32 loaded = 0u;
#pragma unroll
  for (int c = 0; c < kSteps; ++c)
#pragma unroll
    for (int i = 0; i < kLoads; ++i)
      loaded ^= raw[c][i].w[0];
  const u32 dep = loaded & zero;
#pragma unroll
  for (int m = 0; m < Geo::kGroupsPerTeam; ++m)
    amax[m] = 0.0f;
  float zmin = 0.0f;
  u32 gminPair = 0u;
#pragma unroll
  for (int c = 0; c < kSteps; ++c) {
    if constexpr (Clamp::kOn)
      Clamp::apply(raw[c]);
    float v[kLoads * VEC];
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      float part[VEC];
      unpack<IN, VEC>(raw[c][i], part, i == 0 ? dep : 0u);
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        v[i * VEC + k] = part[k];
    }
    if constexpr (kPairMin) {
#pragma unroll
      for (int i = 0; i < Raw<kVecBytes>::kWords; ++i)
        gminPair = minPair<IN>(gminPair, raw[c][0].w[i]);
    }
    float g[kOutVec], u[kOutVec];
    Geo::split(v, g, u);
#pragma unroll
    for (int k = 0; k < kOutVec; ++k) {
      if constexpr (Act::kSigmoid) {
        float a, z, b;
        Act::template terms<Clamp::kOn>(g[k], u[k], a, z, b);
        // Silu and swiglu send z <= kFastGateMin (x = -z from 87 up) to the
        // exact path; gelu_tanh keeps it here, where 1 + exp(88.7 and up) is
        // infinite, so x is clamped at 128 (a NaN x becomes 128: its y is NaN
        // all the same, through a).
        const float d = onePlusExp(Act::kScaledTail ? fminf(-z, 128.0f) : -z);
        if constexpr (Act::kScaledTail) {
          // z <= kFastGateMin: 1 + exp(-z) >= 2^125.5, whose reciprocal
          // would flush; a and d scaled by 2^-64 (exactly: |a| is at least
          // 9.9 there) have the same quotient, a normal number (>= 9.9 /
          // 2^128). An infinite d (z below about -88.7) has the reciprocal
          // 0: a zero of a's sign (NaN for an infinite a), as a / inf.
          const float f = z <= kFastGateMin ? 0x1p-64f : 1.0f;
          y[c][k] = __fmul_rn(__fmul_rn(a * f, rcpApprox(d * f)), b);
        } else {
          y[c][k] = __fmul_rn(__fmul_rn(a, rcpApprox(d)), b);
          if constexpr (!kPairMin)
            zmin = fminf(zmin, z);
        }
        amax[Geo::groupOfStep(c)] = maxNaN(amax[Geo::groupOfStep(c)], fabsf(y[c][k]));
      } else {
        // No division: this is the exact result, and amax ignores NaN already.
        y[c][k] = Act::y(g[k], u[k]);
        amax[Geo::groupOfStep(c)] = fmaxf(amax[Geo::groupOfStep(c)], fabsf(y[c][k]));
      }
    }
  }
  if constexpr (kPairMin) {
    Raw<4> pair;
    pair.w[0] = gminPair;
    float m[2];
    unpack<IN, 2>(pair, m);
    // swiglu: z's minimum is alpha times the least gate, rounded once as
    // every z is (rounding keeps the order); a gate above the limit gives
    // a z above 0 either way, clamped or not.
    zmin = S::kActivation == kSwiglu ? __fmul_rn(S::kAlpha, fminf(m[0], m[1])) : fminf(m[0], m[1]);
  }
  if (!(zmin > kFastGateMin)) {
#pragma unroll
    for (int m = 0; m < Geo::kGroupsPerTeam; ++m)
      amax[m] = __int_as_float(0x7fffffff);
  }
}

// One input element as a float, read alone (the rare path; it allocates in
// L1, so that the next elements of the same sector are hits).
template <int IN> __device__ __forceinline__ float loadScalar(const unsigned char* p) {
  if constexpr (IN == kFP32) {
    u32 w;
    asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(w) : "l"(p));
    return __uint_as_float(w);
  } else {
    unsigned short h;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(h) : "l"(p));
    Raw<2> r;
    r.w[0] = h;
    float v[1];
    unpack<IN, 1>(r, v);
    return v[0];
  }
}

// The same with IEEE division throughout (the rare path); amax ignores NaN.
// One element an iteration of a loop that is not unrolled, each result moved
// into its register of y by predicated moves: one copy of the activation and
// of the IEEE division instead of one an element. A new spec's first launch
// waits for the kernel's compile, which this shortened by a fifth to a
// quarter, and the fast path's registers fell from 48 to 40 at G = 128 (more
// warps resident). Only groups with a NaN or infinite y, or a gate at or
// below kFastGateMin where the activation does not scale its division, come
// here.
template <class S>
__device__ __forceinline__ void actMulExact(const unsigned char* in, int vecLane,
                                            float (&y)[Geometry<S>::kSteps][Geometry<S>::kOutVec],
                                            float (&amax)[Geometry<S>::kGroupsPerTeam]) {
  using Geo = Geometry<S>;
  using Act = Activation<S>;
  constexpr int kOutVec = Geo::kOutVec;
  constexpr int kInBytes = Geo::kInBytes;
#pragma unroll
  for (int m = 0; m < Geo::kGroupsPerTeam; ++m)
    amax[m] = 0.0f;
#pragma unroll 1
  for (int e = 0; e < Geo::kSteps * kOutVec; ++e) {
    const int c = e / kOutVec, k = e % kOutVec;
    // Gate and up of column k of step c, in Geometry::split's order.
    const unsigned char* gate;
    const unsigned char* up;
    if constexpr (!Geo::kPairs) {
      gate = Geo::at(in, c, vecLane, 0) + k * kInBytes;
      up = Geo::at(in, c, vecLane, 1) + k * kInBytes;
    } else if constexpr (Geo::kLoads == 1) {
      gate = Geo::at(in, c, vecLane, 0) + 2 * k * kInBytes;
      up = gate + kInBytes;
    } else {
      gate = Geo::at(in, c, vecLane, 0);
      up = Geo::at(in, c, vecLane, 1);
    }
    const float g = loadScalar<S::kInDtype>(gate), u = loadScalar<S::kInDtype>(up);
    float v;
    if constexpr (Act::kSigmoid) {
      float a, z, b;
      Act::terms(g, u, a, z, b);
      v = __fdiv_rn(a, onePlusExpExact(-z)) * b;
    } else {
      v = Act::y(g, u);
    }
#pragma unroll
    for (int m = 0; m < Geo::kGroupsPerTeam; ++m)
      if (m == Geo::groupOfStep(c))
        amax[m] = fmaxf(amax[m], fabsf(v));
#pragma unroll
    for (int cc = 0; cc < Geo::kSteps; ++cc)
#pragma unroll
      for (int kk = 0; kk < kOutVec; ++kk)
        if (cc * kOutVec + kk == e)
          y[cc][kk] = v;
  }
}

// How quantizeStore divides y by s: by the group's reciprocal r where the
// caller checked the range; by IEEE division; or y * r: for a power of two s
// whose reciprocal r is exact, the correctly rounded y / s (both round the
// same real number), and for NVFP4 the contract's own y * r.
enum : int { kDivFast = 0, kDivExact = 1, kMulExact = 2 };

// y / s in the way MODE names.
template <int MODE> __device__ __forceinline__ float quotient(float y, float s, float r) {
  if constexpr (MODE == kMulExact)
    return y * r;
  else if constexpr (MODE == kDivFast)
    return divFast(y, s, r);
  else
    return __fdiv_rn(y, s);
}

// q = saturate_round(y / s) for this thread's steps, stored to qRow (the
// group's first byte): VEC values make VEC * kBits / 8 bytes.
template <int OUT, int VEC, int TPG, int kChunks, int MODE>
__device__ __forceinline__ void quantizeStore(const float (&y)[kChunks][VEC], float s, float r,
                                              unsigned char* qRow, int lane) {
  constexpr int BITS = QuantTraits<OUT>::kBits;
  constexpr int kBytes = VEC * BITS / 8;
  static_assert(BITS == 8 || VEC % 2 == 0, "fp4 steps make whole bytes");
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    u32 w[(kBytes + 3) / 4];
#if !BQJIT_HW_FP4_CVT
    if constexpr (OUT == kE2M1 && (VEC == 4 || VEC % 8 == 0)) {
      // Whole words of eight values, and a half word of four at the end.
#pragma unroll
      for (int i = 0; i < (VEC + 7) / 8; ++i) {
        constexpr int N = VEC == 4 ? 4 : 8;
        float v[N];
#pragma unroll
        for (int k = 0; k < N; ++k)
          v[k] = quotient<MODE>(y[c][N * i + k], s, r);
        w[i] = e2m1Nibbles<N>(v);
      }
      storeBytes<kBytes>(qRow + (c * TPG + lane) * kBytes, w);
      continue;
    }
#endif
#pragma unroll
    for (int i = 0; i < (kBytes + 3) / 4; ++i)
      w[i] = 0;
#pragma unroll
    for (int k = 0; k < VEC; k += 2) {
      const float lo = quotient<MODE>(y[c][k], s, r);
      const float hi = k + 1 < VEC ? quotient<MODE>(y[c][k + 1], s, r) : 0.0f;
      const u32 pair = quantPair<OUT>(lo, hi) & (k + 1 < VEC ? (1u << 2 * BITS) - 1u : (1u << BITS) - 1u);
      w[k * BITS / 32] |= pair << (k * BITS % 32);
    }
    storeBytes<kBytes>(qRow + (c * TPG + lane) * kBytes, w);
  }
}

// ---- scale layouts ------------------------------------------------------------------
//
// swizzled_128x4 (docs/contract.md section 8): rows padded to 128, groups to 4;
// byte of scale (t, j) in one expert's buffer.
template <int NG> __device__ __forceinline__ i64 swizzledOffset(i64 t, int j) {
  constexpr int kTileCols = (NG + 3) / 4;
  return ((t >> 7) * kTileCols + (j >> 2)) * 512 + (t & 31) * 16 + ((t >> 5) & 3) * 4 + (j & 3);
}

// Blocks of 8 rows (version 16). A 32-byte sector of the layout holds 4
// groups of 8 rows: t and t + 1 (t even) and the same two 32, 64 and 96 rows
// on. In the task order of version 15 (the scale bytes' order) a warp's q
// stores touch 8 rows, 32 bytes each; in row order its 32 scale bytes go to
// 8 sectors, 4 bytes each: either way about three times the L2 write
// requests of the bytes layout, and about 8% of FP4's time (H200). Here a
// block of 256 threads takes those 8 rows (a "row pair" p: rows band * 128 +
// pair * 2 + {0, 1} + {0, 32, 64, 96}, p = band * 16 + pair), one warp a
// row, and kCols consecutive groups (a warp's teams, in row order: q stores
// of whole lines), and writes its scale bytes through shared memory, whole
// sectors, one 4-byte store a thread. Blocks take the columns of the row
// pairs one after another, L = p * kNGp + j, kCols of them a block: where
// kCols does not divide kNGp (gpt-oss's H = 2880) a block's quads continue
// in the next row pair, each quad in one. Where the warp is not one row of
// whole quads or the batch is masked (bytes of rows past an expert's count
// stay unwritten there), the tasks keep version 15's order.
template <class S> struct SwizzleTiles {
  static constexpr int kNG = S::kHidden / S::kGroupSize;
  static constexpr int kNGp = (kNG + 3) / 4 * 4;
  static constexpr int kSlot = TeamSlot<S::kThreadsPerGroup>::value;
  static constexpr int kCols = S::kGroupsPerBlock / 8; // groups of a row a block takes
  // The grid of rows128 * kNGp / GPB blocks covers the row pairs exactly:
  // rows128 / 8 is a multiple of 16 and kCols at most 32.
  static constexpr bool kOn = S::kScaleLayout == kSwizzled128x4 && !S::kMasked &&
                              !Geometry<S>::kAcross && kSlot == S::kThreadsPerGroup &&
                              kSlot * S::kGroupsPerBlock == 256 && kCols >= 4 && kCols % 4 == 0 &&
                              64 % kCols == 0;
  // The block's staged scale bytes: kCols / 4 sectors of 32.
  __device__ static __forceinline__ unsigned char* staged() {
    __shared__ __align__(16) unsigned char bytes[kOn ? S::kGroupsPerBlock : 4];
    return bytes;
  }
  // Where row t's scale of this thread's team goes in staged(): the team's
  // place in its warp is its column's place in the block (sector, byte).
  __device__ static __forceinline__ int stagedAt(i64 t) {
    const int team = static_cast<int>(threadIdx.x % 32) / kSlot;
    return team / 4 * 32 + (static_cast<int>(t) & 1) * 16 + (static_cast<int>(t >> 5) & 3) * 4 +
           (team & 3);
  }
};

// Where a row's results go.
struct GroupOut {
  i64 t;      // the row
  i64 expert; // masked batches: the expert (0 otherwise)
  i64 rows;   // T
  i64 rows4;  // T rounded up to 4 (padded layouts)
  unsigned char* q;
  float* scaleF;         // fp32 scale layouts
  unsigned char* scaleB; // byte scale layouts
};

// A group's scale: s, the factor or reciprocal quantizeStore takes (r), the
// byte of byte layouts (E8M0, or NVFP4's E4M3) and how y is divided by s.
struct GroupScale {
  float s;
  float r;
  u32 byte;
  int mode; // kDivFast, kDivExact or kMulExact
};

// The spec's scale rule, as the kernel and its per-group functions test it.
template <class S> struct ScaleKind {
  static constexpr bool kFp4 = S::kOutDtype == kE2M1;
  static constexpr bool kNvfp4 = kFp4 && !S::kPow2Scales; // E4M3 block scales under a global scale
  static constexpr bool kFloorRounding = S::kScaleRounding == kFloor;
  // Every group divides the same way (power-of-two and NVFP4 scales multiply
  // by r), so that the mode need not travel between lanes.
  static constexpr bool kFixedMode = S::kPow2Scales || kFp4;
};

// The scale of a group from the team's amax of it, by docs/contract.md
// sections 1, 7 and 8. amax / QMAX by the fast division with the correctly
// rounded 1 / QMAX: exact for every finite amax (checked exhaustively over
// all fp32 significands for the three QMAX values: tests/test_fast_division).
template <class S>
__device__ __forceinline__ GroupScale groupScale(float amaxG, const float* scaleUb, const float* globalScale) {
  using Kind = ScaleKind<S>;
  constexpr int OUT = S::kOutDtype;
  constexpr bool HAS_UB = S::kHasScaleUb;
  GroupScale g{0.0f, 0.0f, 0u, kMulExact};
  if constexpr (Kind::kNvfp4) {
    // Section 8, in its order: sf = e4m3(min(gs * amax / 6, 448)), r = 1 /
    // (sf / gs), q = e2m1(y * r); correctly rounded divisions, once a group.
    const float gs = *globalScale;
    // gs * amax / 6 by the fast division: exact for every finite product
    // (tests/test_fast_division). An infinite product gives NaN there, which
    // fminf turns into 448, as it does infinity; a subnormal quotient rounds
    // to an E4M3 zero either way.
    const float pre = fminf(divFast(__fmul_rn(gs, amaxG), 6.0f, QuantTraits<kE2M1>::kInvMax), 448.0f);
    g.byte = fp8Pair<kE4M3>(pre, 0.0f) & 0xffu;
    g.s = e4m3Value(g.byte);
    g.r = g.s == 0.0f ? 0.0f : __fdiv_rn(1.0f, __fdiv_rn(g.s, gs));
    return g;
  } else if constexpr (Kind::kFloorRounding) {
    const int floorExp = floorMxExponent<OUT>(amaxG);
    g.s = exp2Exact(floorExp);
    // s = 2^e: y * 2^-e is y / s exactly, without a division's range limits.
    g.r = exp2Exact(-floorExp);
  } else if constexpr (Kind::kFp4) {
    // MXFP4 under ceil: 2^ceil(log2(amax / 6)) within 2^-127..2^127 (no
    // MIN_SCALE of its own); the E8M0 byte first, then s and its exact
    // reciprocal from it.
    float pre = __fdiv_rn(amaxG, QuantTraits<OUT>::kMax); // an infinite amax stays infinite
    if constexpr (HAS_UB)
      pre = fminf(pre, *scaleUb);
    pre = fminf(fmaxf(pre, QuantTraits<OUT>::kMinScale), kMaxPow2Scale);
#if BQJIT_HW_FP4_CVT
    unsigned short e8;
    asm("cvt.rp.satfinite.ue8m0x2.f32 %0, %1, %2;" : "=h"(e8) : "f"(0.0f), "f"(pre));
    const u32 byte = e8 & 0xffu;
#else
    const u32 b = __float_as_uint(pre);
    // A subnormal pre lies in [2^-127, 2^-126): byte 0 for 2^-127 itself, else 1.
    const u32 byte = b < 0x00800000u ? (b == 0x00400000u ? 0u : 1u) : (b >> 23) + ((b & 0x007fffffu) != 0u);
#endif
    g.s = exp2Exact(static_cast<int>(byte) - 127);
    g.r = exp2Exact(127 - static_cast<int>(byte));
  } else {
    float s = amaxG == __int_as_float(0x7f800000) ? amaxG
                                                  : divFast(amaxG, QuantTraits<OUT>::kMax, QuantTraits<OUT>::kInvMax);
    if constexpr (HAS_UB)
      s = fminf(s, *scaleUb);
    s = fmaxf(s, S::kMinScale); // MIN_SCALE, or the spec's min_scale
    if constexpr (S::kPow2Scales) {
      g.s = fminf(pow2Ceil(s), kMaxPow2Scale); // an infinite s is 2^127 (E8M0 byte 254)
      // s = 2^e, e in -127..127: y * 2^-e rounds the same real number as y / s.
      g.r = pow2Reciprocal(g.s);
    } else if constexpr (HAS_UB) {
      g.s = s;
      g.r = rcpRefined(s);
      // Quotients below 2^-100 that the fast path may round differently all
      // quantize to a zero of the right sign, so only the top needs a bound.
      g.mode = s < kFastScaleMax && amaxG * g.r < kFastQuotientMax ? kDivFast : kDivExact;
    } else if (s < kFastScaleMax) {
      // Without a bound every quotient is at most QMAX, and s is below
      // FLT_MAX / QMAX < 2^126 (the fast division's range) unless amax is
      // infinite or min_scale is at least 2^126.
      g.s = s;
      g.r = rcpRefined(s);
      g.mode = kDivFast;
    } else {
      // An infinite amax: y / inf is a zero of y's sign for finite y and NaN
      // for an infinite or NaN y, as y * 0 is.
      g.s = s;
      g.r = 0.0f;
      g.mode = S::kMinScale < kFastScaleMax ? kMulExact : kDivExact;
    }
  }
  g.byte = (__float_as_uint(g.s) >> 23) & 0xffu; // E8M0: 2^-127 (subnormal) is byte 0
  return g;
}

// q of a group from the thread's kChunks steps in it (all its steps, or one
// step across groups); kStride: lanes whose chunks interleave in the group.
template <class S, int kChunks, int kStride>
__device__ __forceinline__ void quantizeGroup(const float (&yg)[kChunks][Geometry<S>::kOutVec], const GroupScale& g,
                                              unsigned char* qRow, int lane) {
  constexpr int OUT = S::kOutDtype;
  constexpr int V = Geometry<S>::kOutVec;
  // Only the modes groupScale can give this spec (each is unrolled code).
  constexpr bool kFixed = ScaleKind<S>::kFixedMode;
  constexpr bool kMayMulExact = kFixed || (!S::kHasScaleUb && S::kMinScale < kFastScaleMax);
  constexpr bool kMayDivExact = !kFixed && (S::kHasScaleUb || !(S::kMinScale < kFastScaleMax));
  if constexpr (kFixed) {
    quantizeStore<OUT, V, kStride, kChunks, kMulExact>(yg, g.s, g.r, qRow, lane);
  } else {
    if (g.mode == kDivFast) {
      quantizeStore<OUT, V, kStride, kChunks, kDivFast>(yg, g.s, g.r, qRow, lane);
    } else {
      if constexpr (kMayMulExact)
        quantizeStore<OUT, V, kStride, kChunks, kMulExact>(yg, g.s, g.r, qRow, lane);
      if constexpr (kMayDivExact)
        quantizeStore<OUT, V, kStride, kChunks, kDivExact>(yg, g.s, g.r, qRow, lane);
    }
  }
}

// Writes group jg's scale of row o.t in the spec's layout.
template <class S> __device__ __forceinline__ void storeScale(const GroupScale& g, int jg, const GroupOut& o) {
  constexpr int NG = S::kHidden / S::kGroupSize;
  constexpr int LAYOUT = S::kScaleLayout;
  const i64 t = o.t;
  if constexpr (LAYOUT == kRow) {
    o.scaleF[t * NG + jg] = g.s;
  } else if constexpr (LAYOUT == kCol) {
    o.scaleF[static_cast<i64>(jg) * o.rows + t] = g.s;
  } else if constexpr (LAYOUT == kColTma) {
    o.scaleF[static_cast<i64>(jg) * o.rows4 + t] = g.s;
  } else if constexpr (LAYOUT == kBytes) {
    o.scaleB[t * NG + jg] = static_cast<unsigned char>(g.byte);
  } else if constexpr (LAYOUT == kSwizzled128x4) {
    if constexpr (SwizzleTiles<S>::kOn)
      SwizzleTiles<S>::staged()[SwizzleTiles<S>::stagedAt(t)] = static_cast<unsigned char>(g.byte);
    else
      o.scaleB[swizzledOffset<NG>(t, jg)] = static_cast<unsigned char>(g.byte);
  } else {
    const i64 word = static_cast<i64>(jg / 4) * o.rows4 + t;
    o.scaleB[word * 4 + jg % 4] = static_cast<unsigned char>(g.byte);
    if (jg == NG - 1)
      for (int b = jg % 4 + 1; b < 4; ++b)
        o.scaleB[word * 4 + b] = 0;
  }
}

// Where group jg's q starts.
template <class S> __device__ __forceinline__ unsigned char* groupQ(int jg, const GroupOut& o) {
  return o.q + ((o.expert * o.rows + o.t) * S::kHidden + static_cast<i64>(jg) * S::kGroupSize) *
                   QuantTraits<S::kOutDtype>::kBits / 8;
}

// ---- the kernel -----------------------------------------------------------------
//
// Work item ("task"): one group j of one row t, done by a team of TPG threads.
// A team occupies a slot of Geometry::kTeamLanes lanes (TPG rounded up to a
// power of two) so that any TPG dividing the group's vectors works (12 for
// G = 96, say); the lanes past TPG only take part in the amax reduction.
// Row-major scale layouts (row, bytes) number tasks row by row; column
// layouts number them column by column, and swizzled_128x4 in the order of its
// scale bytes (task = the byte of (t, j): 4 groups of 8 rows a 32-byte
// sector), so that the scale stores of neighbouring teams fill whole sectors
// (a warp's 32 bytes one sector, not 4 bytes in each of 8; as fast as row
// order on an H200, bench/NOTES.md version 15).
// Layouts with padded columns (col_tma, ue8m0_packed) have tasks for the
// padding rows T..T4-1 that only write zero scales; swizzled_128x4's tasks
// cover its padding rows T..Tp-1 and columns NG..NGp-1, which only write
// zeros (of every row, live or not, when masked).
//
// Output formats: QuantTraits<OUT> (8-bit codes, or e2m1 two a byte). NVFP4
// (e2m1 without power-of-two scales) takes its E4M3 block scale from the
// run-time global scale, in the contract's order of evaluation; MXFP4 (e2m1
// with power-of-two scales) is section 7's E8M0 scale with QMAX 6.
//
// Arguments:
//   x       [E][rows][ldx] input: split, gate in columns 0..H-1 and up in
//           H..2H-1; interleaved, gate i in column 2i and up i in 2i + 1
//   ldx     elements between rows of x (>= 2H)
//   rows    T (T_max for masked batches)
//   q       [E][rows][H * kBits / 8] output
//   scales  per docs/contract.md sections 2 and 8, per expert when masked
//   scaleUb device pointer to one float, used when HAS_UB
//   maskedM [E] live rows per expert, used when MASKED (gridDim.y = E)
//   globalScale device pointer to one float, used by NVFP4
//
// S is the specialization: every compile-time choice as a named constant, and
// the launch shape's occupancy promise (kMinBlocksPerSm), which the planner
// decides on the host.
template <class S>
__global__ void __launch_bounds__(TeamSlot<S::kThreadsPerGroup>::value * S::kGroupsPerBlock,
                                  S::kMinBlocksPerSm)
    silu_mul_quant(const void* __restrict__ x, i64 ldx, i64 rows, unsigned char* __restrict__ q,
                   void* __restrict__ scales, const float* __restrict__ scaleUb,
                   const int* __restrict__ maskedM, const float* __restrict__ globalScale) {
  constexpr int H = S::kHidden;
  constexpr int G = S::kGroupSize;
  constexpr int IN = S::kInDtype;
  constexpr int OUT = S::kOutDtype;
  constexpr int LAYOUT = S::kScaleLayout;
  constexpr bool POW2 = S::kPow2Scales;
  constexpr bool HAS_UB = S::kHasScaleUb;
  constexpr bool MASKED = S::kMasked;
  constexpr int TPG = S::kThreadsPerGroup;
  constexpr int VEC = S::kVecWidth;
  constexpr int GPB = S::kGroupsPerBlock;
  constexpr bool FLOOR = ScaleKind<S>::kFloorRounding;
  constexpr bool FP4 = ScaleKind<S>::kFp4;
  constexpr bool NVFP4 = ScaleKind<S>::kNvfp4;
  constexpr bool SWIZZLED = LAYOUT == kSwizzled128x4;
  constexpr bool BYTE_SCALES = LAYOUT == kUe8m0Packed || LAYOUT == kBytes || SWIZZLED;
  static_assert(!FLOOR || (POW2 && OUT != kInt8 && !HAS_UB),
                "floor rounds power-of-two scales of floating-point outputs, without a bound");
  static_assert(!(LAYOUT == kBytes || SWIZZLED) || POW2 || NVFP4,
                "scale bytes are E8M0 exponents, or NVFP4's E4M3");
  static_assert(!FP4 || (NVFP4 ? G == 16 && !HAS_UB && (LAYOUT == kBytes || SWIZZLED) : G == 32),
                "fp4 is NVFP4 (G 16, E4M3 bytes) or MXFP4 (G 32, ue8m0)");
  static_assert(H % G == 0, "G must divide H");
  static_assert(G % VEC == 0, "VEC must divide G");
  static_assert((G / VEC) % TPG == 0, "TPG must divide the group's vectors");
  static_assert(TPG >= 1 && TPG <= 32, "TPG: 1..32");
  constexpr int NG = H / G;
  constexpr int kInBytes = InBytes<IN>::value;
  using Geo = Geometry<S>;
  constexpr int kSteps = Geo::kSteps;
  constexpr int kOutVec = Geo::kOutVec;
  constexpr bool kColMajorTasks = LAYOUT != kRow && LAYOUT != kBytes && !SWIZZLED;
  constexpr bool kPadded = LAYOUT == kColTma || LAYOUT == kUe8m0Packed;
  constexpr int kPackedWords = (NG + 3) / 4;
  constexpr int kTileCols = (NG + 3) / 4; // swizzled_128x4: NGp / 4

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Programmatic dependent launch (sm_90+; the host opts in per launch with a
  // launch attribute, and without it both are no-ops): this grid may start
  // while the previous kernel on the stream still runs, so it waits for that
  // kernel's writes before reading or writing any memory (the previous kernel
  // may still read what this one overwrites); then it lets the next kernel
  // start early, which must itself wait before reading this grid's outputs.
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  const i64 rows4 = (rows + 3) / 4 * 4;
  const i64 rows128 = (rows + 127) / 128 * 128;
  const i64 taskRows = kPadded ? rows4 : rows;
  const i64 expert = MASKED ? blockIdx.y : 0;

  // Lanes of a team and groups of a team (Geometry: several groups where a
  // team takes its steps across groups).
  constexpr int kTeam = Geo::kTeamLanes;
  constexpr int kTeamGroups = Geo::kGroupsPerTeam;
  const int lane = threadIdx.x % kTeam;
  const bool active = lane < TPG || Geo::kAcross;
  // The team's first group in the launch's numbering (row-major tasks when across).
  const i64 task = static_cast<i64>(blockIdx.x) * GPB + (threadIdx.x / kTeam) * kTeamGroups;

  // Scales of this expert.
  i64 scalesPerExpert;
  if constexpr (LAYOUT == kRow || LAYOUT == kCol)
    scalesPerExpert = rows * NG;
  else if constexpr (LAYOUT == kColTma)
    scalesPerExpert = rows4 * NG;
  else if constexpr (LAYOUT == kUe8m0Packed)
    scalesPerExpert = rows4 * kPackedWords * 4; // bytes
  else if constexpr (SWIZZLED)
    scalesPerExpert = rows128 * kTileCols * 4; // bytes
  else
    scalesPerExpert = rows * NG; // bytes
  float* scaleF = static_cast<float*>(scales) + (BYTE_SCALES ? 0 : expert * scalesPerExpert);
  unsigned char* scaleB = static_cast<unsigned char*>(scales) + (BYTE_SCALES ? expert * scalesPerExpert : 0);

  i64 t;
  int j;
  using Tiles = SwizzleTiles<S>;
  if constexpr (Tiles::kOn) {
    // Column L = blockIdx.x * kCols + the team's place in its warp, of row
    // pair p = L / kNGp; warp w takes the pair's row w.
    const u32 col = blockIdx.x * Tiles::kCols + (threadIdx.x % 32) / kTeam;
    const u32 pair = col / Tiles::kNGp;
    const int w = threadIdx.x / 32;
    t = static_cast<i64>(pair >> 4) * 128 + (w >> 1) * 32 + (pair & 15) * 2 + (w & 1);
    j = static_cast<int>(col - pair * Tiles::kNGp);
    if (t >= rows || j >= NG) {
      // Padding: a zero byte, and no input. Every thread of the block meets
      // the barrier at flush.
      if (lane == 0)
        Tiles::staged()[Tiles::stagedAt(t)] = 0;
      goto flush;
    }
  } else if constexpr (SWIZZLED) {
    // task = the byte of (t, j) in the expert's scales (swizzledOffset's
    // inverse); the groups of a team (kTeamGroups, which divides 4 and NG)
    // are in one row and all live columns or all padding.
    if (task >= rows128 * kTileCols * 4)
      return;
    const i64 tile = task >> 9;
    const int p = static_cast<int>(task & 511);
    const i64 band = tile / kTileCols;
    t = band * 128 + ((p >> 2) & 3) * 32 + (p >> 4);
    j = static_cast<int>(tile - band * kTileCols) * 4 + (p & 3);
    if (t >= rows || j >= NG) {
      if (lane == 0)
#pragma unroll
        for (int m = 0; m < kTeamGroups; ++m)
          scaleB[task + m] = 0;
      return;
    }
  } else if (task >= taskRows * NG) {
    return;
  } else if (taskRows * NG <= 0x7fffffff) {
    // The usual case: 32-bit division, a few instructions instead of dozens.
    const u32 task32 = static_cast<u32>(task);
    const u32 taskRows32 = static_cast<u32>(taskRows);
    t = kColMajorTasks ? task32 % taskRows32 : task32 / NG;
    j = static_cast<int>(kColMajorTasks ? task32 / taskRows32 : task32 % NG);
  } else {
    t = kColMajorTasks ? task % taskRows : task / NG;
    j = static_cast<int>(kColMajorTasks ? task / taskRows : task % NG);
  }
  {
  if (MASKED) {
    const i64 liveRows = static_cast<i64>(maskedM[expert]);
    if (t >= liveRows)
      return; // not computed (swizzled_128x4's padding is zero all the same)
  }

  if (kPadded && t >= rows) {
    if (lane == 0) {
      if constexpr (LAYOUT == kColTma) {
        scaleF[static_cast<i64>(j) * rows4 + t] = 0.0f;
      } else {
        const i64 word = static_cast<i64>(j / 4) * rows4 + t;
        scaleB[word * 4 + j % 4] = 0;
        if (j == NG - 1)
          for (int b = j % 4 + 1; b < 4; ++b)
            scaleB[word * 4 + b] = 0;
      }
    }
    return;
  }

  const unsigned char* row =
      static_cast<const unsigned char*>(x) + ((expert * rows + t) * ldx) * kInBytes;
  // The (first) group's first input: its first gate (split) or (gate, up) pair.
  const unsigned char* in = row + static_cast<i64>(j) * Geo::kGroupInBytes;

  const int vecLane = active ? lane : 0;
  float y[kSteps][kOutVec];
  // rows < 2^62 always: a zero the compiler cannot fold.
  const u32 zero = static_cast<u32>(rows >> 62);
  float amax[kTeamGroups];
  actMulFast<S>(in, vecLane, zero, y, amax);
#pragma unroll
  for (int m = 0; m < kTeamGroups; ++m)
    if (!active)
      amax[m] = 0.0f; // lanes past TPG hold a copy of lane 0's values
  // Team slots are kTeam consecutive lanes, aligned inside the warp.
  const unsigned teamMask =
      kTeam == 32 ? 0xffffffffu : (((1u << kTeam) - 1u) << ((threadIdx.x % 32) & ~(kTeam - 1)));
  bool anyNaN = false;
  // Padding threads of swizzled tiles wait at the block's barrier, not here;
  // a partial warp has no lanes to stand for.
  constexpr bool kWarpWide = !Tiles::kOn && (S::kGroupsPerBlock * kTeam) % 32 == 0;
#pragma unroll
  for (int m = 0; m < kTeamGroups; ++m) {
    amax[m] = teamMaxNaN<kTeam, kWarpWide>(amax[m], teamMask);
    anyNaN = anyNaN || amax[m] != amax[m];
  }
  if constexpr (Activation<S>::kSigmoid) {
    if (anyNaN) {
      // A NaN y, or a z outside the fast division's range, in the team (the
      // branch is uniform over the team): recompute with exact division, and
      // take amax as docs/contract.md does, NaN ignored.
      actMulExact<S>(in, vecLane, y, amax);
#pragma unroll
      for (int m = 0; m < kTeamGroups; ++m) {
        if (!active)
          amax[m] = 0.0f;
#pragma unroll
        for (int off = kTeam / 2; off > 0; off /= 2)
          amax[m] = fmaxf(amax[m], __shfl_xor_sync(teamMask, amax[m], off, kTeam));
      }
    }
  }
  if (!active)
    return;

  const GroupOut out{t, expert, rows, rows4, q, scaleF, scaleB};
  if constexpr (Geo::kAcross) {
    // Lane m < kTeamGroups computes group m's scale, writes it, and the team
    // takes s and r from it: one scale a lane instead of every lane's
    // computing all of them. Steps m * kStepsPerGroup.. of every lane are in
    // group j + m: the team's lanes in order, chunk after chunk.
    constexpr int kSpg = Geo::kStepsPerGroup;
    const int mine = lane % kTeamGroups;
    float amaxMine = amax[0];
#pragma unroll
    for (int m = 1; m < kTeamGroups; ++m)
      amaxMine = mine == m ? amax[m] : amaxMine;
    const GroupScale own = groupScale<S>(amaxMine, scaleUb, globalScale);
    if (lane < kTeamGroups)
      storeScale<S>(own, j + lane, out);
#pragma unroll
    for (int m = 0; m < kTeamGroups; ++m) {
      GroupScale g = own;
      g.s = __shfl_sync(teamMask, own.s, m, kTeam);
      g.r = __shfl_sync(teamMask, own.r, m, kTeam);
      if constexpr (!ScaleKind<S>::kFixedMode)
        g.mode = __shfl_sync(teamMask, own.mode, m, kTeam);
      float ym[kSpg][kOutVec];
#pragma unroll
      for (int c = 0; c < kSpg; ++c)
#pragma unroll
        for (int k = 0; k < kOutVec; ++k)
          ym[c][k] = y[m * kSpg + c][k];
      quantizeGroup<S, kSpg, kTeam>(ym, g, groupQ<S>(j + m, out), lane);
    }
  } else {
    const GroupScale g = groupScale<S>(amax[0], scaleUb, globalScale);
    quantizeGroup<S, kSteps, TPG>(y, g, groupQ<S>(j, out), lane);
    if (lane == 0)
      storeScale<S>(g, j, out);
  }
  }
flush:
  if constexpr (Tiles::kOn) {
    // The block's scale bytes, staged by every team, to their sectors: one
    // 4-byte store a thread (bytes where the buffer is not 4-byte aligned).
    asm volatile("barrier.sync 0;" ::: "memory");
    if (threadIdx.x < S::kGroupsPerBlock / 4) {
      // Word threadIdx.x % 8 of the block's sector threadIdx.x / 8: quad
      // column `quad` of the layout, in row pair `pair`.
      const u32 quads = blockIdx.x * (Tiles::kCols / 4) + threadIdx.x / 8;
      const u32 pair = quads / (Tiles::kNGp / 4);
      const u32 quad = quads - pair * (Tiles::kNGp / 4);
      const i64 tile = static_cast<i64>(pair >> 4) * (Tiles::kNGp / 4) + quad;
      unsigned char* dst = scaleB + tile * 512 + (pair & 15) * 32 + (threadIdx.x % 8) * 4;
      const u32 word = reinterpret_cast<const u32*>(Tiles::staged())[threadIdx.x];
      if ((reinterpret_cast<unsigned long long>(scaleB) & 3u) == 0) {
        *reinterpret_cast<u32*>(dst) = word;
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i)
          dst[i] = static_cast<unsigned char>(word >> (8 * i));
      }
    }
  }
}

} // namespace bqjit_kernel
