// One problem for `verify` and `tune`: the input and the CPU reference's
// answer on the host, and `sets` copies of its buffers on the device (tune
// rotates among them so that L2 never holds the input of a timed launch).
#pragma once

#include <cstdint>
#include <vector>

#include <llvm/Support/Error.h>

#include "bqjit/service.hpp"
#include "reference/reference.hpp"
#include "tools/commands.hpp"
#include "tools/gpu_session.hpp"

namespace bqjit::cli {

/// The host side: arguments, input and the reference result.
struct HostProblem {
  ref::Problem problem;
  std::vector<uint8_t> x;
  ref::Result expected;

  int64_t xBytes() const;
  int64_t qBytes() const {
    return ref::outputBytes(problem.spec, problem.tokens, problem.numExperts);
  }
  int64_t scaleBytes() const {
    return ref::scaleBufferBytes(problem.spec, problem.tokens, problem.numExperts);
  }
  /// Bytes a launch moves: E*T*(2H*inBytes + H * bits / 8) plus the scale buffer.
  int64_t trafficBytes() const;
};

/// Builds the input of `options` (tokens, ldx, experts, scale_ub, seed) for
/// `spec` and runs the CPU reference on it.
llvm::Expected<HostProblem> makeHostProblem(const KernelSpec& spec, const GpuOptions& options);

/// `sets` copies of the device buffers, each with the input uploaded.
class DeviceProblem {
public:
  static llvm::Expected<DeviceProblem> create(const GpuSession& session, const HostProblem& host,
                                              int64_t sets);

  int64_t sets() const { return sets_; }
  /// The launch arguments of copy `set`.
  LaunchArgs args(int64_t set) const;
  /// Fills q and scales of copy `set` with the poison byte the reference expects.
  llvm::Error poison(int64_t set) const;
  /// Downloads copy `set` (after a synchronizing launch) and compares it with the reference.
  llvm::Expected<ref::CompareReport> check(int64_t set) const;

private:
  DeviceProblem(const GpuSession& session, const HostProblem& host)
      : session_(&session), host_(&host) {}
  llvm::Error upload();

  const GpuSession* session_;
  const HostProblem* host_;
  int64_t sets_ = 0;
  size_t xStride_ = 0, qStride_ = 0, sStride_ = 0;
  DeviceBuffer x_, q_, scales_, scaleUb_, maskedM_, globalScale_;
};

} // namespace bqjit::cli
