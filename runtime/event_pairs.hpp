// Start/end event pairs for timing launches one at a time (`bqjit tune`, the
// autotuner).
#pragma once

#include <functional>
#include <vector>

#include <cuda.h>
#include <llvm/Support/Error.h>

#include "runtime/cuda_driver.hpp"

namespace bqjit {

/// CUDA events in pairs, destroyed with the object; made in the current
/// context by create().
class EventPairs {
public:
  explicit EventPairs(const CudaDriver& driver) : driver_(driver) {}
  EventPairs(const EventPairs&) = delete;
  EventPairs& operator=(const EventPairs&) = delete;
  ~EventPairs();

  llvm::Error create(int pairs);
  int pairs() const { return static_cast<int>(events_.size() / 2); }
  CUevent start(int i) const { return events_[2 * i]; }
  CUevent end(int i) const { return events_[2 * i + 1]; }

  /// Milliseconds of each pair, once the last pair's end has completed.
  llvm::Expected<std::vector<float>> elapsed() const;
  /// Calls `launch` `warmup` times, then once between each pair's events on
  /// `stream`; the median of the pairs in microseconds.
  llvm::Expected<double> medianMicros(CUstream stream, int warmup,
                                      const std::function<llvm::Error()>& launch) const;

private:
  const CudaDriver& driver_;
  std::vector<CUevent> events_;
};

/// The median of `values` (the upper one of an even count); 0 for none.
double median(std::vector<float> values);

} // namespace bqjit
