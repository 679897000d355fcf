// bqjit kernel template: y = silu(gate) * up, quantized per group of G columns
// with fp32 (or power-of-two) scales. SPEC.md section 1 is the contract.
//
// Compiled by NVRTC with every specialization choice as a template argument;
// it includes no header, so a cold compile stays fast.
#pragma once

namespace bqjit_kernel {

typedef long long i64;
typedef unsigned int u32;

enum : int { kBF16 = 0, kFP16 = 1, kFP32 = 2 };
enum : int { kE4M3 = 0, kE5M2 = 1, kInt8 = 2 };
enum : int { kRow = 0, kCol = 1, kColTma = 2, kUe8m0Packed = 3 };

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
template <int BYTES> __device__ __forceinline__ Raw<BYTES> loadRaw(const void* p) {
  Raw<BYTES> r;
  if constexpr (BYTES == 16) {
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3])
                 : "l"(p));
  } else if constexpr (BYTES == 8) {
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];"
                 : "=r"(r.w[0]), "=r"(r.w[1])
                 : "l"(p));
  } else if constexpr (BYTES == 4) {
    asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r.w[0]) : "l"(p));
  } else {
    unsigned short h;
    asm volatile("ld.global.nc.L1::no_allocate.u16 %0, [%1];" : "=h"(h) : "l"(p));
    r.w[0] = h;
  }
  return r;
}

template <int IN> __device__ __forceinline__ float toFloat(u32 bits16or32) {
  if constexpr (IN == kBF16) {
    return __uint_as_float(bits16or32 << 16);
  } else if constexpr (IN == kFP16) {
    float f;
    unsigned short h = static_cast<unsigned short>(bits16or32);
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
  } else {
    return __uint_as_float(bits16or32);
  }
}

template <int IN, int VEC, int BYTES>
__device__ __forceinline__ void unpack(const Raw<BYTES>& r, float (&out)[VEC]) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    if constexpr (IN == kFP32)
      out[k] = toFloat<IN>(r.w[k]);
    else
      out[k] = toFloat<IN>((r.w[k / 2] >> (16 * (k % 2))) & 0xffffu);
  }
}

// ---- output conversions -------------------------------------------------------

template <int OUT> struct QuantTraits;
template <> struct QuantTraits<kE4M3> {
  static constexpr float kMax = 448.0f;
  static constexpr float kMinScale = 1.0f / (448.0f * 512.0f);
};
template <> struct QuantTraits<kE5M2> {
  static constexpr float kMax = 57344.0f;
  static constexpr float kMinScale = 1.0f / (57344.0f * 512.0f);
};
template <> struct QuantTraits<kInt8> {
  static constexpr float kMax = 127.0f;
  static constexpr float kMinScale = 1.1920928955078125e-07f; // 2^-23
};

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

__device__ __forceinline__ u32 int8Sat(float v) {
  if (v != v)
    return 0u;
  const float r = fminf(fmaxf(rintf(v), -128.0f), 127.0f);
  return static_cast<u32>(static_cast<int>(r)) & 0xffu;
}

