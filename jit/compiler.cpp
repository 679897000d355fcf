#include "jit/compiler.hpp"

#include <algorithm>
#include <chrono>
#include <optional>

#include "bqjit/arch.hpp"
#include "bqjit/error.hpp"
#include "jit/cache_key.hpp"
#include "jit/cubin_info.hpp"
#include "jit/nvrtc_program.hpp"
#include "jit/resource_report.hpp"
#include "jit/source.hpp"
#include "jit/template_source.hpp"

namespace bqjit {

llvm::Expected<Compiler> Compiler::create() {
  auto id = queryNvrtcIdentity();
  if (!id)
    return id.takeError();
  return Compiler(std::move(*id));
}

std::optional<int> Compiler::ptxFallback(const KernelSpec& spec) {
  auto arch = spec.targetArch();
  if (!arch)
    return std::nullopt;
  const std::vector<int> archs = nvrtcSupportedArchs();
  if (archs.empty() || arch->suffix != 0)
    return std::nullopt;
  const int newest = *std::max_element(archs.begin(), archs.end());
  if (arch->number <= newest)
    return std::nullopt;
  return newest;
}

std::vector<std::string> Compiler::options(const KernelSpec& spec) {
  // A real architecture, so NVRTC emits a cubin (PTX alone would fail on an
  // older driver), except for a GPU newer than this NVRTC knows: PTX of the
  // newest virtual architecture, which that GPU's driver compiles at load.
  // No fast math and no contraction: docs/contract.md asks for IEEE
  // division and unrounded fp32 intermediates.
  const std::optional<int> ptx = ptxFallback(spec);
  return {ptx ? "--gpu-architecture=compute_" + std::to_string(*ptx)
              : "--gpu-architecture=" + spec.arch,
          "--std=c++17",
          "--fmad=false",
          "--prec-div=true",
          "--prec-sqrt=true",
          "--ftz=false",
          "-Xptxas=-v"};
}

std::string Compiler::codeIdentity() const {
  return "template " + templateDigest().xxh3 + " " + std::to_string(templateDigest().bytes) +
         ", nvrtc " + identity_.toString();
}

llvm::Expected<KernelIdentity> Compiler::identify(const KernelSpec& resolved) const {
  if (!resolved.shape || resolved.shape->minBlocksPerSm == LaunchShape::kDerived)
    return makeError(ErrorCode::Internal,
                     "a kernel's identity needs a resolved launch shape: " + resolved.canonical());
  KernelIdentity id;
  id.spec = resolved;
  id.source = generateSource(resolved);
  id.options = options(resolved);
  KeyInputs in;
  in.canonicalSpec = resolved.canonical();
  in.templateSource = templateDigest();
  in.generatedSource = id.source.text;
  in.options = id.options;
  in.nvrtcIdentity = identity_.toString();
  in.arch = resolved.arch;
  id.keyText = in.canonical();
  id.key = hash128(id.keyText);
  return id;
}

llvm::Expected<CompiledKernel> Compiler::compile(const KernelIdentity& kernel) const {
  const KernelSpec& resolved = kernel.spec;
  const std::string context = "spec " + resolved.canonical() + ", arch " + resolved.arch;
  auto wrap = [&](llvm::Error err) {
    std::string message;
    ErrorCode code = consumeError(std::move(err), &message);
    return makeError(code, "compiling " + context + ": " + message);
  };
  // Reject targets NVRTC does not know before compiling, with the list of
  // those that both NVRTC and bqjit (sm_80 and newer) accept.
  {
    auto arch = Arch::parse(resolved.arch);
    if (!arch)
      return arch.takeError();
    auto archs = nvrtcSupportedArchs();
    if (!archs.empty() && std::find(archs.begin(), archs.end(), arch->number) == archs.end() &&
        !ptxFallback(resolved)) {
      std::string list;
      for (int a : archs)
        if (a >= Arch::kMinNumber)
          list += (list.empty() ? "sm_" : ", sm_") + std::to_string(a);
      const std::string from = "sm_" + std::to_string(Arch::kMinNumber);
      const std::string nvrtc = "this NVRTC (" + identity_.toString() + ")";
      return makeError(ErrorCode::InvalidSpec,
                       "invalid spec field 'arch' = '" + resolved.arch + "': " +
                           (list.empty() ? nvrtc + " supports no architecture from " + from + " on"
                                         : "must be one of " + list + " (those from " + from +
                                               " on that " + nvrtc + " supports)"));
    }
  }

  const GeneratedSource& source = kernel.source;
  CompiledKernel out;
  out.spec = resolved;
  out.options = kernel.options;
  out.nvrtcVersion = identity_.toString();
  out.key = kernel.key;

  const auto start = std::chrono::steady_clock::now();
  std::vector<NvrtcProgram::Header> headers;
  for (const TemplateHeader& h : templateHeaders())
    headers.emplace_back(h.name, h.text.str());
  auto program =
      NvrtcProgram::create(source.text, source.fileName, headers, {source.nameExpression});
  if (!program)
    return wrap(program.takeError());
  if (auto err = program->compile(out.options))
    return wrap(std::move(err));
  out.compileMs =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  out.log = program->log();

  auto lowered = program->loweredName(source.nameExpression);
  if (!lowered)
    return wrap(lowered.takeError());
  out.loweredName = *lowered;
  auto ptx = program->ptx();
  if (!ptx)
    return wrap(ptx.takeError());
  out.ptx = std::move(*ptx);
  if (ptxFallback(resolved)) {
    // The image is the PTX itself (the driver loads either); what ptxas
    // would use is decided on the device, so the resources are unknown.
    out.cubin.assign(out.ptx.begin(), out.ptx.end());
    out.cubin.push_back('\0');
    out.resources.registers = -1;
    out.resources.spillStoreBytes = out.resources.spillLoadBytes = -1;
    out.resources.stackFrameBytes = -1;
    out.resources.barriers = -1;
    return out;
  }
  auto cubin = program->cubin();
  if (!cubin)
    return wrap(cubin.takeError());
  out.cubin = std::move(*cubin);
  // Registers and stack come from the cubin; spills only ptxas reports. Its
  // log may be missing or differ in another NVRTC build (one loaded by
  // PyTorch, say): then spills are reported as unknown (-1), not an error.
  auto info = readCubinKernelInfo(out.cubin, out.loweredName);
  if (!info)
    return wrap(info.takeError());
  auto report = parsePtxasReport(out.log, out.loweredName);
  if (report) {
    out.resources = *report;
  } else {
    llvm::consumeError(report.takeError());
    out.resources.spillStoreBytes = out.resources.spillLoadBytes = -1;
    out.resources.sharedBytes = info->sharedBytes < 0 ? 0 : info->sharedBytes;
    out.resources.barriers = -1;
  }
  out.resources.registers = info->registers;
  if (info->frameBytes >= 0)
    out.resources.stackFrameBytes = info->frameBytes;
  return out;
}

} // namespace bqjit
