// The C API over bqjit::Service.
#include "bqjit/bqjit.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>

// Inline: xxHash is a build-time header, never a library a host must link.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "bqjit/error.hpp"
#include "bqjit/service.hpp"
#include "cache/kernel_cache.hpp"
#include "core/json_input.hpp"
#include "core/version.hpp"
#include "planner/launch_heuristic.hpp"
#include "runtime/c_api_guard.hpp"

/// Specs already parsed from JSON text, so that asking again with the same
/// text costs a hash and a compare, no parse and no allocation.
class ParsedSpecs {
public:
  std::optional<bqjit::KernelSpec> find(const char* text, size_t length, uint64_t hash) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    auto range = byHash_.equal_range(hash);
    for (auto it = range.first; it != range.second; ++it)
      if (it->second.text.size() == length &&
          std::memcmp(it->second.text.data(), text, length) == 0)
        return it->second.spec;
    return std::nullopt;
  }
  void insert(const char* text, size_t length, uint64_t hash, const bqjit::KernelSpec& spec) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    // Bounded: a caller that sends ever-new text gets parsing, not a leak.
    if (byHash_.size() >= kMaxEntries)
      byHash_.clear();
    byHash_.emplace(hash, Entry{std::string(text, length), spec});
  }

private:
  static constexpr size_t kMaxEntries = 4096;
  struct Entry {
    std::string text;
    bqjit::KernelSpec spec;
  };
  mutable std::shared_mutex mutex_;
  std::unordered_multimap<uint64_t, Entry> byHash_;
};

static_assert(static_cast<int>(bqjit::LogLevel::Quiet) == BQJIT_LOG_QUIET &&
                  static_cast<int>(bqjit::LogLevel::Warn) == BQJIT_LOG_WARN &&
                  static_cast<int>(bqjit::LogLevel::Info) == BQJIT_LOG_INFO &&
                  static_cast<int>(bqjit::LogLevel::Debug) == BQJIT_LOG_DEBUG,
              "bqjit_log_level and bqjit::LogLevel must agree");

struct bqjit_service_s {
  std::unique_ptr<bqjit::Service> service;
  ParsedSpecs parsed;
};

struct bqjit_kernel_s {
  bqjit::Kernel kernel;
};

