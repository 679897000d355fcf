// The autotuner without a GPU: its rules (the rows a tuning takes, the
// buffer sets it rotates, the shapes it times, the winner), and the whole
// course of a tuning in a service on the fake driver (tests/fake_cuda.c),
// where nothing executes but every step runs: candidates compiled by NVRTC,
// loaded, checked, timed by events whose times the test decides, the winner
// in the slot and in the records, nothing asked by a captured launch. The
// tuning on a GPU runs in test_gpu_runtime.
#include "runtime/autotuner.hpp"

#include <stdlib.h>

#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "bqjit/error.hpp"
#include "bqjit/service.hpp"
#include "core/fs_util.hpp"
#include "planner/launch_heuristic.hpp"
#include "planner/planner.hpp"
#include "tests/fake_driver.hpp"
#include "tests/test_util.hpp"

namespace bqjit {
namespace {

KernelSpec spec(int hidden, int group = 128, InDtype in = InDtype::BF16) {
  KernelSpec s;
  s.hidden = hidden;
  s.groupSize = group;
  s.inDtype = in;
  s.arch = "sm_90";
  return s;
}

TEST(Autotuner, BuffersHoldInputOutputAndTheLargestScaleLayout) {
  const KernelSpec s = spec(7168);
  const TuneBuffers b = tuneBuffers(s, 100);
  EXPECT_EQ(b.xBytes, 100 * 2 * 7168 * 2);
  EXPECT_EQ(b.qBytes, 100 * 7168);
  // 56 groups: swizzled_128x4 pads 100 rows to 128 and 56 columns to 56, of
  // 4-byte words, more than every other layout's (col_tma: 100 x 56 x 4).
  EXPECT_EQ(b.scaleBytes, 128 * 56 * 4);
  KernelSpec fp4 = s;
  fp4.outDtype = OutDtype::FP4E2M1;
  fp4.groupSize = 16;
  EXPECT_EQ(tuneBuffers(fp4, 100).qBytes, 100 * 7168 / 2);
  EXPECT_EQ(tuneBuffers(fp4, 100).scaleBytes, 128 * 448 * 4);
}

TEST(Autotuner, TuningKeepsTheLaunchsRowsWhereTheyFit) {
  const KernelSpec s = spec(7168);
  for (int64_t t : {1, 7, 146, 585, 4000}) {
    const Regime r = regimeFor(t * 7168);
    auto tokens = tuneTokens(s, r, t);
    ASSERT_TRUE(tokens.has_value()) << t;
    EXPECT_EQ(*tokens, t);
  }
}

TEST(Autotuner, TuningShrinksToTheBudgetButStaysInTheRegime) {
  for (InDtype in : {InDtype::BF16, InDtype::FP32}) {
    const KernelSpec s = spec(7168, 128, in);
    const int64_t asked = 16384;
    ASSERT_EQ(regimeFor(asked * 7168), Regime::VeryManyTokens);
    ASSERT_GT(tuneBuffers(s, asked).setBytes(), kTuneBudgetBytes);
    auto tokens = tuneTokens(s, Regime::VeryManyTokens, asked);
    ASSERT_TRUE(tokens.has_value());
    EXPECT_LT(*tokens, asked);
    EXPECT_EQ(regimeFor(*tokens * 7168), Regime::VeryManyTokens) << *tokens;
    EXPECT_LE(tuneBuffers(s, *tokens).setBytes(), kTuneBudgetBytes);
    // As many rows as fit.
    EXPECT_GT(tuneBuffers(s, *tokens + 1).setBytes(), kTuneBudgetBytes) << *tokens;
  }
}

TEST(Autotuner, NoTuningWhereTheRegimesSmallestProblemDoesNotFit) {
  const KernelSpec s = spec(7168);
  // The very-many-token regime starts past 2^25 elements: 128 MiB of bf16 input.
  EXPECT_FALSE(tuneTokens(s, Regime::VeryManyTokens, 8192, int64_t(64) << 20).has_value());
  auto few = tuneTokens(s, Regime::FewTokens, 400, int64_t(64) << 20);
  ASSERT_TRUE(few.has_value());
  EXPECT_EQ(*few, 400);
}

TEST(Autotuner, SetsCoverTwiceTheL2WithinTheBudget) {
  DeviceProfile h200 = *DeviceProfile::known("H200");
  ASSERT_GT(h200.l2Bytes, 0);
  TuneBuffers small;
  small.xBytes = 1 << 20;
  EXPECT_EQ(tuneSets(small, h200), kTuneMaxSets);
  TuneBuffers half;
  half.xBytes = h200.l2Bytes;
  EXPECT_EQ(tuneSets(half, h200), 2);
  TuneBuffers huge;
  huge.xBytes = int64_t(300) << 20;
  EXPECT_EQ(tuneSets(huge, h200), 1);
  // The budget bounds the sets before the L2 does.
  EXPECT_EQ(tuneSets(half, h200, h200.l2Bytes + 1), 1);
}

TEST(Autotuner, CandidatesStartWithTheIncumbentAndFitTheHandlesAlignment) {
  const DeviceProfile h200 = *DeviceProfile::known("H200");
  for (int g : {64, 128}) {
    const KernelSpec s = spec(7168, g);
    for (Regime r : kRegimes) {
      const LaunchShape incumbent = chooseLaunchShape(s, r, h200);
      const std::vector<LaunchShape> all = candidateShapes(s, r, h200);
      const std::vector<LaunchShape> wide = tuneCandidates(s, r, h200, incumbent, 16);
      ASSERT_FALSE(wide.empty());
      EXPECT_EQ(wide.front(), incumbent);
      EXPECT_EQ(wide.size(), all.size()) << regimeName(r); // the incumbent is all's first
      for (const LaunchShape& c : all)
        EXPECT_NE(std::find(wide.begin(), wide.end(), c), wide.end());

      const std::vector<LaunchShape> narrow = tuneCandidates(s, r, h200, incumbent, 4);
      EXPECT_EQ(narrow.front(), incumbent);
      EXPECT_GT(narrow.size(), 1u);
      for (size_t i = 1; i < narrow.size(); ++i) {
        EXPECT_LE(narrow[i].vecWidth, 4);
        EXPECT_EQ(std::count(narrow.begin(), narrow.end(), narrow[i]), 1);
      }
    }
  }
}

TEST(Autotuner, WinnerMustBeatTheIncumbentByTheMargin) {
  EXPECT_EQ(pickWinner({10.0}), 0u);
  EXPECT_EQ(pickWinner({10.0, 9.9}), 0u);        // 1%: noise
  EXPECT_EQ(pickWinner({10.0, 9.7}), 1u);        // 3%
  EXPECT_EQ(pickWinner({10.0, 9.7, 9.0}), 2u);   // the fastest
  EXPECT_EQ(pickWinner({10.0, 11.0, 12.0}), 0u); // none faster
  EXPECT_EQ(pickWinner({10.0, 0.0, 9.0}), 2u);   // an untimed candidate never wins
  EXPECT_EQ(pickWinner({0.0, 5.0, 6.0}), 1u);    // nor an untimed incumbent
  EXPECT_EQ(pickWinner({10.0, 9.7}, 0.05), 0u);
}

// A cache directory and a service with autotuning on the fake driver, whose
// knobs `fake_` reaches (the service opens the same library, so the same state).
class FakeDriverAutotune : public testing::Test {
protected:
  void SetUp() override {
    ASSERT_TRUE(fake_.ok()) << "could not open " << BQJIT_FAKE_CUDA_LIBRARY << ": " << dlerror();
    fake_.setCapturing(false);
    char tmpl[] = "/tmp/bqjit_autotune_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    Config c = test::fakeDriverConfig(dir_);
    c.autotune = true;
    c.logLevel = LogLevel::Info;
    c.logSink = [this](LogLevel level, const std::string& text) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (level <= LogLevel::Info && text.find("autotune") != std::string::npos)
        lines_.push_back(text);
    };
    auto s = Service::create(c);
    ASSERT_TRUE(bool(s)) << consumeToString(s.takeError());
    service_ = std::move(*s);
  }
  void TearDown() override {
    service_.reset();
    if (fake_.ok())
      fake_.setCapturing(false);
    llvm::consumeError(fs::removeTree(dir_));
  }
  size_t lines() {
    std::lock_guard<std::mutex> lock(mutex_);
    return lines_.size();
  }
  std::string lastLine() {
    std::lock_guard<std::mutex> lock(mutex_);
    return lines_.empty() ? "" : lines_.back();
  }
  /// A launch of `tokens` rows at fake addresses (nothing executes).
  void launch(const Kernel& kernel, int64_t tokens) {
    llvm::Error err = kernel.launch(test::fakeAddressArgs(kernel.spec().hidden, tokens), nullptr);
    ASSERT_FALSE(bool(err)) << consumeToString(std::move(err));
  }

