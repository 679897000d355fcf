// parsePtxasReport on logs captured from NVRTC 13.0 (-Xptxas=-v, sm_90).
#include "jit/resource_report.hpp"

#include "jit/compiler.hpp"
#include "jit/cubin_info.hpp"
#include "planner/launch_heuristic.hpp"

#include <string>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

// Two kernels in one program, verbatim from nvrtcGetProgramLog.
const char* const kTwoKernels =
    "ptxas info    : 0 bytes gmem\n"
    "ptxas info    : Compiling entry function 'big_kernel' for 'sm_90'\n"
    "ptxas info    : Function properties for big_kernel\n"
    "ptxas         .     256 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 168 registers, used 1 barriers, 256 bytes cumulative stack size, "
    "1024 bytes smem\n"
    "ptxas info    : Compile time = 37.668 ms\n"
    "ptxas info    : Compiling entry function 'small_kernel' for 'sm_90'\n"
    "ptxas info    : Function properties for small_kernel\n"
    "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 8 registers, used 0 barriers\n"
    "ptxas info    : Compile time = 1.406 ms\n";

// The same program with --maxrregcount=16: big_kernel spills.
const char* const kSpills =
    "ptxas warning : For profile sm_90 adjusting per thread register count of 16 to lower "
    "bound of 24\n"
    "ptxas info    : Overriding maximum register limit 256 for 'big_kernel' with  24 of "
    "maxrregcount option\n"
    "ptxas info    : Overriding maximum register limit 256 for 'small_kernel' with  24 of "
    "maxrregcount option\n"
    "ptxas info    : 0 bytes gmem\n"
    "ptxas info    : Compiling entry function 'big_kernel' for 'sm_90'\n"
    "ptxas info    : Function properties for big_kernel\n"
    "ptxas         .     1344 bytes stack frame, 1192 bytes spill stores, 1216 bytes spill loads\n"
    "ptxas info    : Used 24 registers, used 1 barriers, 1344 bytes cumulative stack size, "
    "1024 bytes smem\n"
    "ptxas info    : Compile time = 43.507 ms\n"
    "ptxas info    : Compiling entry function 'small_kernel' for 'sm_90'\n"
    "ptxas info    : Function properties for small_kernel\n"
    "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 8 registers, used 0 barriers\n"
    "ptxas info    : Compile time = 1.288 ms\n";

// bqjit's own kernel for sm_80 (mangled name, cmem, no barrier count).
const char* const kMangled =
    "ptxas info    : 32 bytes gmem, 64 bytes cmem[4]\n"
    "ptxas info    : Compiling entry function "
    "'_ZN12bqjit_kernel14silu_mul_"
    "quantILi8192ELi1024ELi2ELi2ELi0ELb0ELb0ELb0ELi32ELi4ELi8EEEvPKvxxPhPvPKfPKi'"
    " for 'sm_80'\n"
    "ptxas info    : Function properties for "
    "_ZN12bqjit_kernel14silu_mul_"
    "quantILi8192ELi1024ELi2ELi2ELi0ELb0ELb0ELb0ELi32ELi4ELi8EEEvPKvxxPhPvPKfPKi\n"
    "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 80 registers, 408 bytes cmem[0]\n"
    "ptxas info    : Compile time = 66.064 ms\n";

ResourceReport parseOk(const std::string& log, const std::string& name) {
  auto r = parsePtxasReport(log, name);
  if (!r) {
    ADD_FAILURE() << name << ": " << consumeToString(r.takeError());
    return {};
  }
  return *r;
}

TEST(ResourceReport, PicksTheNamedKernelOfTwo) {
  const ResourceReport big = parseOk(kTwoKernels, "big_kernel");
  EXPECT_EQ(big.registers, 168);
  EXPECT_EQ(big.barriers, 1);
  EXPECT_EQ(big.stackFrameBytes, 256);
  EXPECT_EQ(big.sharedBytes, 1024);
  EXPECT_EQ(big.spillStoreBytes, 0);
  EXPECT_EQ(big.spillLoadBytes, 0);

  const ResourceReport small = parseOk(kTwoKernels, "small_kernel");
  EXPECT_EQ(small.registers, 8);
  EXPECT_EQ(small.barriers, 0);
  EXPECT_EQ(small.stackFrameBytes, 0);
  EXPECT_EQ(small.sharedBytes, 0); // big_kernel's smem must not leak into it
  EXPECT_EQ(small.spillStoreBytes, 0);
  EXPECT_EQ(small.spillLoadBytes, 0);
}

TEST(ResourceReport, LastKernelSectionRunsToTheEnd) {
  // small_kernel is last: its section has no following marker.
  std::string log = kTwoKernels;
  log += "ptxas info    : trailing line\n";
  EXPECT_EQ(parseOk(log, "small_kernel").registers, 8);
}