struct bqjit_spec_s {
  bqjit::KernelSpec spec;
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

// Every entry point that returns a status runs its body here.
template <class Body> bqjit_status guarded(const char* entry, Body&& body) noexcept {
  return bqjit::guardedCall(
      entry, std::forward<Body>(body),
      [](bqjit::ErrorCode code, const std::string& message) { return fail(code, message); });
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

const char* bqjit_version(void) {
  return bqjit::versionString();
}

const char* bqjit_last_error(void) {
  return lastError.c_str();
}

bqjit_status bqjit_set_log_callback(bqjit_log_callback callback, void* user, int level) {
  return guarded("bqjit_set_log_callback", [&]() -> bqjit_status {
    if (level < BQJIT_LOG_QUIET || level > BQJIT_LOG_DEBUG)
      return fail(bqjit::ErrorCode::InvalidArgument,
                  "level = " + std::to_string(level) +
                      ": must be BQJIT_LOG_QUIET (0), BQJIT_LOG_WARN (1), BQJIT_LOG_INFO (2) or "
                      "BQJIT_LOG_DEBUG (3)");
    bqjit::LogSink sink;
    if (callback)
      sink = [callback, user](bqjit::LogLevel l, const std::string& text) {
        callback(static_cast<int>(l), text.c_str(), user);
      };
    if (auto err = bqjit::setProcessLogSink(std::move(sink), static_cast<bqjit::LogLevel>(level)))
      return fail(std::move(err));
    return ok();
  });
}

bqjit_status bqjit_service_create(const char* cacheDir, bqjit_service* out) {
  return guarded("bqjit_service_create", [&]() -> bqjit_status {
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
  });
}

void bqjit_service_destroy(bqjit_service service) {
  delete service;
}

bqjit_status bqjit_compile(bqjit_service service, const char* specJson, char* buf, size_t size,
                           size_t* needed) {
  return guarded("bqjit_compile", [&]() -> bqjit_status {
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
    return writeText(bqjit::jsonText(j), buf, size, needed);
  });
}

bqjit_status bqjit_spec_for_device(bqjit_service service, const char* specJson, int device,
                                   char* buf, size_t size, size_t* needed) {
  return guarded("bqjit_spec_for_device", [&]() -> bqjit_status {
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
  });
}

bqjit_status bqjit_default_launch(const char* specJson, int maxVecWidth, char* buf, size_t size,
                                  size_t* needed) {
  return guarded("bqjit_default_launch", [&]() -> bqjit_status {
    auto spec = parseSpec(specJson);
    if (!spec)
      return fail(spec.takeError());
    if (maxVecWidth < 1)
      return fail(bqjit::ErrorCode::InvalidArgument,
                  "max_vec_width = " + std::to_string(maxVecWidth) + ": must be >= 1");
    const bqjit::LaunchShape s =
        bqjit::chooseLaunchShape(*spec, bqjit::kDefaultRegime, maxVecWidth);
    return writeText(bqjit::jsonText(s.toJson()), buf, size, needed);
  });
}

bqjit_status bqjit_spec_parse(const char* specJson, bqjit_spec* out) {
  return guarded("bqjit_spec_parse", [&]() -> bqjit_status {
    if (!out)
      return fail(bqjit::ErrorCode::InvalidArgument, "out is NULL");
    *out = nullptr;
    auto spec = parseSpec(specJson);
    if (!spec)
      return fail(spec.takeError());
    *out = new bqjit_spec_s{std::move(*spec)};
    return ok();
  });
}

void bqjit_spec_release(bqjit_spec spec) {
  delete spec;
}

namespace {

bqjit_status getKernel(bqjit_service service, const bqjit::KernelSpec& spec, int device,
                       bqjit_kernel* out) {
  auto kernel = service->service->getKernel(spec, device);
  if (!kernel)
    return fail(kernel.takeError());
  *out = new bqjit_kernel_s{std::move(*kernel)};
  return ok();
}

} // namespace

bqjit_status bqjit_kernel_get(bqjit_service service, const char* specJson, int device,
                              bqjit_kernel* out) {
  return guarded("bqjit_kernel_get", [&]() -> bqjit_status {
    if (!service || !out)
      return fail(bqjit::ErrorCode::InvalidArgument, !service ? "service is NULL" : "out is NULL");
    *out = nullptr;
    if (!specJson)
      return fail(bqjit::ErrorCode::InvalidArgument, "spec_json is NULL");
    const size_t length = std::strlen(specJson);
    const uint64_t hash = XXH3_64bits(specJson, length);
    if (auto known = service->parsed.find(specJson, length, hash))
      return getKernel(service, *known, device, out);
    auto spec = parseSpec(specJson);
    if (!spec)
      return fail(spec.takeError());
    service->parsed.insert(specJson, length, hash, *spec);
    return getKernel(service, *spec, device, out);
  });
}

bqjit_status bqjit_kernel_get_spec(bqjit_service service, bqjit_spec spec, int device,
                                   bqjit_kernel* out) {
  return guarded("bqjit_kernel_get_spec", [&]() -> bqjit_status {
    if (!service || !spec || !out)
      return fail(bqjit::ErrorCode::InvalidArgument, !service ? "service is NULL"
                                                     : !spec  ? "spec is NULL"
                                                              : "out is NULL");
    *out = nullptr;
    return getKernel(service, spec->spec, device, out);
  });
}

bqjit_status bqjit_service_reload_tuning(bqjit_service service) {
  return guarded("bqjit_service_reload_tuning", [&]() -> bqjit_status {
    if (!service)
      return fail(bqjit::ErrorCode::InvalidArgument, "service is NULL");
    service->service->reloadTuning();
    return ok();
  });
}

bqjit_status bqjit_service_invalidate(bqjit_service service) {
  return guarded("bqjit_service_invalidate", [&]() -> bqjit_status {
    if (!service)
      return fail(bqjit::ErrorCode::InvalidArgument, "service is NULL");
    service->service->invalidate();
    return ok();
  });
}

bqjit_status bqjit_service_finish_variants(bqjit_service service) {
  return guarded("bqjit_service_finish_variants", [&]() -> bqjit_status {
    if (!service)
      return fail(bqjit::ErrorCode::InvalidArgument, "service is NULL");
    service->service->finishVariants();
    return ok();
  });
}

bqjit_status bqjit_service_finish_tuning(bqjit_service service) {
  return guarded("bqjit_service_finish_tuning", [&]() -> bqjit_status {
    if (!service)
      return fail(bqjit::ErrorCode::InvalidArgument, "service is NULL");
    service->service->finishTuning();
    return ok();
  });
}

void bqjit_kernel_release(bqjit_kernel kernel) {
  delete kernel;
}

bqjit_status bqjit_kernel_launch(bqjit_kernel kernel, const bqjit_launch_args* args, void* stream) {
  return bqjit_kernel_launch_ex(kernel, args, nullptr, stream);
}

bqjit_status bqjit_kernel_launch_ex(bqjit_kernel kernel, const bqjit_launch_args* args,
                                    const bqjit_launch_extra* extra, void* stream) {
  return guarded("bqjit_kernel_launch_ex", [&]() -> bqjit_status {
    if (!kernel || !args)
      return fail(bqjit::ErrorCode::InvalidArgument, !kernel ? "kernel is NULL" : "args is NULL");
    // The caller's struct may be older (shorter) or newer (longer) than ours.
    bqjit_launch_extra e{};
    e.size = sizeof e;
    if (extra) {
      if (extra->size < sizeof(size_t))
        return fail(bqjit::ErrorCode::InvalidArgument,
                    "extra->size " + std::to_string(extra->size) +
                        ": must be sizeof(bqjit_launch_extra) (" + std::to_string(sizeof e) + ")");
      const auto* bytes = reinterpret_cast<const unsigned char*>(extra);
      for (size_t i = sizeof e; i < extra->size; ++i)
        if (bytes[i] != 0)
          return fail(bqjit::ErrorCode::InvalidArgument,
                      "extra->size " + std::to_string(extra->size) +
                          ": the fields past this library's bqjit_launch_extra (" +
                          std::to_string(sizeof e) + " bytes) are not known here; upgrade bqjit");
      std::memcpy(&e, extra, std::min(extra->size, sizeof e));
      e.size = sizeof e;
    }
    bqjit::LaunchArgs a;
    a.x = reinterpret_cast<const void*>(args->x);
    a.ldx = args->ldx;
    a.tokens = args->tokens;
    a.q = reinterpret_cast<void*>(args->q);
    a.scales = reinterpret_cast<void*>(args->scales);
    a.scaleUb = reinterpret_cast<const float*>(args->scale_ub);
    a.maskedM = reinterpret_cast<const int32_t*>(args->masked_m);
    a.numExperts = args->num_experts;
    a.globalScale = reinterpret_cast<const float*>(e.global_scale);
    if (e.flags & ~(BQJIT_LAUNCH_PDL | BQJIT_LAUNCH_NO_PDL))
      return fail(bqjit::ErrorCode::InvalidArgument,
                  "extra->flags " + std::to_string(e.flags) +
                      ": only BQJIT_LAUNCH_PDL (0x1) and BQJIT_LAUNCH_NO_PDL (0x2) are known to "
                      "this library");
    if ((e.flags & BQJIT_LAUNCH_PDL) && (e.flags & BQJIT_LAUNCH_NO_PDL))
      return fail(bqjit::ErrorCode::InvalidArgument,
                  "extra->flags " + std::to_string(e.flags) +
                      ": BQJIT_LAUNCH_PDL and BQJIT_LAUNCH_NO_PDL exclude each other");
    if (e.flags & (BQJIT_LAUNCH_PDL | BQJIT_LAUNCH_NO_PDL))
      a.programmaticDependentLaunch = (e.flags & BQJIT_LAUNCH_PDL) != 0;
    if (auto err = kernel->kernel.launch(a, static_cast<CUstream>(stream)))
      return fail(std::move(err));
    return ok();
  });
}

} // extern "C"
