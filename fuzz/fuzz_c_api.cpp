// Fuzzes the C API entry points that take JSON (include/bqjit/bqjit.h), the
// way a host process written in another language reaches bqjit:
// bqjit_compile, bqjit_spec_for_device, bqjit_default_launch and
// bqjit_kernel_get, each on the bytes as spec_json (a NUL in the bytes ends
// the text, as it would for a C caller).
//
// The service has no disk cache and BQJIT_NO_COMPILE=1, so that a spec that
// is accepted ends in "not in cache" instead of an NVRTC compile (seconds
// each); without a driver, bqjit_spec_for_device and bqjit_kernel_get end in
// "no driver".
//
// Beyond "no crash, no exception, no sanitizer report" (bqjit must never
// take its host down): every status is one of bqjit_status; a failure leaves
// a message that names its code and is cut to a sane length; a success
// clears it and writes NUL-terminated JSON of the size `needed` says.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <nlohmann/json.hpp>

#include "bqjit/bqjit.h"
#include "fuzz/common.hpp"

namespace {

bqjit_service service = nullptr;

// Messages quote at most a few hundred bytes of the input; the rest is
// bqjit's own words, a canonical spec and a key.
constexpr size_t kMaxMessage = 2048;

void checkStatus(const char* entry, bqjit_status status) {
  const std::string what = std::string(entry) + " -> " + std::to_string(status);
  BQJIT_FUZZ_CHECK(status >= BQJIT_OK && status <= BQJIT_ERROR_INTERNAL, what);
  const std::string message = bqjit_last_error();
  if (status == BQJIT_OK) {
    BQJIT_FUZZ_CHECK(message.empty(), what + ": success left a message: " + message);
    return;
  }
  BQJIT_FUZZ_CHECK(!message.empty(), what + ": a failure without a message");
  BQJIT_FUZZ_CHECK(message.size() <= kMaxMessage,
                   what + ": a message of " + std::to_string(message.size()) + " bytes");
  BQJIT_FUZZ_CHECK(status != BQJIT_ERROR_INTERNAL, what + ": " + message);
}

// A successful call wrote NUL-terminated JSON of `needed` bytes into `buf`.
void checkWritten(const char* entry, bqjit_status status, const char* buf, size_t needed) {
  if (status != BQJIT_OK)
    return;
  BQJIT_FUZZ_CHECK(std::strlen(buf) + 1 == needed, entry);
  auto j = nlohmann::json::parse(buf, nullptr, /*allow_exceptions=*/false);
  BQJIT_FUZZ_CHECK(j.is_object(), std::string(entry) + " wrote " + buf);
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  ::setenv("BQJIT_NO_COMPILE", "1", 1);
  ::setenv("BQJIT_LOG_LEVEL", "quiet", 1);
  // "": no disk cache. Kept for the whole run.
  const bqjit_status status = bqjit_service_create("", &service);
  BQJIT_FUZZ_CHECK(status == BQJIT_OK, bqjit_last_error());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size); // c_str() stops at a NUL
  const char* json = text.c_str();
  char buf[4096];
  size_t needed = 0;

  bqjit_status s = bqjit_compile(service, json, buf, sizeof buf, &needed);
  checkStatus("bqjit_compile", s);
  checkWritten("bqjit_compile", s, buf, needed);

  s = bqjit_spec_for_device(service, json, 0, buf, sizeof buf, &needed);
  checkStatus("bqjit_spec_for_device", s);
  checkWritten("bqjit_spec_for_device", s, buf, needed);

  for (int maxVecWidth : {1, 16}) {
    s = bqjit_default_launch(json, maxVecWidth, buf, sizeof buf, &needed);
    checkStatus("bqjit_default_launch", s);
    checkWritten("bqjit_default_launch", s, buf, needed);
  }
  if (s == BQJIT_OK) {
    // The size query (no buffer) agrees with the call that wrote.
    size_t asked = 0;
    const bqjit_status query = bqjit_default_launch(json, 16, nullptr, 0, &asked);
    BQJIT_FUZZ_CHECK(query == BQJIT_ERROR_INVALID_ARGUMENT && asked == needed,
                     "size query disagrees with the written size");
  }

  bqjit_kernel kernel = nullptr;
  s = bqjit_kernel_get(service, json, -1, &kernel);
  checkStatus("bqjit_kernel_get", s);
  BQJIT_FUZZ_CHECK((s == BQJIT_OK) == (kernel != nullptr), "kernel handle and status disagree");
  bqjit_kernel_release(kernel);
  return 0;
}
