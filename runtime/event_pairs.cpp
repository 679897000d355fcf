#include "runtime/event_pairs.hpp"

#include <algorithm>

namespace bqjit {

EventPairs::~EventPairs() {
  for (CUevent e : events_)
    if (e)
      driver_.cuEventDestroy(e);
}

llvm::Error EventPairs::create(int pairs) {
  events_.resize(2 * static_cast<size_t>(pairs), nullptr);
  for (CUevent& e : events_)
    if (auto err = driver_.check(driver_.cuEventCreate(&e, CU_EVENT_DEFAULT), "cuEventCreate"))
      return err;
  return llvm::Error::success();
}

llvm::Expected<std::vector<float>> EventPairs::elapsed() const {
  std::vector<float> ms(events_.size() / 2);
  if (ms.empty())
    return ms;
  if (auto err = driver_.check(driver_.cuEventSynchronize(events_.back()), "cuEventSynchronize"))
    return err;
  for (size_t i = 0; i < ms.size(); ++i)
    if (auto err =
            driver_.check(driver_.cuEventElapsedTime(&ms[i], events_[2 * i], events_[2 * i + 1]),
                          "cuEventElapsedTime"))
      return err;
  return ms;
}

llvm::Expected<double> EventPairs::medianMicros(CUstream stream, int warmup,
                                                const std::function<llvm::Error()>& launch) const {
  for (int i = 0; i < warmup; ++i)
    if (auto err = launch())
      return err;
  for (int i = 0; i < pairs(); ++i) {
    if (auto err = driver_.check(driver_.cuEventRecord(start(i), stream), "cuEventRecord"))
      return err;
    if (auto err = launch())
      return err;
    if (auto err = driver_.check(driver_.cuEventRecord(end(i), stream), "cuEventRecord"))
      return err;
  }
  auto ms = elapsed();
  if (!ms)
    return ms.takeError();
  return 1000.0 * median(std::move(*ms));
}

double median(std::vector<float> values) {
  if (values.empty())
    return 0;
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

} // namespace bqjit
