// bqjit kernel template: the types, the codes of the spec's choices (they
// match the generated struct's constants, jit/source.cpp) and the team slot.
//
// Constants are `inline constexpr` (external linkage), so that no name in the
// PTX carries NVRTC's per-compile unique id of internal-linkage objects and
// equal sources give equal PTX.
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

// Threads of a block of specialization S: a team slot for each of its groups.
template <class S>
inline constexpr int kThreadsPerBlock = TeamSlot<S::kThreadsPerGroup>::value * S::kGroupsPerBlock;

// Whether the launch's occupancy promise caps a thread at 32 registers (a
// full multiprocessor of 2048 threads).
template <class S>
inline constexpr bool kRegisterCap32 = S::kMinBlocksPerSm * kThreadsPerBlock<S> >= 2048;

template <int IN> struct InBytes { static constexpr int value = IN == kFP32 ? 4 : 2; };

} // namespace bqjit_kernel
