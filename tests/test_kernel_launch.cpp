// Kernel::launch's argument checks that need no GPU, on a service over the
// fake driver (tests/fake_cuda.c: launches execute nothing): values a caller
// may pass by mistake (an uninitialized count, a pitch in bytes instead of
// elements) are errors naming the field, the value and the rule, never an
// overflow in the grid arithmetic. The checks that need device pointers and
// streams are test_gpu_runtime's (GpuRuntime.LaunchArgumentErrors).
#include <stdlib.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "bqjit/service.hpp"
#include "cache/kernel_cache.hpp"
#include "core/fs_util.hpp"
#include "planner/planner.hpp"
#include "planner/regime.hpp"
#include "tests/fake_driver.hpp"

namespace bqjit {
namespace {

/// A service over the fake driver with a cache directory of its own.
class FakeDriverLaunch : public testing::Test {
protected:
  void SetUp() override {
    ASSERT_TRUE(fake_.ok()) << "could not open " << BQJIT_FAKE_CUDA_LIBRARY;
    char tmpl[] = "/tmp/bqjit_launch_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto created = Service::create(test::fakeDriverConfig(dir_));
    ASSERT_TRUE(bool(created)) << consumeToString(created.takeError());
    service_ = std::move(*created);
  }
  void TearDown() override {
    service_.reset();
    if (fake_.ok())
      fake_.reset();
    if (!dir_.empty())
      llvm::consumeError(fs::removeTree(dir_));
  }

