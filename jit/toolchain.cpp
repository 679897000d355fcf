#include "jit/toolchain.hpp"

#include <vector>

#include <nvrtc.h>

#include "bqjit/error.hpp"
#include "jit/nvrtc_program.hpp"

namespace bqjit {

std::string NvrtcIdentity::toString() const {
  return std::to_string(major) + "." + std::to_string(minor) + " (" + build + ")";
}

namespace {

// The token after `marker` on its line of the PTX header, or "".
std::string headerToken(const std::string& ptx, const std::string& marker) {
  auto pos = ptx.find(marker);
  if (pos == std::string::npos)
    return "";
  pos += marker.size();
  auto end = ptx.find_first_of(" \r\n", pos);
  return ptx.substr(pos, end - pos);
}

} // namespace

llvm::Expected<NvrtcIdentity> queryNvrtcIdentity() {
  NvrtcIdentity id;
  if (nvrtcVersion(&id.major, &id.minor) != NVRTC_SUCCESS)
    return makeError(ErrorCode::CompileFailed, "nvrtcVersion failed");
  auto program =
      NvrtcProgram::create("__global__ void bqjit_probe() {}\n", "bqjit_probe.cu", {}, {});
  if (!program)
    return program.takeError();
  if (auto err = program->compile({"--gpu-architecture=compute_80"}))
    return std::move(err);
  auto ptx = program->ptx();
  if (!ptx)
    return ptx.takeError();
  std::string vtag = headerToken(*ptx, ", V");
  std::string buildId = headerToken(*ptx, "Compiler Build ID: ");
  if (vtag.empty() && buildId.empty())
    return makeError(ErrorCode::CompileFailed,
                     "NVRTC's PTX header carries no build identifier (looked for 'Compiler Build "
                     "ID:' and ', V')");
  id.build = "V" + vtag + " " + buildId;
  return id;
}

std::vector<int> nvrtcSupportedArchs() {
  int count = 0;
  if (nvrtcGetNumSupportedArchs(&count) != NVRTC_SUCCESS || count <= 0)
    return {};
  std::vector<int> archs(count);
  if (nvrtcGetSupportedArchs(archs.data()) != NVRTC_SUCCESS)
    return {};
  return archs;
}

} // namespace bqjit
