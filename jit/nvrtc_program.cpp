#include "jit/nvrtc_program.hpp"

#include "bqjit/error.hpp"

#include <atomic>

namespace bqjit {

std::string nvrtcResultText(nvrtcResult result) {
  return std::string(nvrtcGetErrorString(result)) + " (" +
         std::to_string(static_cast<int>(result)) + ")";
}

namespace {

llvm::Error nvrtcError(const char* call, nvrtcResult result, const std::string& detail = "") {
  return makeError(ErrorCode::CompileFailed, std::string(call) +
                                                 " failed: " + nvrtcResultText(result) +
                                                 (detail.empty() ? "" : "\n" + detail));
}

// Compiles returned in this process: a fact about the NVRTC library loaded
// in it, so process-wide (see nvrtcCompilesReturned).
std::atomic<uint64_t>& compilesReturned() {
  static std::atomic<uint64_t> count{0};
  return count;
}

std::string joinOptions(const std::vector<std::string>& options) {
  std::string out;
  for (const auto& o : options)
    out += (out.empty() ? "" : " ") + o;
  return out;
}

} // namespace

llvm::Expected<NvrtcProgram> NvrtcProgram::create(const std::string& source,
                                                  const std::string& name,
                                                  const std::vector<Header>& headers,
                                                  const std::vector<std::string>& nameExpressions) {
  std::vector<const char*> headerTexts, headerNames;
  for (const auto& [includeName, text] : headers) {
    headerNames.push_back(includeName.c_str());
    headerTexts.push_back(text.c_str());
  }
  nvrtcProgram p = nullptr;
  nvrtcResult r =
      nvrtcCreateProgram(&p, source.c_str(), name.c_str(), static_cast<int>(headers.size()),
                         headerTexts.data(), headerNames.data());
  if (r != NVRTC_SUCCESS)
    return nvrtcError("nvrtcCreateProgram", r, "program: " + name);
  NvrtcProgram program(p);
  for (const auto& expr : nameExpressions)
    if ((r = nvrtcAddNameExpression(p, expr.c_str())) != NVRTC_SUCCESS)
      return nvrtcError("nvrtcAddNameExpression", r, "name expression: " + expr);
  return std::move(program);
}

NvrtcProgram& NvrtcProgram::operator=(NvrtcProgram&& other) noexcept {
  if (this != &other) {
    if (program_)
      nvrtcDestroyProgram(&program_);
    program_ = std::exchange(other.program_, nullptr);
  }
  return *this;
}

NvrtcProgram::~NvrtcProgram() {
  if (program_)
    nvrtcDestroyProgram(&program_);
}

llvm::Error NvrtcProgram::compile(const std::vector<std::string>& options) {
  std::vector<const char*> argv;
  for (const auto& o : options)
    argv.push_back(o.c_str());
  nvrtcResult r = nvrtcCompileProgram(program_, static_cast<int>(argv.size()), argv.data());
  compilesReturned().fetch_add(1, std::memory_order_acq_rel);
  if (r != NVRTC_SUCCESS)
    return nvrtcError("nvrtcCompileProgram", r,
                      "options: " + joinOptions(options) + "\nNVRTC log:\n" + log());
  return llvm::Error::success();
}

std::string NvrtcProgram::log() const {
  size_t size = 0;
  if (nvrtcGetProgramLogSize(program_, &size) != NVRTC_SUCCESS || size == 0)
    return "";
  std::string text(size, '\0');
  if (nvrtcGetProgramLog(program_, text.data()) != NVRTC_SUCCESS)
    return "";
  text.resize(size - 1); // drop the terminating NUL
  return text;
}

llvm::Expected<std::string> NvrtcProgram::ptx() const {
  size_t size = 0;
  nvrtcResult r = nvrtcGetPTXSize(program_, &size);
  if (r != NVRTC_SUCCESS)
    return nvrtcError("nvrtcGetPTXSize", r);
  std::string text(size, '\0');
  if ((r = nvrtcGetPTX(program_, text.data())) != NVRTC_SUCCESS)
    return nvrtcError("nvrtcGetPTX", r);
  if (!text.empty() && text.back() == '\0')
    text.pop_back();
  return text;
}

llvm::Expected<std::vector<char>> NvrtcProgram::cubin() const {
  size_t size = 0;
  nvrtcResult r = nvrtcGetCUBINSize(program_, &size);
  if (r != NVRTC_SUCCESS)
    return nvrtcError("nvrtcGetCUBINSize", r);
  if (size == 0)
    return makeError(ErrorCode::CompileFailed,
                     "NVRTC produced no cubin (was a virtual compute_ architecture given?)");
  std::vector<char> bytes(size);
  if ((r = nvrtcGetCUBIN(program_, bytes.data())) != NVRTC_SUCCESS)
    return nvrtcError("nvrtcGetCUBIN", r);
  return bytes;
}

llvm::Expected<std::string> NvrtcProgram::loweredName(const std::string& nameExpression) const {
  const char* lowered = nullptr;
  nvrtcResult r = nvrtcGetLoweredName(program_, nameExpression.c_str(), &lowered);
  if (r != NVRTC_SUCCESS || !lowered)
    return nvrtcError("nvrtcGetLoweredName", r, "name expression: " + nameExpression);
  return std::string(lowered);
}

uint64_t nvrtcCompilesReturned() {
  return compilesReturned().load(std::memory_order_acquire);
}

llvm::Error ensureNvrtcExitTeardownRegistered() {
  if (nvrtcCompilesReturned() > 0)
    return llvm::Error::success();
  auto program = NvrtcProgram::create("", "bqjit_nvrtc_init.cu", {}, {});
  if (!program)
    return program.takeError();
  return program->compile({});
}

} // namespace bqjit
