#include "tools/device_problem.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "bqjit/error.hpp"

namespace bqjit::cli {

namespace {

// Host staging for the replicated input: bounds both memory and HtoD calls.
constexpr size_t kStageBytes = size_t(64) << 20;

// Live rows per expert: all of them for expert 0, none for expert 1, the rest
// pseudo-random, so that both edges are always exercised.
std::vector<int32_t> makeMaskedM(int64_t experts, int64_t tokens, uint64_t seed) {
  std::vector<int32_t> m(experts);
  uint64_t state = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (int64_t e = 0; e < experts; ++e) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    m[e] = e == 0   ? static_cast<int32_t>(tokens)
           : e == 1 ? 0
                    : static_cast<int32_t>((state >> 33) % static_cast<uint64_t>(tokens + 1));
  }
  return m;
}

} // namespace

int64_t HostProblem::xBytes() const {
  return problem.numExperts * problem.tokens * problem.ldx * dtypeBytes(problem.spec.inDtype);
}

int64_t HostProblem::trafficBytes() const {
  const KernelSpec& s = problem.spec;
  return problem.numExperts * problem.tokens *
             (2 * int64_t(s.hidden) * dtypeBytes(s.inDtype) + s.outputRowBytes()) +
         scaleBytes();
}

llvm::Expected<HostProblem> makeHostProblem(const KernelSpec& spec, const GpuOptions& o) {
  HostProblem h;
  ref::Problem& p = h.problem;
  p.spec = spec;
  p.tokens = o.tokens;
  p.ldx = o.ldx > 0 ? o.ldx : 2 * int64_t(spec.hidden);
  if (p.ldx < 2 * int64_t(spec.hidden))
    return makeError(ErrorCode::InvalidArgument,
                     "--ldx " + std::to_string(p.ldx) +
                         " must be >= 2H = " + std::to_string(2 * spec.hidden));
  if (!spec.masked && o.experts != 1)
    return makeError(ErrorCode::InvalidArgument,
                     "--experts " + std::to_string(o.experts) + " needs a masked spec (masked=1)");
  p.numExperts = o.experts;
  p.scaleUb = o.scaleUb;
  if (spec.masked)
    p.maskedM = makeMaskedM(o.experts, o.tokens, o.seed);
  h.x = ref::makeInput(spec, p.tokens, p.ldx, p.numExperts, o.seed);
  if (spec.isNvfp4()) {
    p.globalScale = o.globalScale;
    if (!(p.globalScale > 0.0f)) {
      // vLLM's convention: 448 * 6 / amax of the tensor's y (live rows).
      float amax = 0.0f;
      for (int64_t e = 0; e < p.numExperts; ++e)
        for (int64_t t = 0; t < (spec.masked ? p.maskedM[e] : p.tokens); ++t)
          for (int64_t i = 0; i < spec.hidden; ++i) {
            const int64_t row = (e * p.tokens + t) * p.ldx;
            const bool split = spec.gateUp == GateUp::Split;
            const float g = ref::loadInput(spec.inDtype, h.x.data(), row + (split ? i : 2 * i));
            const float u = ref::loadInput(spec.inDtype, h.x.data(),
                                           row + (split ? spec.hidden + i : 2 * i + 1));
            amax = std::fmax(amax, std::fabs(ref::activation(spec, g, u)));
          }
      p.globalScale = amax > 0.0f && std::isfinite(amax) ? 448.0f * 6.0f / amax : 1.0f;
    }
  }
  try {
    h.expected = ref::run(p, h.x.data());
  } catch (const std::exception& e) {
    return makeError(ErrorCode::InvalidArgument, std::string("reference: ") + e.what());
  }
  return h;
}

llvm::Expected<DeviceProblem> DeviceProblem::create(const GpuSession& session,
                                                    const HostProblem& host, int64_t sets) {
  DeviceProblem d(session, host);
  d.sets_ = std::max<int64_t>(1, sets);
  d.xStride_ = DeviceBuffer::aligned(host.xBytes());
  d.qStride_ = DeviceBuffer::aligned(host.qBytes());
  d.sStride_ = DeviceBuffer::aligned(host.scaleBytes());
  struct Want {
    DeviceBuffer* buffer;
    size_t bytes;
  };
  const size_t n = static_cast<size_t>(d.sets_);
  for (Want w :
       {Want{&d.x_, n * d.xStride_}, Want{&d.q_, n * d.qStride_}, Want{&d.scales_, n * d.sStride_},
        Want{&d.scaleUb_, sizeof(float)}, Want{&d.globalScale_, sizeof(float)},
        Want{&d.maskedM_, std::max<size_t>(1, host.problem.maskedM.size()) * 4}}) {
    auto buffer = session.alloc(w.bytes);
    if (!buffer)
      return buffer.takeError();
    *w.buffer = std::move(*buffer);
  }
  if (auto err = d.upload())
    return err;
  return d;
}