  test::FakeDriver fake_;
  std::string dir_;
  std::unique_ptr<Service> service_;
  std::mutex mutex_;
  std::vector<std::string> lines_;
};

// Three regimes of one spec: a faster block size takes the slot and the
// record; where the heuristic's own block size is as fast, the heuristic
// stays (and is recorded); a captured launch asks nothing until an uncaptured
// one does. The next plan takes the records and its launches ask nothing.
TEST_F(FakeDriverAutotune, TuningRunsItsCourseOnTheFakeDriver) {
  Service& service = *service_;
  KernelSpec spec;
  spec.hidden = 2048;
  spec.groupSize = 128;
  spec.arch = "sm_90";
  auto profile = service.deviceProfile(0);
  ASSERT_TRUE(bool(profile)) << consumeToString(profile.takeError());
  EXPECT_EQ(profile->model, "Fake GPU");
  auto plan = service.planner().plan(spec, *profile);
  ASSERT_TRUE(bool(plan));
  int widest = 1;
  for (const KernelSpec& v : plan->variants)
    widest = std::max(widest, v.shape->vecWidth);
  auto kernel = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  service.finishVariants();

  // Few tokens: the first candidate of another block size than the
  // heuristic's, made the fastest, wins.
  const int64_t few = 1000;
  ASSERT_EQ(regimeFor(few * 2048), Regime::FewTokens);
  const LaunchShape heuristic = *plan->variantFor(Regime::FewTokens).shape;
  const std::vector<LaunchShape> shapes =
      tuneCandidates(spec, Regime::FewTokens, *profile, heuristic, widest);
  auto other = std::find_if(shapes.begin() + 1, shapes.end(), [&](const LaunchShape& s) {
    return s.threadsPerBlock() != heuristic.threadsPerBlock();
  });
  ASSERT_NE(other, shapes.end());
  const LaunchShape expected = *other;
  // One tuning with `fast` the fast block size: the slot then holds `winner`,
  // the record says so, and the log line ends with `verdict`.
  auto tuneAndCheck = [&](int64_t tokens, int fast, const LaunchShape& winner,
                          const char* verdict) {
    fake_.setFastBlock(static_cast<unsigned>(fast));
    launch(*kernel, tokens);
    service.finishTuning();
    EXPECT_EQ(*kernel->specFor(tokens).shape, winner) << lastLine();
    auto record = service.planner().tuning().find(spec, regimeFor(tokens * 2048), *profile);
    ASSERT_TRUE(record.has_value()) << lastLine();
    EXPECT_EQ(withDerivedOccupancy(spec, *record), winner);
    EXPECT_NE(lastLine().find(verdict), std::string::npos) << lastLine();
  };
  tuneAndCheck(few, expected.threadsPerBlock(), expected, "swapped in");

  // Very few tokens: the heuristic's block size is the fast one, so nothing
  // beats the heuristic by the margin; it stays, and is the record.
  const int64_t veryFew = 100;
  ASSERT_EQ(regimeFor(veryFew * 2048), Regime::VeryFewTokens);
  const LaunchShape tiny = *plan->variantFor(Regime::VeryFewTokens).shape;
  tuneAndCheck(veryFew, tiny.threadsPerBlock(), tiny, "the heuristic's stays");

  // Many tokens: a captured launch asks nothing; the next uncaptured one does.
  const int64_t many = 8000;
  ASSERT_EQ(regimeFor(many * 2048), Regime::ManyTokens);
  const size_t before = lines();
  fake_.setCapturing(true);
  launch(*kernel, many);
  service.finishTuning();
  EXPECT_EQ(lines(), before);
  EXPECT_FALSE(service.planner().tuning().find(spec, Regime::ManyTokens, *profile).has_value());
  fake_.setCapturing(false);
  launch(*kernel, many);
  service.finishTuning();
  EXPECT_GT(lines(), before);
  EXPECT_TRUE(service.planner().tuning().find(spec, Regime::ManyTokens, *profile).has_value());

  // A second launch of a tuned regime asks nothing, nor does a kernel
  // planned from the records.
  const size_t tuned = lines();
  launch(*kernel, few);
  auto next = service.getKernel(spec, 0);
  ASSERT_TRUE(bool(next)) << consumeToString(next.takeError());
  EXPECT_EQ(*next->specFor(few).shape, expected);
  launch(*next, few);
  launch(*next, veryFew);
  service.finishTuning();
  EXPECT_EQ(lines(), tuned);
}

// A host that exits while a tuning runs (the GPU suite's
// GpuRuntime.ExitingWhileTuningIsClean, here on the fake driver, where every
// step runs but the kernels): the child holds a service with autotuning in a
// static, launches once (a tuning starts: dozens of NVRTC compiles), and
// exits 0, 150 and 600 ms later; each exit must end the process with status
// 0 within 60 s.
TEST(FakeDriverAutotuneExit, ExitingWhileTuningIsClean) {
  if (::getenv("BQJIT_TEST_EXIT_CHILD"))
    GTEST_SKIP() << "the child's own run";
  for (int delayMs : {0, 150, 600}) {
    char dir[] = "/tmp/bqjit_fake_exit_tune_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    const int status = test::runThisBinary(
        std::string("BQJIT_TEST_EXIT_CHILD=tune BQJIT_TEST_EXIT_DELAY_MS=") +
            std::to_string(delayMs) + " BQJIT_CACHE_DIR=" + dir + " timeout -s KILL 60",
        "FakeDriverAutotuneExitChild.ExitsWhileTuning");
    llvm::consumeError(fs::removeTree(dir));
    ASSERT_TRUE(WIFEXITED(status)) << "delay " << delayMs << " ms";
    EXPECT_EQ(WEXITSTATUS(status), 0) << "delay " << delayMs << " ms (137: killed after 60 s)";
  }
}