TEST(ResourceReport, SpillsReported) {
  const ResourceReport big = parseOk(kSpills, "big_kernel");
  EXPECT_EQ(big.registers, 24);
  EXPECT_EQ(big.stackFrameBytes, 1344);
  EXPECT_EQ(big.spillStoreBytes, 1192);
  EXPECT_EQ(big.spillLoadBytes, 1216);
  EXPECT_EQ(big.sharedBytes, 1024);
  EXPECT_EQ(big.barriers, 1);
  const ResourceReport small = parseOk(kSpills, "small_kernel");
  EXPECT_EQ(small.registers, 8);
  EXPECT_EQ(small.spillStoreBytes, 0);
  EXPECT_EQ(small.spillLoadBytes, 0);
}

TEST(ResourceReport, MangledNameWithoutBarrierCount) {
  const ResourceReport r = parseOk(
      kMangled, "_ZN12bqjit_kernel14silu_mul_"
                "quantILi8192ELi1024ELi2ELi2ELi0ELb0ELb0ELb0ELi32ELi4ELi8EEEvPKvxxPhPvPKfPKi");
  EXPECT_EQ(r.registers, 80);
  EXPECT_EQ(r.barriers, 0);
  EXPECT_EQ(r.sharedBytes, 0);
  EXPECT_EQ(r.stackFrameBytes, 0);
}

TEST(ResourceReport, MissingKernelIsAnErrorNamingIt) {
  auto r = parsePtxasReport(kTwoKernels, "medium_kernel");
  ASSERT_FALSE(bool(r));
  std::string message;
  consumeError(r.takeError(), &message);
  EXPECT_TRUE(contains(message, "'medium_kernel'"));
  EXPECT_TRUE(contains(message, "no entry"));
}

TEST(ResourceReport, PrefixOfAnotherNameIsNotAMatch) {
  // "big" is a prefix of "big_kernel": the quote after the name must matter.
  auto r = parsePtxasReport(kTwoKernels, "big");
  ASSERT_FALSE(bool(r));
  llvm::consumeError(r.takeError());
  auto r2 = parsePtxasReport(kTwoKernels, "kernel");
  ASSERT_FALSE(bool(r2));
  llvm::consumeError(r2.takeError());
}

TEST(ResourceReport, EmptyLogIsAnError) {
  auto r = parsePtxasReport("", "big_kernel");
  ASSERT_FALSE(bool(r));
  EXPECT_TRUE(contains(consumeToString(r.takeError()), "big_kernel"));
}

TEST(ResourceReport, SectionWithoutRegisterCountIsAnError) {
  const std::string log = "ptxas info    : Compiling entry function 'k' for 'sm_90'\n"
                          "ptxas info    : Function properties for k\n"
                          "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 "
                          "bytes spill loads\n";
  auto r = parsePtxasReport(log, "k");
  ASSERT_FALSE(bool(r));
  const std::string message = consumeToString(r.takeError());
  EXPECT_TRUE(contains(message, "no register count"));
  EXPECT_TRUE(contains(message, "'k'"));
}

TEST(ResourceReport, JsonRoundTrip) {
  const ResourceReport big = parseOk(kSpills, "big_kernel");
  const ResourceReport back = ResourceReport::fromJson(big.toJson());
  EXPECT_TRUE(back == big);
  EXPECT_EQ(big.toJson()["spill_store_bytes"], 1192);
  ResourceReport other = big;
  other.barriers = 2;
  EXPECT_FALSE(other == big);
}

// Registers and stack frame read from the cubin agree with ptxas's report,
// and a damaged cubin is an error, not a crash.
TEST(CubinInfo, MatchesPtxasAndRejectsDamage) {
  auto compiler = Compiler::create();
  ASSERT_TRUE(bool(compiler)) << consumeToString(compiler.takeError());
  KernelSpec spec;
  spec.hidden = 4096;
  spec.groupSize = 128;
  spec.shape = chooseLaunchShape(spec);
  auto id = compiler->identify(spec);
  ASSERT_TRUE(bool(id)) << consumeToString(id.takeError());
  auto k = compiler->compile(*id);
  ASSERT_TRUE(bool(k)) << consumeToString(k.takeError());
  auto info = readCubinKernelInfo(k->cubin, k->loweredName);
  ASSERT_TRUE(bool(info)) << consumeToString(info.takeError());
  auto report = parsePtxasReport(k->log, k->loweredName);
  ASSERT_TRUE(bool(report)) << consumeToString(report.takeError());
  EXPECT_EQ(info->registers, report->registers);
  EXPECT_EQ(info->frameBytes, report->stackFrameBytes);

  auto missing = readCubinKernelInfo(k->cubin, "_Z8notthere");
  ASSERT_FALSE(bool(missing));
  EXPECT_NE(consumeToString(missing.takeError()).find("no symbol '_Z8notthere'"),
            std::string::npos);
  std::vector<char> truncated(k->cubin.begin(), k->cubin.begin() + 100);
  auto bad = readCubinKernelInfo(truncated, k->loweredName);
  ASSERT_FALSE(bool(bad));
  EXPECT_NE(consumeToString(bad.takeError()).find("malformed cubin"), std::string::npos);
  auto notElf = readCubinKernelInfo(std::vector<char>(200, 'x'), k->loweredName);
  ASSERT_FALSE(bool(notElf));
  EXPECT_NE(consumeToString(notElf.takeError()).find("not a 64-bit ELF"), std::string::npos);
}

} // namespace
} // namespace bqjit
