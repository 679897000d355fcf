// The C API over bqjit::Service.
#include "bqjit/bqjit.h"

#include <cstring>
#include <string>

#include "bqjit/error.hpp"
#include "bqjit/service.hpp"
#include "cache/kernel_cache.hpp"
#include "jit/json_input.hpp"
#include "jit/launch_heuristic.hpp"

struct bqjit_service_s {
  std::unique_ptr<bqjit::Service> service;
};

struct bqjit_kernel_s {
  bqjit::Kernel kernel;
};

namespace {

thread_local std::string lastError;

bqjit_status fail(bqjit::ErrorCode code, const std::string& message) {
  lastError = std::string(bqjit::errorCodeName(code)) + ": " + message;
  return static_cast<bqjit_status>(code);
}

bqjit_status fail(llvm::Error err) {
  std::string message;
  bqjit::ErrorCode code = bqjit::consumeError(std::move(err), &message);
  return fail(code, message);
}

bqjit_status ok() {
  lastError.clear();
  return BQJIT_OK;
}

// Every entry point that takes JSON reads it here: bounded in size and
// depth (bqjit must never take its host process down on an input), a
// repeated key refused.
llvm::Expected<nlohmann::json> parseSpecJson(const char* json) {
  if (!json)
    return bqjit::makeError(bqjit::ErrorCode::InvalidArgument, "spec_json is NULL");
  // Counted only up to the limit: a huge text is not scanned to its end.
  const size_t limit = bqjit::kSpecJsonLimits.maxBytes;
  const size_t length = ::strnlen(json, limit + 1);
  if (length > limit)
    return bqjit::makeError(bqjit::ErrorCode::InvalidSpec,
                            "spec_json: longer than the limit of " + std::to_string(limit) +
                                " bytes (" + std::to_string(limit / 1024) + " KiB)");
  return bqjit::parseJsonInput(llvm::StringRef(json, length), bqjit::kSpecJsonLimits, "spec_json",
                               bqjit::ErrorCode::InvalidSpec);
}

llvm::Expected<bqjit::KernelSpec> parseSpec(const char* json) {
  auto j = parseSpecJson(json);
  if (!j)
    return j.takeError();
  return bqjit::KernelSpec::fromJson(*j);
}

bqjit_status writeText(const std::string& text, char* buf, size_t size, size_t* needed) {
  if (needed)
    *needed = text.size() + 1;
  if (!buf || size < text.size() + 1)
    return fail(bqjit::ErrorCode::InvalidArgument, "buffer of " + std::to_string(size) +
                                                       " bytes is too small; " +
                                                       std::to_string(text.size() + 1) + " needed");
  std::memcpy(buf, text.c_str(), text.size() + 1);
  return ok();
}

} // namespace

extern "C" {

const char* bqjit_last_error(void) {
  return lastError.c_str();
}

bqjit_status bqjit_service_create(const char* cacheDir, bqjit_service* out) {
  if (!out)
    return fail(bqjit::ErrorCode::InvalidArgument, "out is NULL");
  *out = nullptr;
  auto config = bqjit::Config::fromEnvironment();
  if (!config)
    return fail(config.takeError());
  if (cacheDir)
    config->cacheDir = cacheDir;
  auto service = bqjit::Service::create(*config);
  if (!service)
    return fail(service.takeError());
  *out = new bqjit_service_s{std::move(*service)};
  return ok();
}

void bqjit_service_destroy(bqjit_service service) {
  delete service;
}

bqjit_status bqjit_compile(bqjit_service service, const char* specJson, char* buf, size_t size,
                           size_t* needed) {
  if (!service)
    return fail(bqjit::ErrorCode::InvalidArgument, "service is NULL");
  auto spec = parseSpec(specJson);
  if (!spec)
    return fail(spec.takeError());
  auto kernel = service->service->compile(*spec);
  if (!kernel)
    return fail(kernel.takeError());
  const bqjit::CompiledKernel& k = **kernel;
  nlohmann::json j = {{"key", k.key},
                      {"spec", k.spec.toJson()},
                      {"lowered_name", k.loweredName},
                      {"resources", k.resources.toJson()},
                      {"cubin_bytes", k.cubin.size()},
                      {"ptx_bytes", k.ptx.size()},
                      {"nvrtc", k.nvrtcVersion},
                      {"compile_ms", k.compileMs}};
  return writeText(j.dump(), buf, size, needed);
}

bqjit_status bqjit_spec_for_device(bqjit_service service, const char* specJson, int device,
                                   char* buf, size_t size, size_t* needed) {
  if (!service)
    return fail(bqjit::ErrorCode::InvalidArgument, "service is NULL");
  auto j = parseSpecJson(specJson);
  if (!j)
    return fail(j.takeError());
  if (!j->is_object())
    return fail(bqjit::ErrorCode::InvalidSpec,
                "spec_json must be a JSON object, got " + std::string(j->type_name()));
  (*j)["arch"] = "sm_80"; // placeholder so that validation passes; replaced below
  auto spec = bqjit::KernelSpec::fromJson(*j);
  if (!spec)
    return fail(spec.takeError());
  auto resolved = service->service->forDevice(*spec, device);
  if (!resolved)
    return fail(resolved.takeError());
  return writeText(resolved->canonical(), buf, size, needed);
}

bqjit_status bqjit_default_launch(const char* specJson, int maxVecWidth, char* buf, size_t size,
                                  size_t* needed) {
  auto spec = parseSpec(specJson);
  if (!spec)
    return fail(spec.takeError());
  if (maxVecWidth < 1)
    return fail(bqjit::ErrorCode::InvalidArgument,
                "max_vec_width = " + std::to_string(maxVecWidth) + ": must be >= 1");
  const bqjit::LaunchShape s = bqjit::chooseLaunchShape(*spec, maxVecWidth);
  nlohmann::json j = {{"threads_per_group", s.threadsPerGroup},
                      {"vec_width", s.vecWidth},
                      {"groups_per_block", s.groupsPerBlock}};
  return writeText(j.dump(), buf, size, needed);
}

bqjit_status bqjit_kernel_get(bqjit_service service, const char* specJson, int device,
                              bqjit_kernel* out) {
  if (!service || !out)
    return fail(bqjit::ErrorCode::InvalidArgument, !service ? "service is NULL" : "out is NULL");
  *out = nullptr;
  auto spec = parseSpec(specJson);
  if (!spec)
    return fail(spec.takeError());
  auto kernel = service->service->getKernel(*spec, device);
  if (!kernel)
    return fail(kernel.takeError());
  *out = new bqjit_kernel_s{*kernel};
  return ok();
}

void bqjit_kernel_release(bqjit_kernel kernel) {
  delete kernel;
}

bqjit_status bqjit_kernel_launch(bqjit_kernel kernel, const bqjit_launch_args* args, void* stream) {
  if (!kernel || !args)
    return fail(bqjit::ErrorCode::InvalidArgument, !kernel ? "kernel is NULL" : "args is NULL");
  bqjit::LaunchArgs a;
  a.x = reinterpret_cast<const void*>(args->x);
  a.ldx = args->ldx;
  a.tokens = args->tokens;
  a.q = reinterpret_cast<void*>(args->q);
  a.scales = reinterpret_cast<void*>(args->scales);
  a.scaleUb = reinterpret_cast<const float*>(args->scale_ub);
  a.maskedM = reinterpret_cast<const int32_t*>(args->masked_m);
  a.numExperts = args->num_experts;
  if (auto err = kernel->kernel.launch(a, static_cast<CUstream>(stream)))
    return fail(std::move(err));
  return ok();
}

} // extern "C"