  test::FakeDriver fake_;
  std::string dir_;
  std::unique_ptr<Service> service_;
};

TEST_F(FakeDriverLaunch, CountsAndPitchesOutOfRangeAreErrorsNotOverflows) {
  fake_.setCapturing(false);
  Service* service = service_.get();
  KernelSpec spec;
  spec.hidden = 7168;
  spec.groupSize = 128;
  spec.arch = "sm_90";
  auto kernel = service->getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  service->finishVariants(); // every regime on its own variant

  const LaunchArgs good = test::fakeAddressArgs(spec.hidden, 4096);
  llvm::Error ok = kernel->launch(good, nullptr);
  ASSERT_FALSE(bool(ok)) << consumeToString(std::move(ok));

  auto expectError = [&](const LaunchArgs& a, const std::string& field, const std::string& value,
                         const std::string& rule) {
    std::string message;
    EXPECT_EQ(consumeError(kernel->launch(a, nullptr), &message), ErrorCode::InvalidArgument)
        << message;
    EXPECT_NE(message.find("launch argument '" + field + "' = " + value + ": " + rule),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("H=7168"), std::string::npos) << message; // the kernel named
  };
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  LaunchArgs a = good;
  for (int64_t tokens : {int64_t(-1), std::numeric_limits<int64_t>::min(), kMax,
                         (int64_t(1) << 40) + 1, int64_t(1) << 62}) {
    a.tokens = tokens;
    expectError(a, "tokens", std::to_string(tokens), "must be in 0..1099511627776 (2^40)");
  }
  // The largest count passes the bound and stops at the grid's limit.
  a.tokens = int64_t(1) << 40;
  expectError(a, "tokens", std::to_string(a.tokens), "needs more than 2^31-1 blocks");
  a = good;
  for (int64_t ldx : {kMax, (int64_t(1) << 40) + 2}) {
    a.ldx = ldx;
    expectError(a, "ldx", std::to_string(ldx), "must be at most 1099511627776 (2^40)");
  }
  a.ldx = 2 * spec.hidden - 1;
  expectError(a, "ldx", std::to_string(a.ldx), "must be >= 2H");

  // The queries take any count: out of range, the nearest in range (no
  // overflow in T x H, which UBSan checks in the asan stage).
  EXPECT_EQ(kernel->specFor(kMax).canonical(), kernel->specFor(int64_t(1) << 40).canonical());
  EXPECT_EQ(kernel->specFor(std::numeric_limits<int64_t>::min()).canonical(),
            kernel->specFor(0).canonical());
  EXPECT_NE(kernel->specFor(1).canonical(), kernel->specFor(int64_t(1) << 40).canonical());
}

// FP4 with swizzled scales on a device with an H200's memory: launches below
// the many-token regime take its shape from the T the planner names
// (LaunchPlan::manyTokensFrom), and the few-token shape below it.
TEST_F(FakeDriverLaunch, Fp4SwizzledLaunchesTakeTheManyTokenShapeFromThePlannersT) {
  fake_.setH200Memory(true); // read with the device's profile, at the first getKernel
  Service* service = service_.get();
  auto profile = service->deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  for (int hidden : {7168, 25600}) {
    KernelSpec spec;
    spec.hidden = hidden;
    spec.groupSize = 16;
    spec.outDtype = OutDtype::FP4E2M1;
    spec.scaleLayout = ScaleLayout::Swizzled128x4;
    spec.arch = "sm_90";
    auto plan = service->planner().plan(spec, *profile);
    ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
    ASSERT_LT(plan->manyTokensFrom, INT64_MAX) << "H=" << hidden << ": no rule on this device";
    const LaunchShape many = *plan->variantFor(Regime::ManyTokens).shape;
    auto kernel = service->getKernel(spec, 0);
    ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
    service->finishVariants();
    const int64_t from = plan->manyTokensFrom;
    EXPECT_EQ(*kernel->specFor(from).shape, many) << "H=" << hidden << " T=" << from;
    EXPECT_EQ(*kernel->specFor(from + 100).shape, many) << "H=" << hidden;
    if (from > 1) {
      const int64_t below = from - 1;
      EXPECT_EQ(*kernel->specFor(below).shape, *plan->variantFor(regimeFor(below * hidden)).shape)
          << "H=" << hidden << " T=" << below;
      EXPECT_NE(*kernel->specFor(below).shape, many) << "H=" << hidden;
    }
  }
}

// 8-bit outputs on a device with an H200's memory: few-token launches from
// the T the planner names (LaunchPlan::fullSmFrom) take the few-token shape
// promised a full SM, launched in that shape's grid; those below it, and the
// other regimes, their own shapes.
TEST_F(FakeDriverLaunch, EightBitFewTokenLaunchesTakeTheFullSmShapeFromThePlannersT) {
  fake_.setH200Memory(true);
  fake_.setCapturing(false);
  Service* service = service_.get();
  auto profile = service->deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  for (int hidden : {3072, 7168}) {
    KernelSpec spec;
    spec.hidden = hidden;
    spec.groupSize = 128;
    spec.activation = Activation::Swiglu;
    spec.arch = "sm_90";
    auto plan = service->planner().plan(spec, *profile);
    ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
    ASSERT_LT(plan->fullSmFrom, INT64_MAX) << "H=" << hidden << ": no rule on this device";
    const int64_t from = plan->fullSmFrom;
    const LaunchShape few = *plan->variantFor(Regime::FewTokens).shape;
    const LaunchShape promised = *plan->variants[plan->fullSmVariant].shape;
    const LaunchShape many = *plan->variantFor(Regime::ManyTokens).shape;
    ASSERT_NE(promised, few);
    auto kernel = service->getKernel(spec, 0);
    ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
    service->finishVariants();
    EXPECT_EQ(*kernel->specFor(from).shape, promised) << "H=" << hidden << " T=" << from;
    EXPECT_EQ(*kernel->specFor(from - 1).shape, few) << "H=" << hidden << " T=" << from - 1;
    const int64_t lastFew = regimeMaxElements(Regime::FewTokens) / hidden;
    EXPECT_EQ(*kernel->specFor(lastFew).shape, promised) << "H=" << hidden;
    EXPECT_EQ(*kernel->specFor(lastFew + 1).shape, many) << "H=" << hidden;
    EXPECT_EQ(*kernel->specFor(1).shape, *plan->variantFor(Regime::VeryFewTokens).shape);
    for (int64_t tokens : {from - 1, from, lastFew, lastFew + 1}) {
      EXPECT_EQ(kernel->specFor(tokens), plan->variantForTokens(tokens)) << tokens;
      // The grid of the shape the launch takes: one block of 256 threads for
      // every 16 groups of 128.
      unsigned grid[3], block[3];
      const LaunchArgs a = test::fakeAddressArgs(hidden, tokens);
      kernel->launchDims(a, grid, block);
      const KernelSpec& s = kernel->specFor(tokens);
      EXPECT_EQ(block[0], unsigned(s.shape->threadsPerBlock())) << tokens;
      EXPECT_EQ(grid[0], unsigned((tokens * (hidden / 128) + s.shape->groupsPerBlock - 1) /
                                  s.shape->groupsPerBlock))
          << tokens;
      llvm::Error launched = kernel->launch(a, nullptr);
      EXPECT_FALSE(bool(launched)) << consumeToString(std::move(launched));
    }
  }
}

// Where ptxas cannot keep the full-SM promise without spilling (G = 128 where
// H / G is a power of two: H = 4096 spills 4 bytes under it), the launches
// from the planner's T keep the few-token shape: whether the promised kernel
// compiles in the background or comes from the cache.
TEST_F(FakeDriverLaunch, FullSmVariantThatSpillsLeavesItsLaunchesTheFewTokenShape) {
  fake_.setH200Memory(true);
  fake_.setCapturing(false);
  KernelSpec spec;
  spec.hidden = 4096;
  spec.groupSize = 128;
  spec.arch = "sm_90";
  std::vector<std::string> lines;
  std::mutex linesMutex;
  auto service = [&]() -> std::unique_ptr<Service> {
    Config c = test::fakeDriverConfig(dir_);
    c.logLevel = LogLevel::Info;
    c.logSink = [&](LogLevel, const std::string& text) {
      std::lock_guard<std::mutex> lock(linesMutex);
      lines.push_back(text);
    };
    auto created = Service::create(c);
    EXPECT_TRUE(bool(created)) << consumeToString(created.takeError());
    return created ? std::move(*created) : nullptr;
  };
  auto spilled = [&] {
    std::lock_guard<std::mutex> lock(linesMutex);
    return std::count_if(lines.begin(), lines.end(), [](const std::string& l) {
      return l.find("spills under its full-SM promise") != std::string::npos;
    });
  };
  auto first = service();
  ASSERT_TRUE(first);
  auto profile = first->deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  auto plan = first->planner().plan(spec, *profile);
  ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
  ASSERT_GE(plan->fullSmVariant, 0);
  const LaunchShape few = *plan->variantFor(Regime::FewTokens).shape;
  const int64_t from = plan->fullSmFrom;
  auto expectFewShape = [&](Service& s, const char* path) {
    auto kernel = s.getKernel(spec, 0);
    ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
    s.finishVariants();
    EXPECT_EQ(*kernel->specFor(from).shape, few) << path;
    EXPECT_EQ(*kernel->specFor(from - 1).shape, few) << path;
    const LaunchArgs a = test::fakeAddressArgs(spec.hidden, from);
    llvm::Error launched = kernel->launch(a, nullptr);
    EXPECT_FALSE(bool(launched)) << consumeToString(std::move(launched));
  };
  // An empty cache: the promised variant compiles in the background and is
  // set aside, with a line that says so.
  expectFewShape(*first, "compiled in the background");
  EXPECT_EQ(spilled(), 1);
  auto promised = first->compile(plan->variants[plan->fullSmVariant]);
  ASSERT_TRUE(bool(promised)) << consumeToString(promised.takeError());
  EXPECT_GT((*promised)->resources.spillStoreBytes, 0)
      << "the test needs a promised variant that spills; this one takes "
      << (*promised)->resources.registers << " registers without";
  // A fresh service over that cache: every variant at hand at once; the
  // promised one is not even loaded.
  auto second = service();
  ASSERT_TRUE(second);
  expectFewShape(*second, "from the cache");
  // A spec whose promised variant keeps its promise takes it (H = 3072).
  spec.hidden = 3072;
  auto kept = second->planner().plan(spec, *profile);
  ASSERT_TRUE(bool(kept)) << consumeToString(kept.takeError());
  auto kernel = second->getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  second->finishVariants();
  EXPECT_EQ(kernel->specFor(kept->fullSmFrom).shape->minBlocksPerSm, 8);
  EXPECT_EQ(spilled(), 1);
}

// Without compiling (BQJIT_NO_COMPILE), a cache that holds every variant but
// the full-SM one (prewarmed before the split existed) still serves the spec:
// those launches keep the few-token shape. Any other variant missing is an
// error, as before.
TEST_F(FakeDriverLaunch, NoCompileServesACacheWithoutTheFullSmVariant) {
  fake_.setH200Memory(true);
  fake_.setCapturing(false);
  KernelSpec spec;
  spec.hidden = 3072;
  spec.groupSize = 128;
  spec.arch = "sm_90";
  auto profile = service_->deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  auto plan = service_->planner().plan(spec, *profile);
  ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
  ASSERT_GE(plan->fullSmVariant, 0);
  for (int i = 0; i < static_cast<int>(plan->variants.size()); ++i)
    if (i != plan->fullSmVariant) {
      auto k = service_->compile(plan->variants[i]);
      ASSERT_TRUE(bool(k)) << consumeToString(k.takeError());
    }
  Config c = test::fakeDriverConfig(dir_);
  c.noCompile = true;
  auto created = Service::create(c);
  ASSERT_TRUE(bool(created)) << consumeToString(created.takeError());
  Service& noCompile = **created;
  auto kernel = noCompile.getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  const LaunchShape few = *plan->variantFor(Regime::FewTokens).shape;
  EXPECT_EQ(*kernel->specFor(plan->fullSmFrom).shape, few);
  EXPECT_EQ(*kernel->specFor(plan->fullSmFrom - 1).shape, few);
  EXPECT_EQ(*kernel->specFor(8192).shape, *plan->variantFor(Regime::ManyTokens).shape);
  EXPECT_EQ(noCompile.cache().counters().compiles, 0);
  // Another spec whose few-token variant is missing: not served.
  KernelSpec other = spec;
  other.hidden = 7168;
  std::string message;
  EXPECT_EQ(consumeError(noCompile.getKernel(other, 0).takeError(), &message),
            ErrorCode::NotInCache)
      << message;
}

} // namespace
} // namespace bqjit