llvm::Error DeviceProblem::upload() {
  const CudaDriver& drv = session_->driver();
  const ref::Problem& p = host_->problem;
  if (auto err = drv.check(drv.cuMemcpyHtoD(scaleUb_.get(), &p.scaleUb, sizeof(float)),
                           "cuMemcpyHtoD", "scale_ub"))
    return err;
  if (auto err = drv.check(drv.cuMemcpyHtoD(globalScale_.get(), &p.globalScale, sizeof(float)),
                           "cuMemcpyHtoD", "global_scale"))
    return err;
  if (!p.maskedM.empty())
    if (auto err = drv.check(
            drv.cuMemcpyHtoD(maskedM_.get(), p.maskedM.data(), p.maskedM.size() * sizeof(int32_t)),
            "cuMemcpyHtoD", "masked_m"))
      return err;
  // The input is replicated into a staging buffer of several copies at their
  // device stride, then uploaded a chunk of copies at a time.
  const size_t perChunk = std::clamp<size_t>(kStageBytes / xStride_, 1, size_t(sets_));
  std::vector<uint8_t> stage(perChunk * xStride_);
  for (size_t c = 0; c < perChunk; ++c)
    std::memcpy(stage.data() + c * xStride_, host_->x.data(), host_->x.size());
  for (size_t set = 0; set < size_t(sets_); set += perChunk) {
    const size_t copies = std::min(perChunk, size_t(sets_) - set);
    if (auto err =
            drv.check(drv.cuMemcpyHtoD(x_.get() + set * xStride_, stage.data(), copies * xStride_),
                      "cuMemcpyHtoD", "input copies " + std::to_string(set)))
      return err;
  }
  return llvm::Error::success();
}

LaunchArgs DeviceProblem::args(int64_t set) const {
  const ref::Problem& p = host_->problem;
  LaunchArgs a;
  a.x = x_.at(set * xStride_);
  a.ldx = p.ldx;
  a.tokens = p.tokens;
  a.q = q_.at(set * qStride_);
  a.scales = scales_.at(set * sStride_);
  a.scaleUb = p.spec.hasScaleUb ? static_cast<const float*>(scaleUb_.at(0)) : nullptr;
  a.maskedM = p.spec.masked ? static_cast<const int32_t*>(maskedM_.at(0)) : nullptr;
  a.numExperts = p.numExperts;
  a.globalScale =
      p.spec.needsGlobalScale() ? static_cast<const float*>(globalScale_.at(0)) : nullptr;
  return a;
}

llvm::Error DeviceProblem::poison(int64_t set) const {
  const CudaDriver& drv = session_->driver();
  const uint8_t byte = host_->problem.poison;
  if (auto err = drv.check(drv.cuMemsetD8(q_.get() + set * qStride_, byte, host_->qBytes()),
                           "cuMemsetD8", "q"))
    return err;
  return drv.check(drv.cuMemsetD8(scales_.get() + set * sStride_, byte, host_->scaleBytes()),
                   "cuMemsetD8", "scales");
}

llvm::Expected<ref::CompareReport> DeviceProblem::check(int64_t set) const {
  const CudaDriver& drv = session_->driver();
  if (auto err = drv.check(drv.cuCtxSynchronize(), "cuCtxSynchronize", "after the launch"))
    return err;
  std::vector<uint8_t> q(host_->qBytes()), scales(host_->scaleBytes());
  if (auto err = drv.check(drv.cuMemcpyDtoH(q.data(), q_.get() + set * qStride_, q.size()),
                           "cuMemcpyDtoH", "q"))
    return err;
  if (auto err =
          drv.check(drv.cuMemcpyDtoH(scales.data(), scales_.get() + set * sStride_, scales.size()),
                    "cuMemcpyDtoH", "scales"))
    return err;
  return ref::compare(host_->problem, host_->expected, q.data(), scales.data());
}

} // namespace bqjit::cli
