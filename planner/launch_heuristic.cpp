#include "planner/launch_heuristic.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "planner/launch_grid.hpp"

namespace bqjit {

namespace {

constexpr int kBulkBlockElements = 8192;
constexpr int kBulkBlockMaxThreads = 512;
// FP4's occupancy promise: warps an SM (deriveMinBlocksPerSm).
constexpr int kFp4WarpsPerSm = 48;
// FP4's one-vector few-token teams: 41 registers, six 256-thread blocks an
// SM; and the waves of them from which the two-vector teams win
// (manyTeamsFromTokens). NVFP4's take 43 since they read the global scale
// at their start (templates/scales.cuh), five blocks an SM; the threshold
// keeps the block count it was measured with (1.4 x 6 blocks an SM).
constexpr int kFp4FewTokenBlocksPerSm = 6;
constexpr double kFp4ManyTeamsWaves = 1.4;
// The 8-bit few-token teams (one 16-byte vector of 16-bit values a thread,
// 39-40 registers): six 256-thread blocks an SM left to ptxas, eight with the
// promise of a full SM (32 registers); and the waves of the former from which
// the promise is taken (fewTokensFullSm).
constexpr int kFewTokenBlocksPerSm = 6;
constexpr double kFullSmWaves = 1.2;
// Threads a multiprocessor holds (sm_80, sm_90, sm_100; 1536 on sm_86/89,
// where a promise of more only caps the registers the same way).
constexpr int kThreadsPerSm = 2048;

int largestPow2Dividing(int n, int cap) {
  int p = 1;
  while (p * 2 <= cap && n % (p * 2) == 0)
    p *= 2;
  return p;
}

// A team of any size up to 32 that divides `vectors`, for groups whose vector
// count has few factors of two: among the teams whose threads read at most
// four vectors, the one that leaves the fewest lanes of its power-of-two slot
// idle, the nearest to two vectors a thread on a tie; where no team reads so
// few, the largest.
int leastIdleTeam(int vectors) {
  int best = 0;
  double bestIdle = 2.0;
  for (int t = 1; t <= std::min(32, vectors); ++t) {
    if (vectors % t != 0 || vectors / t > 4)
      continue;
    int slot = 1;
    while (slot < t)
      slot *= 2;
    const double idle = double(slot - t) / slot;
    const bool nearerTwo = std::abs(vectors / t - 2) < std::abs(vectors / std::max(best, 1) - 2);
    if (idle < bestIdle - 1e-9 || (idle < bestIdle + 1e-9 && nearerTwo)) {
      best = t;
      bestIdle = idle;
    }
  }
  if (best == 0)
    for (int t = std::min(32, vectors); t >= 1; --t)
      if (vectors % t == 0)
        return t;
  return best;
}

// Whether the spec's target is an sm_90 architecture (sm_90, sm_90a).
bool targetsHopper(const KernelSpec& spec) {
  auto arch = spec.targetArch();
  return arch && arch->major() == 9;
}

} // namespace

int inFlightMultiple(const DeviceProfile& device) {
  // The reference class's bytes in flight (1) or twice them (2), whichever
  // is nearer the device's need in log scale: an H200 (1.47) doubles. No GPU
  // needing more than twice has been measured, so the multiple stops at 2.
  return device.inFlightScale() >= 1.41421356 ? 2 : 1;
}

LaunchShape chooseLaunchShape(const KernelSpec& spec, Regime regime, int maxVecWidth) {
  return chooseLaunchShape(spec, regime, DeviceProfile::reference(), maxVecWidth);
}

LaunchShape chooseLaunchShape(const KernelSpec& spec, Regime regime, const DeviceProfile& device,
                              int maxVecWidth) {
  const int multiple = inFlightMultiple(device);
  const bool many = regime == Regime::ManyTokens || regime == Regime::VeryManyTokens;
  bool smallGroupTeams = false;
  LaunchShape s;
  // 16-byte loads where G allows it.
  s.vecWidth = largestPow2Dividing(
      spec.groupSize, std::max(1, std::min(maxVecWidth, 16 / dtypeBytes(spec.inDtype))));
  if (many) {
    const int vectors = spec.groupSize / s.vecWidth;
    // A power-of-two team (no idle lanes) of at least 8 threads or else two
    // or more vectors per thread: more bytes in flight per thread and the
    // per-team work spread over more elements, but not so few threads that
    // a small group is served by a team of 4 (G = 64: 8 x 16 bytes is 2-3%
    // faster than 4 x 2 x 16 bytes at T = 8192 on an H100, bench/NOTES.md
    // version 4). A device that needs twice the bytes in flight halves the
    // smallest team: on an H200, G = 64 reads two vectors a thread (15%
    // faster there, bench/NOTES.md issue 16).
    s.threadsPerGroup =
        largestPow2Dividing(vectors, std::min(32, std::max(8 / multiple, vectors / 2)));
    // There, groups of 16 and 32 (fewer than 8 vectors) read two vectors a
    // thread too, in 256-thread blocks: 1.14-1.25x the one-vector teams for
    // NVFP4 and MXFP4 at T >= 1024 (bench/NOTES.md, issue 18). FP4 does so on
    // every sm_90 device: its threads spend about 1.4 times fp8's
    // instructions on an element, and on an H100 (the reference class) its
    // two-vector teams take 98-99% of a copy at T = 8192 where one vector a
    // thread took 86-90% (bench/NOTES.md, seventeenth session). Not on sm_100
    // and sm_120: ptxas spills masked, interleaved and fp16 FP4 threads of two
    // vectors there under FP4's occupancy promise (tests/test_compiler), and
    // no Blackwell GPU has measured either shape.
    smallGroupTeams = vectors < 8 &&
                      (multiple > 1 || (spec.outDtype == OutDtype::FP4E2M1 && targetsHopper(spec)));
    if (smallGroupTeams)
      s.threadsPerGroup = largestPow2Dividing(vectors, std::max(1, vectors / 2));
    // A power-of-two team can leave a thread many vectors where G has few
    // factors of two: G = 112 (14 vectors) in teams of 2 reads 7 vectors, 56
    // values a thread, which took 245 registers (one block an SM) and a
    // compile 2.5 times the usual one. More than four vectors a thread: a
    // team of any size, in its power-of-two slot (G = 112: 7 threads of 2
    // vectors, one lane of 8 idle).
    if (vectors / s.threadsPerGroup > 4)
      s.threadsPerGroup = leastIdleTeam(vectors);
  } else {
    // One vector per thread where the team fits in a warp (any team size, in
    // a power-of-two slot): the shortest dependent chain, which is what
    // decode sizes wait on. Tiny: narrower vectors, down to 8 bytes, while
    // the team still fits in a warp; at G = 128, 32 x 8 bytes beat 16 x 16
    // bytes by 3-7% at T x H <= 0.9M but lose 8% at 3.7M (bench/NOTES.md).
    // fp4_e2m1 packs two columns a byte: a step makes an even number of them.
    const int minVec = spec.outDtype != OutDtype::FP4E2M1 ? 1
                       : spec.gateUp == GateUp::Split     ? 2
                                                          : 4;
    if (regime == Regime::VeryFewTokens)
      while (s.vecWidth * dtypeBytes(spec.inDtype) > 8 && spec.groupSize / (s.vecWidth / 2) <= 32 &&
             s.vecWidth / 2 >= minVec)
        s.vecWidth /= 2;
    const int vectors = spec.groupSize / s.vecWidth;
    s.threadsPerGroup = 1;
    for (int t = std::min(32, vectors); t >= 1; --t)
      if (vectors % t == 0) {
        s.threadsPerGroup = t;
        break;
      }
  }
  // 256-thread blocks; 128 where more bytes are in flight per thread (on an
  // H200, 1024-4096 elements a block beat larger ones by 5-12%).
  s.groupsPerBlock = std::max(1, (many && !smallGroupTeams ? 256 / multiple : 256) / s.teamSlot());
  // Very many tokens: blocks of 8192 elements, where G divides that and
  // the block stays within 512 threads, are 0.5-1.5% faster than blocks
  // of 256 threads from T x H = 2^25 up at G = 64 and 128 (and 1.5-3.5%
  // slower at 2^24 and below); 4096 or 16384 elements are slower than either.
  // Measured on an H100, bench/NOTES.md version 6; on an H200 these blocks
  // are 8-12% slower than the many-token blocks, so only the reference class
  // takes them. Blocks of 1024 threads leave a thread 64 registers, and
  // ptxas spilled 4-16 bytes a thread there at G = 16, 32 and 64 and for
  // fp32 at G = 128 (tests/test_compiler, EveryRegimesShape...): the bulk
  // block stops at 512 threads (G = 64 thus loses the 0.9-1.5% it gained in
  // version 6, on an H100, before the template's later changes). FP4's
  // two-vector teams keep their 256-thread blocks: the ones measured at
  // 98-99% of a copy on an H100, and the only ones that write swizzled_128x4
  // scales in whole sectors (SwizzleTiles in the template).
  if (regime == Regime::VeryManyTokens && multiple == 1 && !smallGroupTeams &&
      kBulkBlockElements % spec.groupSize == 0 &&
      kBulkBlockElements / spec.groupSize * s.teamSlot() <= kBulkBlockMaxThreads)
    s.groupsPerBlock = kBulkBlockElements / spec.groupSize;
  s.minBlocksPerSm = deriveMinBlocksPerSm(spec, s);
  return s;
}

namespace {

// The fewest tokens whose grid of `shape` holds at least `waves` times the
// blocks `device` keeps resident at `blocksPerSm` (waveBlocks grows with T).
int64_t tokensFromWaves(const KernelSpec& spec, const LaunchShape& shape, int blocksPerSm,
                        double waves, const DeviceProfile& device) {
  KernelSpec resolved = spec;
  resolved.shape = shape;
  const double blocks = waves * device.smCount * blocksPerSm;
  int64_t lo = 1, hi = kMaxLaunchRows;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (double(waveBlocks(resolved, mid)) >= blocks)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

} // namespace

std::optional<int64_t> manyTeamsFromTokens(const KernelSpec& spec, const LaunchShape& few,
                                           const LaunchShape& many, const DeviceProfile& device) {
  if (spec.outDtype != OutDtype::FP4E2M1 || spec.scaleLayout != ScaleLayout::Swizzled128x4 ||
      spec.masked || device.smCount <= 0)
    return std::nullopt;
  const int fewElements = spec.groupSize / few.threadsPerGroup;
  const int manyElements = spec.groupSize / many.threadsPerGroup;
  if (manyElements != 2 * fewElements || few.threadsPerBlock() != many.threadsPerBlock())
    return std::nullopt;
  return tokensFromWaves(spec, few, kFp4FewTokenBlocksPerSm, kFp4ManyTeamsWaves, device);
}

std::optional<FullSmSplit> fewTokensFullSm(const KernelSpec& spec, const LaunchShape& few,
                                           const DeviceProfile& device) {
  const bool sixteenBitIn = spec.inDtype == InDtype::BF16 || spec.inDtype == InDtype::FP16;
  const bool fp8Out = spec.outDtype == OutDtype::FP8E4M3 || spec.outDtype == OutDtype::FP8E5M2;
  // FP4 as measured: swizzled_128x4 scales (the bytes layout's few-token
  // launches were not).
  const bool fp4Swizzled =
      spec.outDtype == OutDtype::FP4E2M1 && spec.scaleLayout == ScaleLayout::Swizzled128x4;
  // Where the promise's 32 registers hold the thread without spilling (int8's
  // rounding, col_tma's padding rows and masked batches' expert offsets
  // spill 4-20 bytes there; tests/test_compiler) and where it was measured
  // to pay: gelu's threads take 32 registers unasked.
  if (!sixteenBitIn || !(fp8Out || fp4Swizzled) || spec.scaleLayout == ScaleLayout::ColTma ||
      spec.masked || spec.activation == Activation::Gelu || device.smCount <= 0 ||
      inFlightMultiple(device) != 2)
    return std::nullopt;
  if (spec.groupSize / few.threadsPerGroup != 8 || few.teamSlot() != few.threadsPerGroup ||
      few.threadsPerBlock() != 256 || few.minBlocksPerSm != 0)
    return std::nullopt;
  FullSmSplit split;
  split.shape = few;
  split.shape.minBlocksPerSm = kThreadsPerSm / few.threadsPerBlock();
  split.fromTokens = tokensFromWaves(spec, few, kFewTokenBlocksPerSm, kFullSmWaves, device);
  return split;
}

int deriveMinBlocksPerSm(const KernelSpec& spec, const LaunchShape& shape) {
  // A thread of E elements needs about its E products, its raw input words
  // and 24 more. Where that fits 64 registers, ptxas's default for a
  // 256-thread block, it is left to ptxas; a larger thread's work would
  // otherwise spill under that default.
  const int elements = spec.groupSize / shape.threadsPerGroup;
  const int rawWords = 2 * elements * dtypeBytes(spec.inDtype) / 4;
  int registers = elements + rawWords + 24;
  // gelu's erfc keeps about 40 more values live while ptxas overlaps its
  // polynomials: where a promise is made anyway, it leaves room for them
  // (tests/test_compiler, ActivationsGateUpAndRoundings...: 24 values a
  // thread spilled without it). Where the plain estimate fits 64 registers,
  // no promise: ptxas then fits gelu in 40 at G = 128 in teams of 8, where a
  // promise of fewer blocks let it take 96 (a quarter of the warps resident,
  // 1.5-1.9x silu's time on an H200). Measured with the toolkit's erfcf;
  // the template's own erfc is shorter and keeps the rule.
  if (spec.activation == Activation::Gelu && registers > 64)
    registers += 40;
  // FP4's threads of 16 two-byte values (gate and up in two 16-byte vectors
  // each, the H200's shape for G = 16 and 32) fit 40 registers, but ptxas
  // takes 46-48 for MXFP4 and interleaved or masked FP4: five 256-thread
  // blocks an SM. The promise of 48 warps (six such blocks, 40 registers, no
  // spills) made MXFP4 3-4% faster with swizzled_128x4 scales and NVFP4 1-5%
  // with bytes scales (NVIDIA H200, bench/NOTES.md, sixth session); 32
  // registers (eight blocks) spill and lose 5-10%. Threads of 16 fp32 values
  // are left alone (76-80 registers; 40 would spill).
  if (spec.outDtype == OutDtype::FP4E2M1 && elements == 16 && rawWords <= 16)
    return std::max(1, kFp4WarpsPerSm * 32 / shape.threadsPerBlock());
  // A thread of at most 4 values of a 16-bit input (the very-few-token
  // shapes: one 8-byte vector of gate and of up) fits 32 registers, a full
  // multiprocessor (2048 threads): the promise keeps ptxas there. Left to
  // itself it took 35 for G = 64 in teams of 16 once the amax took
  // redux.sync, six 256-thread blocks an SM instead of eight, and 14336 x 64
  // x 64 (896 blocks) ran in two waves, 14% slower (NVIDIA H200,
  // bench/NOTES.md, ninth session). Not gelu, whose erfc keeps more live.
  if (elements <= 4 && registers <= 32 && spec.activation != Activation::Gelu)
    return std::min(LaunchShape::kMaxMinBlocksPerSm,
                    std::max(1, kThreadsPerSm / shape.threadsPerBlock()));
  if (registers <= 64)
    return 0;
  const int fit = 65536 / (shape.threadsPerBlock() * registers);
  return std::min(LaunchShape::kMaxMinBlocksPerSm, std::max(1, fit));
}

LaunchShape withDerivedOccupancy(const KernelSpec& spec, LaunchShape shape) {
  if (shape.minBlocksPerSm == LaunchShape::kDerived)
    shape.minBlocksPerSm = deriveMinBlocksPerSm(spec, shape);
  return shape;
}

const char* regimeName(Regime regime) {
  switch (regime) {
  case Regime::VeryFewTokens:
    return "very-few-token";
  case Regime::FewTokens:
    return "few-token";
  case Regime::ManyTokens:
    return "many-token";
  case Regime::VeryManyTokens:
    return "very-many-token";
  }
  return "?";
}

std::vector<LaunchShape> candidateShapes(const KernelSpec& spec, Regime regime,
                                         const DeviceProfile& device) {
  const LaunchShape first = chooseLaunchShape(spec, regime, device);
  std::vector<LaunchShape> out{first};
  for (int vec = 16; vec >= 1; vec /= 2)
    for (int tpg = 1; tpg <= 32; ++tpg)
      for (int threads : {128, 256, 512, 1024}) {
        LaunchShape s{tpg, vec, 1};
        s.groupsPerBlock = std::max(1, threads / s.teamSlot());
        s.minBlocksPerSm = deriveMinBlocksPerSm(spec, s);
        if (std::find(out.begin(), out.end(), s) != out.end())
          continue;
        if (auto err = validateShape(spec, s)) {
          llvm::consumeError(std::move(err));
          continue;
        }
        // Loads under 4 bytes (unless G forces them) or over 64 values per
        // thread are never faster; leave them out of the search.
        const bool narrow = vec * dtypeBytes(spec.inDtype) < 4 && vec < first.vecWidth;
        if (narrow || spec.groupSize / tpg > 64)
          continue;
        out.push_back(s);
      }
  return out;
}

} // namespace bqjit
