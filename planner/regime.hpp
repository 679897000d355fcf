// Regimes: T is a run-time value, so a spec that leaves its launch shape to
// bqjit is compiled once per regime of T x H (once where two agree) and each
// launch picks by T x H.
#pragma once

#include <array>
#include <cstdint>

namespace bqjit {

/// The regimes in size order: each serves the launches of T x H elements
/// from one past the previous one's limit up to its own.
enum class Regime : int {
  VeryFewTokens,  ///< T x H <= 2^20: the shortest dependent chain
  FewTokens,      ///< T x H <= 2^22: one 16-byte vector per thread
  ManyTokens,     ///< T x H <= 2^25: more bytes in flight per thread
  VeryManyTokens, ///< beyond: the many-token teams in blocks of 8192 elements
};

inline constexpr int kRegimeCount = 4;

/// Every regime, in size order, for loops and tables indexed by Regime.
inline constexpr std::array<Regime, kRegimeCount> kRegimes = {
    Regime::VeryFewTokens, Regime::FewTokens, Regime::ManyTokens, Regime::VeryManyTokens};

/// The regime whose shape stands for a kernel when one is asked for (its
/// spec(), the tuning default, the resource report's first line).
inline constexpr Regime kDefaultRegime = Regime::ManyTokens;

/// The largest T x H each regime serves, measured on an H100 (bench/NOTES.md
/// versions 2, 4 and 6); the last has no limit.
inline constexpr std::array<int64_t, kRegimeCount> kRegimeMaxElements = {
    int64_t(1) << 20, int64_t(1) << 22, int64_t(1) << 25, INT64_MAX};

inline constexpr int index(Regime regime) {
  return static_cast<int>(regime);
}

inline constexpr int64_t regimeMaxElements(Regime regime) {
  return kRegimeMaxElements[index(regime)];
}

/// The smallest T x H a regime serves.
inline constexpr int64_t regimeMinElements(Regime regime) {
  return regime == Regime::VeryFewTokens ? 0 : kRegimeMaxElements[index(regime) - 1] + 1;
}

/// The fewest tokens of a launch in a regime at H = `hidden` (1 for the first).
inline constexpr int64_t regimeFirstTokens(Regime regime, int64_t hidden) {
  const int64_t t = (regimeMinElements(regime) + hidden - 1) / hidden;
  return t < 1 ? 1 : t;
}

/// The most tokens of a launch in a regime at H = `hidden` (INT64_MAX for the last).
inline constexpr int64_t regimeLastTokens(Regime regime, int64_t hidden) {
  return regime == Regime::VeryManyTokens ? INT64_MAX : regimeMaxElements(regime) / hidden;
}

/// The regime of a launch of `elements` = T x H.
inline constexpr Regime regimeFor(int64_t elements) {
  for (Regime r : kRegimes)
    if (elements <= regimeMaxElements(r))
      return r;
  return Regime::VeryManyTokens;
}

/// The one name of each regime, used in reports, tuning file names and tests:
/// "very-few-token", "few-token", "many-token", "very-many-token".
const char* regimeName(Regime regime);

} // namespace bqjit