TEST(FakeDriverAutotuneExitChild, ExitsWhileTuning) {
  const char* child = ::getenv("BQJIT_TEST_EXIT_CHILD");
  if (!child || std::string(child) != "tune")
    GTEST_SKIP() << "run by FakeDriverAutotuneExit.ExitingWhileTuningIsClean";
  static std::unique_ptr<Service> service;
  auto fromEnv = Config::fromEnvironment(); // BQJIT_CACHE_DIR, BQJIT_LOG_LEVEL
  ASSERT_TRUE(bool(fromEnv)) << consumeToString(fromEnv.takeError());
  Config c = *fromEnv;
  c.autotune = true;
  c.cudaDriver = BQJIT_FAKE_CUDA_LIBRARY;
  auto created = Service::create(c);
  ASSERT_TRUE(bool(created)) << consumeToString(created.takeError());
  service = std::move(*created);
  KernelSpec spec;
  spec.hidden = 3072;
  spec.groupSize = 128;
  spec.arch = "sm_90";
  auto kernel = service->getKernel(spec, 0);
  ASSERT_TRUE(bool(kernel)) << consumeToString(kernel.takeError());
  service->finishVariants();
  llvm::Error launched = kernel->launch(test::fakeAddressArgs(spec.hidden, 64), nullptr);
  ASSERT_FALSE(bool(launched)) << consumeToString(std::move(launched));
  const char* delay = ::getenv("BQJIT_TEST_EXIT_DELAY_MS");
  std::this_thread::sleep_for(std::chrono::milliseconds(delay ? std::atoi(delay) : 0));
  std::exit(0);
}

} // namespace
} // namespace bqjit
