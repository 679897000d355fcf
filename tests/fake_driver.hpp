// The fake driver's knobs (tests/fake_cuda.c) for tests that load it by path
// (BQJIT_FAKE_CUDA_LIBRARY, set by tests/CMakeLists.txt).
#pragma once

#include <dlfcn.h>

#include <cstdint>
#include <string>

#include <cuda.h>

#include "bqjit/service.hpp"

#ifndef BQJIT_FAKE_CUDA_LIBRARY
#error "BQJIT_FAKE_CUDA_LIBRARY must name the fake driver library (tests/fake_cuda.c)"
#endif

namespace bqjit::test {

/// A launch of `tokens` rows of width `hidden` at made-up device addresses,
/// which the fake driver accepts (its launches execute nothing).
inline LaunchArgs fakeAddressArgs(int64_t hidden, int64_t tokens) {
  LaunchArgs a;
  a.x = reinterpret_cast<const void*>(uintptr_t(1) << 32);
  a.ldx = 2 * hidden;
  a.tokens = tokens;
  a.q = reinterpret_cast<void*>(uintptr_t(2) << 32);
  a.scales = reinterpret_cast<void*>(uintptr_t(3) << 32);
  return a;
}

/// A service's configuration over the fake driver, its cache in `cacheDir`.
inline Config fakeDriverConfig(const std::string& cacheDir) {
  Config c;
  c.cacheDir = cacheDir;
  c.cudaDriver = BQJIT_FAKE_CUDA_LIBRARY;
  return c;
}

/// The fake driver's knobs, reached through a handle of its own: dlopen of
/// the same path returns the same library, so the state is shared with the
/// CudaDriver under test.
class FakeDriver {
public:
  FakeDriver() : handle_(dlopen(BQJIT_FAKE_CUDA_LIBRARY, RTLD_NOW | RTLD_LOCAL)) {}
  FakeDriver(const FakeDriver&) = delete;
  FakeDriver& operator=(const FakeDriver&) = delete;
  ~FakeDriver() {
    if (handle_)
      dlclose(handle_);
  }

  bool ok() const { return handle_ != nullptr; }
  void reset() const { symbol<void (*)()>("fakeCudaReset")(); }
  void setMissingSymbol(const char* name) const {
    symbol<void (*)(const char*)>("fakeCudaSetMissingSymbol")(name);
  }
  void setInitResult(CUresult r) const { symbol<void (*)(int)>("fakeCudaSetInitResult")(r); }
  void setDriverVersion(int v) const { symbol<void (*)(int)>("fakeCudaSetDriverVersion")(v); }
  /// The device reports an H200's memory clock, bus and L2 (an H100 SXM's by default).
  void setH200Memory(bool on) const { symbol<void (*)(int)>("fakeCudaSetH200Memory")(on ? 1 : 0); }
  int requestedVersion(const char* name) const {
    return symbol<int (*)(const char*)>("fakeCudaRequestedVersion")(name);
  }
  int maxRequestedVersion() const { return symbol<int (*)()>("fakeCudaMaxRequestedVersion")(); }
  /// Event pairs around a launch of this block size time kFastMs, others kSlowMs.
  void setFastBlock(unsigned threads) const {
    symbol<void (*)(unsigned)>("fakeCudaSetFastBlock")(threads);
  }
  /// Every stream reports an active capture (or none).
  void setCapturing(bool on) const { symbol<void (*)(int)>("fakeCudaSetCapturing")(on ? 1 : 0); }

private:
  template <typename Fn> Fn symbol(const char* name) const {
    return reinterpret_cast<Fn>(dlsym(handle_, name));
  }
  void* handle_;
};

} // namespace bqjit::test