template <int OUT> __device__ __forceinline__ u32 quantPair(float lo, float hi) {
  if constexpr (OUT == kInt8)
    return int8Sat(lo) | (int8Sat(hi) << 8);
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

// 2^ceil(log2(s)) for positive s, exactly, by bit manipulation.
__device__ __forceinline__ float pow2Ceil(float s) {
  u32 b = __float_as_uint(s);
  const u32 expBits = b & 0x7f800000u;
  if ((b & 0x007fffffu) != 0u && expBits != 0x7f800000u)
    b = expBits + 0x00800000u;
  return __uint_as_float(b);
}

// ---- the kernel -----------------------------------------------------------------
//
// Work item ("task"): one group j of one row t, done by a team of TPG threads.
// A team occupies a slot of kSlot lanes (TPG rounded up to a power of two) so
// that any TPG dividing the group's vectors works (12 for G = 96, say); the
// lanes past TPG only take part in the amax reduction.
// Row-major scale layouts number tasks row by row; column layouts number them
// column by column so that the scale stores of neighbouring teams coalesce.
// Layouts with padded columns (col_tma, ue8m0_packed) have tasks for the
// padding rows T..T4-1 that only write zero scales.
//
// Arguments:
//   x       [E][rows][ldx] input, gate in columns 0..H-1, up in H..2H-1
//   ldx     elements between rows of x (>= 2H)
//   rows    T (T_max for masked batches)
//   q       [E][rows][H] output
//   scales  per SPEC.md section 2, per expert when masked
//   scaleUb device pointer to one float, used when HAS_UB
//   maskedM [E] live rows per expert, used when MASKED (gridDim.y = E)
template <int H, int G, int IN, int OUT, int LAYOUT, bool POW2, bool HAS_UB, bool MASKED, int TPG,
          int VEC, int GPB>
__global__ void __launch_bounds__(TeamSlot<TPG>::value * GPB)
    silu_mul_quant(const void* __restrict__ x, i64 ldx, i64 rows, unsigned char* __restrict__ q,
                   void* __restrict__ scales, const float* __restrict__ scaleUb,
                   const int* __restrict__ maskedM) {
  static_assert(H % G == 0, "G must divide H");
  static_assert(G % VEC == 0, "VEC must divide G");
  static_assert((G / VEC) % TPG == 0, "TPG must divide the group's vectors");
  static_assert(TPG >= 1 && TPG <= 32, "TPG: 1..32");
  constexpr int kSlot = TeamSlot<TPG>::value;
  constexpr int NG = H / G;
  constexpr int kInBytes = InBytes<IN>::value;
  constexpr int kVecBytes = VEC * kInBytes;
  constexpr int kChunks = G / VEC / TPG; // vectors per thread
  constexpr bool kColMajorTasks = LAYOUT != kRow;
  constexpr bool kPadded = LAYOUT == kColTma || LAYOUT == kUe8m0Packed;
  constexpr int kPackedWords = (NG + 3) / 4;

  const i64 rows4 = (rows + 3) / 4 * 4;
  const i64 taskRows = kPadded ? rows4 : rows;
  const i64 expert = MASKED ? blockIdx.y : 0;
  const i64 liveRows = MASKED ? static_cast<i64>(maskedM[expert]) : rows;

  const int lane = threadIdx.x % kSlot;
  const bool active = lane < TPG;
  const i64 task = static_cast<i64>(blockIdx.x) * GPB + threadIdx.x / kSlot;
  if (task >= taskRows * NG)
    return;
  const i64 t = kColMajorTasks ? task % taskRows : task / NG;
  const int j = static_cast<int>(kColMajorTasks ? task / taskRows : task % NG);
  if (MASKED && t >= liveRows)
    return;

  // Scales of this expert.
  i64 scalesPerExpert;
  if constexpr (LAYOUT == kRow || LAYOUT == kCol)
    scalesPerExpert = rows * NG;
  else if constexpr (LAYOUT == kColTma)
    scalesPerExpert = rows4 * NG;
  else
    scalesPerExpert = rows4 * kPackedWords * 4; // bytes
  float* scaleF = static_cast<float*>(scales) + (LAYOUT == kUe8m0Packed ? 0 : expert * scalesPerExpert);
  unsigned char* scaleB = static_cast<unsigned char*>(scales) + (LAYOUT == kUe8m0Packed ? expert * scalesPerExpert : 0);

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
  const unsigned char* gate = row + static_cast<i64>(j) * G * kInBytes;
  const unsigned char* up = gate + static_cast<i64>(H) * kInBytes;

  // All loads first, so every one is in flight before the first use.
  Raw<kVecBytes> rawG[kChunks], rawU[kChunks];
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int off = (c * TPG + (active ? lane : 0)) * kVecBytes;
    rawG[c] = loadRaw<kVecBytes>(gate + off);
    rawU[c] = loadRaw<kVecBytes>(up + off);
  }

  float y[kChunks][VEC];
  float amax = 0.0f;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    float g[VEC], u[VEC];
    unpack<IN, VEC>(rawG[c], g);
    unpack<IN, VEC>(rawU[c], u);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float silu = __fdiv_rn(g[k], 1.0f + expf(-g[k]));
      y[c][k] = silu * u[k];
      if (active)
        amax = fmaxf(amax, fabsf(y[c][k]));
    }
  }
  // Team slots are kSlot consecutive lanes, aligned inside the warp.
  const unsigned teamMask =
      kSlot == 32 ? 0xffffffffu : (((1u << kSlot) - 1u) << ((threadIdx.x % 32) & ~(kSlot - 1)));
#pragma unroll
  for (int off = kSlot / 2; off > 0; off /= 2)
    amax = fmaxf(amax, __shfl_xor_sync(teamMask, amax, off, kSlot));
  if (!active)
    return;

  float s = __fdiv_rn(amax, QuantTraits<OUT>::kMax);
  if constexpr (HAS_UB)
    s = fminf(s, *scaleUb);
  s = fmaxf(s, QuantTraits<OUT>::kMinScale);
  if constexpr (POW2)
    s = pow2Ceil(s);

  unsigned char* qRow = q + (expert * rows + t) * H + static_cast<i64>(j) * G;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    u32 w[(VEC + 3) / 4];
#pragma unroll
    for (int i = 0; i < (VEC + 3) / 4; ++i)
      w[i] = 0;
#pragma unroll
    for (int k = 0; k < VEC; k += 2) {
      const float lo = __fdiv_rn(y[c][k], s);
      const float hi = k + 1 < VEC ? __fdiv_rn(y[c][k + 1], s) : 0.0f;
      const u32 pair = quantPair<OUT>(lo, hi) & (k + 1 < VEC ? 0xffffu : 0xffu);
      w[k / 4] |= pair << (8 * (k % 4));
    }
    storeBytes<VEC>(qRow + (c * TPG + lane) * VEC, w);
  }

  if (lane == 0) {
    if constexpr (LAYOUT == kRow) {
      scaleF[t * NG + j] = s;
    } else if constexpr (LAYOUT == kCol) {
      scaleF[static_cast<i64>(j) * rows + t] = s;
    } else if constexpr (LAYOUT == kColTma) {
      scaleF[static_cast<i64>(j) * rows4 + t] = s;
    } else {
      const i64 word = static_cast<i64>(j / 4) * rows4 + t;
      scaleB[word * 4 + j % 4] = static_cast<unsigned char>((__float_as_uint(s) >> 23) & 0xffu);
      if (j == NG - 1)
        for (int b = j % 4 + 1; b < 4; ++b)
          scaleB[word * 4 + b] = 0;
    }
  }
}

} // namespace bqjit_kernel
