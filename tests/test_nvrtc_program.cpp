// NvrtcProgram: one NVRTC program from source to PTX, cubin and lowered
// names; failures carry the options and the log.
#include <string>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "jit/nvrtc_program.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

TEST(NvrtcProgram, CompileErrorCarriesOptionsAndLog) {
  auto p = NvrtcProgram::create("__global__ void k(int* p) { *p = undefined_symbol_xyz; }\n",
                                "broken.cu", {}, {});
  ASSERT_TRUE(bool(p)) << consumeToString(p.takeError());
  llvm::Error err = p->compile({"--gpu-architecture=sm_90", "--std=c++17"});
  ASSERT_TRUE(bool(err));
  std::string message;
  EXPECT_EQ(consumeError(std::move(err), &message), ErrorCode::CompileFailed);
  EXPECT_TRUE(contains(message, "NVRTC_ERROR_COMPILATION"));
  EXPECT_TRUE(contains(message, "options: --gpu-architecture=sm_90 --std=c++17"));
  EXPECT_TRUE(contains(message, "broken.cu"));
  EXPECT_TRUE(contains(message, "undefined_symbol_xyz"));
  EXPECT_TRUE(contains(message, "error"));
  EXPECT_TRUE(contains(p->log(), "undefined_symbol_xyz"));
}

TEST(NvrtcProgram, HeadersNameExpressionsAndCubin) {
  auto p = NvrtcProgram::create(
      "#include \"my/header.cuh\"\n", "main.cu",
      {{"my/header.cuh",
        "namespace ns { template <int N> __global__ void k(int* p) { *p = N; } }\n"}},
      {"ns::k<42>"});
  ASSERT_TRUE(bool(p)) << consumeToString(p.takeError());
  ASSERT_FALSE(bool(p->compile({"--gpu-architecture=sm_90"})));
  auto name = p->loweredName("ns::k<42>");
  ASSERT_TRUE(bool(name)) << consumeToString(name.takeError());
  EXPECT_EQ(*name, "_ZN2ns1kILi42EEEvPi");
  auto ptx = p->ptx();
  ASSERT_TRUE(bool(ptx));
  EXPECT_TRUE(contains(*ptx, ".entry " + *name));
  EXPECT_NE(ptx->back(), '\0');
  auto cubin = p->cubin();
  ASSERT_TRUE(bool(cubin));
  ASSERT_GE(cubin->size(), 4u);
  EXPECT_EQ(std::string(cubin->data(), 4), "\x7f"
                                           "ELF");
  auto missing = p->loweredName("ns::k<43>");
  ASSERT_FALSE(bool(missing));
  EXPECT_TRUE(contains(consumeToString(missing.takeError()), "ns::k<43>"));
}

TEST(NvrtcProgram, VirtualArchHasNoCubin) {
  auto p = NvrtcProgram::create("__global__ void k() {}\n", "virt.cu", {}, {});
  ASSERT_TRUE(bool(p));
  ASSERT_FALSE(bool(p->compile({"--gpu-architecture=compute_90"})));
  auto cubin = p->cubin();
  ASSERT_FALSE(bool(cubin));
  EXPECT_TRUE(contains(consumeToString(cubin.takeError()), "no cubin"));
}

TEST(NvrtcProgram, MovedFromProgramIsInert) {
  auto p = NvrtcProgram::create("__global__ void k() {}\n", "m.cu", {}, {});
  ASSERT_TRUE(bool(p));
  NvrtcProgram moved = std::move(*p);
  ASSERT_FALSE(bool(moved.compile({"--gpu-architecture=sm_80"})));
  auto cubin = moved.cubin();
  ASSERT_TRUE(bool(cubin));
  EXPECT_FALSE(cubin->empty());
}

} // namespace
} // namespace bqjit
