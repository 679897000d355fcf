// The NVRTC compiler: every specialization of the template compiles to PTX and
// a cubin without spills, the PTX carries the specialized constants, and
// failures carry what a person needs to act on them.
#include "jit/compiler.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "bqjit/arch.hpp"
#include "bqjit/error.hpp"
#include "jit/cache_key.hpp"
#include "jit/nvrtc_program.hpp"
#include "jit/resource_report.hpp"
#include "jit/source.hpp"
#include "jit/template_source.hpp"
#include "jit/toolchain.hpp"
#include "planner/launch_heuristic.hpp"
#include "planner/planner.hpp"
#include "test_util.hpp"

namespace bqjit {
namespace {

using test::contains;

KernelSpec makeSpec(int hidden, int group, const std::string& arch = "sm_90") {
  KernelSpec s;
  s.hidden = hidden;
  s.groupSize = group;
  s.arch = arch;
  return s;
}

// A spec with an explicit shape of 256-thread blocks (teams of `tpg` threads
// reading `vec` values a vector); FP4 as MXFP4 with bytes scales.
KernelSpec shapedSpec(int hidden, int group, int tpg, int vec, OutDtype out,
                      Activation activation = Activation::Silu) {
  KernelSpec s = makeSpec(hidden, group);
  s.outDtype = out;
  s.activation = activation;
  if (out == OutDtype::FP4E2M1) {
    s.ue8m0 = true;
    s.scaleLayout = ScaleLayout::Bytes;
  }
  LaunchShape shape{tpg, vec, 1};
  shape.groupsPerBlock = 256 / shape.teamSlot();
  s.shape = shape;
  return s;
}

/// The spec as the planner resolves it: the many-token heuristic's shape
/// unless one is given, occupancy derived.
KernelSpec resolved(KernelSpec s) {
  s.shape = s.shape ? withDerivedOccupancy(s, *s.shape) : chooseLaunchShape(s);
  return s;
}

llvm::Expected<CompiledKernel> compileSpec(const Compiler& compiler, const KernelSpec& spec) {
  auto id = compiler.identify(spec);
  if (!id)
    return id.takeError();
  return compiler.compile(*id);
}

/// The PTX's ".target" line, without trailing spaces ("" if none).
std::string targetLine(const std::string& ptx) {
  std::istringstream in(ptx);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(".target", 0) == 0) {
      while (!line.empty() && (line.back() == ' ' || line.back() == '\r'))
        line.pop_back();
      return line;
    }
  return "";
}

/// Everything a compiled kernel must satisfy; "" when it does, else the reasons.
std::string checkKernel(const Compiler& compiler, const KernelSpec& spec, const CompiledKernel& k) {
  std::string bad;
  auto fail = [&](const std::string& why) { bad += (bad.empty() ? "" : "; ") + why; };
  if (k.ptx.empty())
    fail("empty PTX");
  if (k.loweredName.rfind("_Z", 0) != 0)
    fail("lowered name '" + k.loweredName + "' is not mangled");
  if (k.ptx.find(".entry " + k.loweredName + "(") == std::string::npos)
    fail("PTX has no .entry " + k.loweredName);
  if (targetLine(k.ptx) != ".target " + spec.arch)
    fail("PTX target line '" + targetLine(k.ptx) + "' for " + spec.arch);
  static const char kElf[4] = {0x7f, 'E', 'L', 'F'};
  if (k.cubin.size() < 64 || std::memcmp(k.cubin.data(), kElf, 4) != 0)
    fail("cubin is not ELF (" + std::to_string(k.cubin.size()) + " bytes)");
  else if (static_cast<unsigned char>(k.cubin[18]) != 190) // e_machine == EM_CUDA
    fail("cubin e_machine is " + std::to_string(static_cast<unsigned char>(k.cubin[18])));
  // With a driver installed, NVRTC may answer from the driver's compute cache
  // and leave the log empty; the report checks need a fresh compile.
  const bool haveReport = !k.log.empty();
  if (haveReport &&
      k.log.find("Compiling entry function '" + k.loweredName + "'") == std::string::npos)
    fail("ptxas report lacks the kernel");
  if (k.resources.registers <= 0)
    fail("registers " + std::to_string(k.resources.registers));
  // This NVRTC writes the ptxas report, so spills must be known (-1 would
  // mean "unknown") and the cubin's numbers must agree with the report's.
  if (haveReport && (k.resources.spillStoreBytes < 0 || k.resources.spillLoadBytes < 0 ||
                     k.resources.barriers < 0))
    fail("spills or barriers unknown despite a ptxas report");
  auto report = parsePtxasReport(k.log, k.loweredName);
  if (!haveReport) {
    llvm::consumeError(report.takeError());
  } else if (!report) {
    fail(consumeToString(report.takeError()));
  } else {
    if (report->registers != k.resources.registers)
      fail("cubin says " + std::to_string(k.resources.registers) + " registers, ptxas " +
           std::to_string(report->registers));
    if (report->stackFrameBytes != k.resources.stackFrameBytes)
      fail("cubin says " + std::to_string(k.resources.stackFrameBytes) +
           " bytes stack frame, ptxas " + std::to_string(report->stackFrameBytes));
  }
  // KNOWN ISSUE (reported, not fixed): with G = 1024 and fp32 input, each
  // thread does 32 IEEE divisions (__fdiv_rn) and ptxas for sm_90 outlines
  // their slow path as a subroutine call whose ABI saves a register in local
  // memory: an 8..16-byte stack frame and, for int8 row, a 4-byte spill. It is
  // tolerated for exactly that case and that size; anything else fails.
  const bool knownAbiSpill =
      spec.groupSize == 1024 && spec.inDtype == InDtype::FP32 && spec.arch.rfind("sm_90", 0) == 0;
  const int spillLimit = knownAbiSpill ? 4 : 0;
  const int stackLimit = knownAbiSpill ? 16 : 0;
  if (k.resources.spillStoreBytes > spillLimit || k.resources.spillLoadBytes > spillLimit)
    fail("spills " + std::to_string(k.resources.spillStoreBytes) + "/" +
         std::to_string(k.resources.spillLoadBytes) + " bytes");
  if (k.resources.stackFrameBytes > stackLimit)
    fail("stack frame " + std::to_string(k.resources.stackFrameBytes) + " bytes");
  if (!(k.spec == spec))
    fail("spec changed to " + k.spec.canonical());
  auto id = compiler.identify(spec);
  if (!id)
    fail(consumeToString(id.takeError()));
  else if (k.key != id->key)
    fail("key differs from identify()'s");
  if (k.options != Compiler::options(spec))
    fail("options differ");
  if (k.nvrtcVersion != compiler.identity().toString())
    fail("nvrtc version '" + k.nvrtcVersion + "'");
  if (!(k.compileMs > 0))
    fail("compileMs " + std::to_string(k.compileMs));
  return bad;
}

class CompilerTest : public testing::Test {
protected:
  void SetUp() override {
    auto c = Compiler::create();
    ASSERT_TRUE(bool(c)) << consumeToString(c.takeError());
    compiler_.emplace(std::move(*c));
  }
  /// Compiles a spec (resolving its shape) and checks it; returns the kernel.
  std::optional<CompiledKernel> compileChecked(const KernelSpec& unresolved) {
    const KernelSpec spec = resolved(unresolved);
    auto k = compileSpec(*compiler_, spec);
    if (!k) {
      ADD_FAILURE() << spec.label() << ": " << consumeToString(k.takeError());
      return std::nullopt;
    }
    const std::string problems = checkKernel(*compiler_, spec, *k);
    EXPECT_EQ(problems, "") << spec.label();
    return std::move(*k);
  }
  std::optional<Compiler> compiler_;
};

// ---- the matrix --------------------------------------------------------------------

std::vector<KernelSpec> compileMatrix() {
  struct Layout {
    ScaleLayout layout;
    bool ue8m0;
  };
  const Layout layouts[] = {{ScaleLayout::Row, false},
                            {ScaleLayout::Row, true},
                            {ScaleLayout::Col, false},
                            {ScaleLayout::ColTma, false},
                            {ScaleLayout::Ue8m0Packed, true}};
  std::vector<KernelSpec> out;
  for (const char* arch : {"sm_80", "sm_90"})
    for (int g : {16, 32, 48, 64, 96, 128, 192, 256, 1024})
      for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32})
        for (OutDtype o : {OutDtype::FP8E4M3, OutDtype::FP8E5M2, OutDtype::INT8})
          for (const Layout& l : layouts) {
            KernelSpec s = makeSpec(g * 8, g, arch);
            s.inDtype = in;
            s.outDtype = o;
            s.scaleLayout = l.layout;
            s.ue8m0 = l.ue8m0;
            out.push_back(resolved(s));
          }
  return out;
}

/// What compiling a list of specs on two threads found.
struct BatchResult {
  std::vector<std::string> failures; ///< "label: why", in completion order
  std::vector<std::string> keys;     ///< each spec's cache key ("" where it failed)
  int maxRegisters = 0;
  double wallS = 0;
  double compileMsTotal = 0;

  std::string firstFailures() const {
    std::string report;
    for (size_t i = 0; i < failures.size() && i < 20; ++i)
      report += failures[i] + "\n";
    return report;
  }
};

/// Compiles every spec (NVRTC is thread-safe; one Compiler is shared) and
/// checks each kernel with checkKernel.
BatchResult compileAll(const Compiler& compiler, const std::vector<KernelSpec>& specs) {
  BatchResult r;
  r.keys.resize(specs.size());
  std::atomic<size_t> next{0};
  std::mutex mutex;
  auto worker = [&] {
    for (;;) {
      const size_t i = next.fetch_add(1);
      if (i >= specs.size())
        return;
      auto k = compileSpec(compiler, specs[i]);
      std::lock_guard<std::mutex> lock(mutex);
      if (!k) {
        r.failures.push_back(specs[i].label() + ": " + consumeToString(k.takeError()));
        continue;
      }
      const std::string problems = checkKernel(compiler, specs[i], *k);
      if (!problems.empty())
        r.failures.push_back(specs[i].label() + ": " + problems);
      if (k->resources.spillStoreBytes > 0 || k->resources.stackFrameBytes > 0)
        std::printf("[ spill    ] %s: %d bytes stack frame, %d/%d bytes spill stores/loads\n",
                    specs[i].label().c_str(), k->resources.stackFrameBytes,
                    k->resources.spillStoreBytes, k->resources.spillLoadBytes);
      r.keys[i] = k->key;
      r.maxRegisters = std::max(r.maxRegisters, k->resources.registers);
      r.compileMsTotal += k->compileMs;
    }
  };
  const auto start = std::chrono::steady_clock::now();
  std::thread a(worker), b(worker);
  a.join();
  b.join();
  r.wallS = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

TEST_F(CompilerTest, MatrixOfAllSpecializationsCompiles) {
  const std::vector<KernelSpec> specs = compileMatrix();
  ASSERT_EQ(specs.size(), 2u * 9 * 3 * 3 * 5);
  BatchResult r = compileAll(*compiler_, specs);
  std::printf("[ matrix   ] %zu kernels compiled in %.1f s wall with 2 threads "
              "(%.0f ms NVRTC time per kernel on average), max %d registers\n",
              specs.size(), r.wallS, r.compileMsTotal / specs.size(), r.maxRegisters);
  RecordProperty("matrix_kernels", static_cast<int>(specs.size()));
  RecordProperty("matrix_wall_ms", static_cast<int>(r.wallS * 1000));
  EXPECT_TRUE(r.failures.empty()) << r.failures.size() << " of " << specs.size()
                                  << " specializations failed, first ones:\n"
                                  << r.firstFailures();
  // Every specialization is a distinct cache entry.
  std::sort(r.keys.begin(), r.keys.end());
  EXPECT_EQ(std::unique(r.keys.begin(), r.keys.end()), r.keys.end());
}

// The matrix compiles the reference class's many-token shape of each spec;
// a launch may take any regime's shape, and a GPU model that keeps more bytes
// in flight (the H200) has shapes of its own (blocks of 4 teams of 32 at
// G = 512 and 1024, 256-thread blocks of teams of 2 at G = 32, ...). Every
// variant of the planner's plan for any known model (every regime's shape),
// over the group sizes whose shapes differ, must compile without spills: a
// template change once broke blocks of 4 teams of 32 alone, which only a
// GPU run of the H200's variants found.
std::vector<KernelSpec> variantMatrix() {
  struct Out {
    OutDtype out;
    ScaleLayout layout;
    bool ue8m0;
  };
  std::vector<KernelSpec> out;
  std::set<std::string> seen;
  for (const KernelSpec& m : compileMatrix())
    seen.insert(m.canonical());
  const Planner planner(Config{}, "test"); // no cache directory: no tuning records
  std::vector<DeviceProfile> devices = DeviceProfile::knownModels();
  for (const char* arch : {"sm_80", "sm_90"}) {
    auto a = Arch::parse(arch);
    if (!a) {
      ADD_FAILURE() << consumeToString(a.takeError());
      return out;
    }
    devices.push_back(DeviceProfile::forArch(*a));
  }
  for (const DeviceProfile& device : devices)
    for (int g : {16, 32, 64, 128, 160, 256, 512, 1024})
      for (InDtype in : {InDtype::BF16, InDtype::FP32})
        for (const Out& o : {Out{OutDtype::FP8E4M3, ScaleLayout::Row, false},
                             Out{OutDtype::FP8E4M3, ScaleLayout::Swizzled128x4, true},
                             Out{OutDtype::FP4E2M1, ScaleLayout::Swizzled128x4, g == 32}}) {
          if (o.out == OutDtype::FP4E2M1 && g != 16 && g != 32)
            continue;
          KernelSpec s = makeSpec(g * 8, g, device.arch.str());
          s.inDtype = in;
          s.outDtype = o.out;
          s.scaleLayout = o.layout;
          s.ue8m0 = o.ue8m0;
          auto plan = planner.plan(s, device);
          if (!plan) {
            llvm::consumeError(plan.takeError()); // e.g. NVFP4 on fp32 with ue8m0
            continue;
          }
          // The full-SM variant may spill at some H (the service then sets
          // it aside): FullSmFewTokenVariantsCompileWithoutSpills has its own.
          for (int i = 0; i < static_cast<int>(plan->variants.size()); ++i)
            if (i != plan->fullSmVariant && seen.insert(plan->variants[i].canonical()).second)
              out.push_back(std::move(plan->variants[i]));
        }
  return out;
}

TEST_F(CompilerTest, EveryRegimesShapeOfEveryKnownDeviceCompiles) {
  const std::vector<KernelSpec> specs = variantMatrix();
  // The H200's blocks of 4 teams of 32 at G = 512 are among them.
  const bool hasBlocksOfFourTeamsOf32 =
      std::any_of(specs.begin(), specs.end(), [](const KernelSpec& s) {
        return s.groupSize == 512 && s.shape->threadsPerGroup == 32 && s.shape->groupsPerBlock == 4;
      });
  EXPECT_TRUE(hasBlocksOfFourTeamsOf32);
  ASSERT_GT(specs.size(), 40u);
  BatchResult r = compileAll(*compiler_, specs);
  std::printf("[ variants ] %zu kernels compiled in %.1f s wall with 2 threads, max %d registers\n",
              specs.size(), r.wallS, r.maxRegisters);
  EXPECT_TRUE(r.failures.empty()) << r.failures.size() << " of " << specs.size()
                                  << " launch shapes failed, first ones:\n"
                                  << r.firstFailures();
}

// ---- single compiles -----------------------------------------------------------------

TEST(CompilerCold, ColdCompileTime) {
  // The first NVRTC use of this process (gtest_discover_tests runs each test
  // in its own process): Compiler::create (NVRTC start-up and the identity
  // probe), then the first real compile.
  const auto t0 = std::chrono::steady_clock::now();
  auto compiler = Compiler::create();
  ASSERT_TRUE(bool(compiler)) << consumeToString(compiler.takeError());
  const auto t1 = std::chrono::steady_clock::now();
  const KernelSpec spec = resolved(makeSpec(7168, 128));
  auto k = compileSpec(*compiler, spec);
  const auto t2 = std::chrono::steady_clock::now();
  ASSERT_TRUE(bool(k)) << consumeToString(k.takeError());
  EXPECT_EQ(checkKernel(*compiler, spec, *k), "");
  const double createMs = std::chrono::duration<double, std::milli>(t1 - t0).count();
  const double compileMs = std::chrono::duration<double, std::milli>(t2 - t1).count();
  std::printf("[ cold     ] Compiler::create %.0f ms; first compile H=7168 G=128 bf16->fp8_e4m3 "
              "sm_90: %.0f ms wall (%.0f ms in NVRTC), %d registers, %zu bytes cubin, %zu bytes "
              "PTX\n",
              createMs, compileMs, k->compileMs, k->resources.registers, k->cubin.size(),
              k->ptx.size());
  RecordProperty("cold_create_ms", static_cast<int>(createMs));
  RecordProperty("cold_compile_ms", static_cast<int>(compileMs));
  EXPECT_LE(k->compileMs, compileMs + 1);
  // A second compile of another spec in the same process is warm.
  const auto t3 = std::chrono::steady_clock::now();
  auto warm = compileSpec(*compiler, resolved(makeSpec(7168, 64)));
  ASSERT_TRUE(bool(warm)) << consumeToString(warm.takeError());
  std::printf(
      "[ warm     ] second compile (G=64): %.0f ms\n",
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t3).count());
}

TEST_F(CompilerTest, PtxCarriesSpecializedConstants) {
  auto g96 = compileChecked(makeSpec(7104, 96));
  auto g48 = compileChecked(makeSpec(7104, 48));
  ASSERT_TRUE(g96 && g48);
  EXPECT_TRUE(contains(g96->loweredName, "H7104_G96_"));
  EXPECT_TRUE(contains(g96->ptx, ".entry " + g96->loweredName));
  EXPECT_TRUE(contains(g48->loweredName, "H7104_G48_"));
  EXPECT_NE(g96->ptx, g48->ptx);
  EXPECT_NE(g96->cubin, g48->cubin);
  EXPECT_NE(g96->key, g48->key);
  // The launch shape and occupancy are part of the name too.
  const LaunchShape& s = *g96->spec.shape;
  EXPECT_TRUE(contains(g96->loweredName, "_tpg" + std::to_string(s.threadsPerGroup) + "_vec" +
                                             std::to_string(s.vecWidth) + "_gpb" +
                                             std::to_string(s.groupsPerBlock) + "_mbs" +
                                             std::to_string(s.minBlocksPerSm)));
  // The generated source names every choice.
  auto id = compiler_->identify(g96->spec);
  ASSERT_TRUE(bool(id));
  for (const char* constant :
       {"kHidden = 7104;", "kGroupSize = 96;", "kInDtype = kBF16;", "kOutDtype = kE4M3;",
        "kScaleLayout = kRow;", "kPow2Scales = false;", "kHasScaleUb = false;", "kMasked = false;"})
    EXPECT_TRUE(contains(id->source.text, constant)) << constant << " in\n" << id->source.text;
  // The spec is echoed in the source, hence not necessarily in PTX, but the
  // H, G pair must be what the kernel uses: 7104 / 96 = 74 groups.
  EXPECT_EQ(g96->spec.numGroups(), 74);
}

TEST_F(CompilerTest, TargetLineMatchesArch) {
  for (const char* arch : {"sm_80", "sm_89", "sm_90", "sm_90a", "sm_100"}) {
    auto k = compileChecked(makeSpec(2048, 128, arch));
    ASSERT_TRUE(k.has_value()) << arch;
    EXPECT_EQ(targetLine(k->ptx), std::string(".target ") + arch);
  }
}

TEST_F(CompilerTest, Sm90aIsDistinctFromSm90) {
  auto plain = compileChecked(makeSpec(2048, 128, "sm_90"));
  auto accel = compileChecked(makeSpec(2048, 128, "sm_90a"));
  ASSERT_TRUE(plain && accel);
  EXPECT_TRUE(contains(accel->ptx, ".target sm_90a"));
  EXPECT_FALSE(contains(plain->ptx, "sm_90a"));
  EXPECT_NE(plain->key, accel->key);
  EXPECT_TRUE(contains(accel->options.front(), "sm_90a"));
}

TEST_F(CompilerTest, Sm100Compiles) {
  KernelSpec s = makeSpec(7168, 128, "sm_100");
  s.scaleLayout = ScaleLayout::Ue8m0Packed;
  s.ue8m0 = true;
  EXPECT_TRUE(compileChecked(s).has_value());
}

TEST_F(CompilerTest, MaskedAndScaleUbCompile) {
  for (bool masked : {false, true})
    for (bool ub : {false, true}) {
      KernelSpec s = makeSpec(2048, 128);
      s.masked = masked;
      s.hasScaleUb = ub;
      s.scaleLayout = ScaleLayout::ColTma;
      auto k = compileChecked(s);
      ASSERT_TRUE(k.has_value());
      EXPECT_EQ(contains(k->loweredName, "_ub_"), ub) << k->loweredName;
      EXPECT_EQ(contains(k->loweredName, "_masked_"), masked) << k->loweredName;
    }
}

TEST_F(CompilerTest, OddGroupCompilesWithScalarLoads) {
  for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32}) {
    KernelSpec s = makeSpec(17 * 8, 17);
    s.inDtype = in;
    const KernelSpec r = resolved(s);
    ASSERT_EQ(r.shape->vecWidth, 1);
    auto k = compileChecked(r);
    ASSERT_TRUE(k.has_value()) << toString(in);
    EXPECT_TRUE(contains(k->loweredName, "H136_G17_"));
  }
}

// ---- activations, gate/up layouts and roundings (docs/contract.md sections 6, 7) ---------------

KernelSpec withActivation(KernelSpec s, Activation a) {
  s.activation = a;
  if (a == Activation::Swiglu) { // gpt-oss's parameters
    s.alpha = 1.702f;
    s.beta = 1.0f;
    s.limit = 7.0f;
  }
  return s;
}

// Every activation x gate_up on sm_90 and sm_100, each with every input type,
// and output types, layouts and roundings spread over the cases so that every
// pair of (activation, gate_up, in, out, rounding) values meets; odd G among them.
std::vector<KernelSpec> activationMatrix() {
  std::vector<KernelSpec> out;
  int k = 0;
  for (const char* arch : {"sm_90", "sm_100"})
    for (Activation a :
         {Activation::Silu, Activation::Swiglu, Activation::GeluTanh, Activation::Gelu})
      for (GateUp gu : {GateUp::Split, GateUp::Interleaved})
        for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32}) {
          const int g = std::vector<int>{32, 48, 96, 128, 160, 17}[k % 6];
          KernelSpec s = withActivation(makeSpec(g * 6, g, arch), a);
          s.gateUp = gu;
          s.inDtype = in;
          s.outDtype = std::vector<OutDtype>{OutDtype::FP8E4M3, OutDtype::FP8E5M2,
                                             OutDtype::INT8}[(k / 2) % 3];
          const bool floor = s.outDtype != OutDtype::INT8 && k % 2 == 0;
          s.ue8m0 = floor || k % 3 == 0;
          s.scaleRounding = floor ? ScaleRounding::Floor : ScaleRounding::Ceil;
          s.scaleLayout = s.ue8m0 ? (k % 4 < 2 ? ScaleLayout::Bytes : ScaleLayout::Ue8m0Packed)
                                  : (k % 4 < 2 ? ScaleLayout::Row : ScaleLayout::ColTma);
          s.masked = k % 5 == 0;
          out.push_back(resolved(s));
          ++k;
        }
  return out;
}

/// Compiles every spec on two threads and expects each to pass checkKernel and
/// `extra` (a problem's text, or empty), and the keys to be distinct.
void expectMatrixCompiles(
    const Compiler& compiler, const std::vector<KernelSpec>& specs,
    const std::function<std::string(const KernelSpec&, const CompiledKernel&)>& extra) {
  std::atomic<size_t> next{0};
  std::mutex mutex;
  std::vector<std::string> failures;
  std::vector<std::string> keys(specs.size());
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < specs.size();) {
      auto k = compileSpec(compiler, specs[i]);
      std::lock_guard<std::mutex> lock(mutex);
      if (!k) {
        failures.push_back(specs[i].label() + ": " + consumeToString(k.takeError()));
        continue;
      }
      const std::string problems = checkKernel(compiler, specs[i], *k);
      if (!problems.empty())
        failures.push_back(specs[i].label() + ": " + problems);
      const std::string more = extra(specs[i], *k);
      if (!more.empty())
        failures.push_back(specs[i].label() + ": " + more);
      keys[i] = k->key;
    }
  };
  std::thread a(worker), b(worker);
  a.join();
  b.join();
  std::string report;
  for (size_t i = 0; i < failures.size() && i < 20; ++i)
    report += failures[i] + "\n";
  EXPECT_TRUE(failures.empty()) << failures.size() << " of " << specs.size()
                                << " specializations failed, first ones:\n"
                                << report;
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::unique(keys.begin(), keys.end()), keys.end());
}

TEST_F(CompilerTest, ActivationsGateUpAndRoundingsCompileWithoutSpills) {
  const std::vector<KernelSpec> specs = activationMatrix();
  ASSERT_EQ(specs.size(), 2u * 4 * 2 * 3);
  expectMatrixCompiles(*compiler_, specs, [](const KernelSpec&, const CompiledKernel& k) {
    // Accurate math only: no approximate tanh (docs/contract.md section 6).
    return contains(k.ptx, "tanh.approx") ? std::string("tanh.approx in the PTX") : std::string();
  });
}

// The few-token shape promised a full SM (32 registers), which the planner
// gives 8-bit and swizzled FP4 launches on an H200 from 1.2 waves
// (fewTokensFullSm): over every spec it may serve (16-bit inputs, both fp8
// outputs, every layout it takes, NVFP4 and MXFP4, the three sigmoid-family
// activations, both gate/up layouts, G = 32, 64 and 128, a scale bound and
// both roundings spread over the cases), the planner's promised variant
// compiles without spills at these H. (int8,
// col_tma and masked batches spill 4-20 bytes there: the rule leaves them
// out. At G = 128 it spills 4 bytes where H / G is a power of two, and the
// service leaves such launches the few-token shape: FakeDriverLaunch.
// FullSmVariantThatSpillsLeavesItsLaunchesTheFewTokenShape.)
std::vector<KernelSpec> fullSmMatrix() {
  struct Layout {
    ScaleLayout layout;
    bool ue8m0;
  };
  const Layout layouts[] = {{ScaleLayout::Row, false},  {ScaleLayout::Row, true},
                            {ScaleLayout::Col, false},  {ScaleLayout::Ue8m0Packed, true},
                            {ScaleLayout::Bytes, true}, {ScaleLayout::Swizzled128x4, true}};
  const DeviceProfile h200 = *DeviceProfile::known("H200");
  const Planner planner(Config{}, "test");
  std::vector<KernelSpec> out;
  auto addPromised = [&](const KernelSpec& s) {
    auto plan = planner.plan(s, h200);
    if (!plan)
      ADD_FAILURE() << s.canonical() << ": " << consumeToString(plan.takeError());
    else if (plan->fullSmVariant < 0)
      ADD_FAILURE() << s.canonical() << ": no full-SM variant planned";
    else
      out.push_back(plan->variants[plan->fullSmVariant]);
  };
  int k = 0;
  for (const Layout& l : layouts)
    for (Activation a : {Activation::Silu, Activation::Swiglu, Activation::GeluTanh})
      for (int g : {32, 64, 128}) {
        KernelSpec s = withActivation(makeSpec(g == 32 ? 2880 : 3072, g, "sm_90"), a);
        s.scaleLayout = l.layout;
        s.ue8m0 = l.ue8m0;
        s.inDtype = k % 2 ? InDtype::FP16 : InDtype::BF16;
        s.outDtype = k % 3 == 1 ? OutDtype::FP8E5M2 : OutDtype::FP8E4M3;
        s.gateUp = k % 4 < 2 ? GateUp::Split : GateUp::Interleaved;
        s.scaleRounding = l.ue8m0 && k % 5 < 2 ? ScaleRounding::Floor : ScaleRounding::Ceil;
        s.hasScaleUb = s.scaleRounding == ScaleRounding::Ceil && k % 3 == 2;
        ++k;
        addPromised(s);
      }
  // FP4 with swizzled_128x4 scales: NVFP4 and MXFP4 at H whose one-tile
  // split exists, both inputs, the three activations, both gate/up layouts,
  // both roundings and a scale bound spread over the cases.
  for (int hidden : {2048, 2880, 5120})
    for (bool mx : {false, true})
      for (Activation a : {Activation::Silu, Activation::Swiglu, Activation::GeluTanh}) {
        KernelSpec s = withActivation(makeSpec(hidden, mx ? 32 : 16, "sm_90"), a);
        s.outDtype = OutDtype::FP4E2M1;
        s.scaleLayout = ScaleLayout::Swizzled128x4;
        s.ue8m0 = mx;
        s.inDtype = k % 2 ? InDtype::FP16 : InDtype::BF16;
        s.gateUp = k % 4 < 2 ? GateUp::Split : GateUp::Interleaved;
        if (mx) {
          s.scaleRounding = k % 5 < 2 ? ScaleRounding::Floor : ScaleRounding::Ceil;
          s.hasScaleUb = s.scaleRounding == ScaleRounding::Ceil && k % 3 == 2;
        }
        ++k;
        addPromised(s);
      }
  return out;
}

TEST_F(CompilerTest, FullSmFewTokenVariantsCompileWithoutSpills) {
  const std::vector<KernelSpec> specs = fullSmMatrix();
  ASSERT_EQ(specs.size(), 6u * 3 * 3 + 3 * 2 * 3);
  expectMatrixCompiles(*compiler_, specs, [](const KernelSpec& s, const CompiledKernel& k) {
    return k.resources.registers > 32
               ? "full-SM promise not kept: " + std::to_string(k.resources.registers) +
                     " registers (" + s.shape->label() + ")"
               : std::string();
  });
}

// ---- fp4_e2m1 (NVFP4, MXFP4) and swizzled_128x4 (docs/contract.md section 8) ----------

// NVFP4 and MXFP4 over the targets CI compiles for (sm_90, sm_100, sm_100a,
// sm_120) and the other Blackwell-specific ones, with every input type, both
// gate/up layouts, every layout they take, masked batches, a scale bound and
// both roundings spread over the cases; MXFP8 and an int8 E8M0 output in
// swizzled_128x4 too.
std::vector<KernelSpec> fp4Matrix() {
  std::vector<KernelSpec> out;
  int k = 0;
  for (const char* arch :
       {"sm_90", "sm_100", "sm_100a", "sm_120", "sm_80", "sm_100f", "sm_120a", "sm_120f"})
    for (bool nvfp4 : {true, false})
      for (InDtype in : {InDtype::BF16, InDtype::FP16, InDtype::FP32}) {
        KernelSpec s = makeSpec(nvfp4 ? 16 * (k % 2 ? 7 : 9) : 32 * 90, nvfp4 ? 16 : 32, arch);
        s.outDtype = OutDtype::FP4E2M1;
        s.inDtype = in;
        s.ue8m0 = !nvfp4;
        const ScaleLayout mxLayouts[] = {ScaleLayout::Swizzled128x4, ScaleLayout::Bytes,
                                         ScaleLayout::Row, ScaleLayout::Ue8m0Packed};
        s.scaleLayout =
            nvfp4 ? (k % 2 ? ScaleLayout::Bytes : ScaleLayout::Swizzled128x4) : mxLayouts[k % 4];
        s.masked = k % 3 == 1;
        s.gateUp = k % 4 == 3 ? GateUp::Interleaved : GateUp::Split;
        if (!nvfp4) {
          s.scaleRounding = k % 5 < 2 ? ScaleRounding::Floor : ScaleRounding::Ceil;
          s.hasScaleUb = s.scaleRounding == ScaleRounding::Ceil && k % 5 == 2;
        }
        if (k % 7 == 3) {
          s.activation = Activation::Swiglu;
          s.alpha = 1.702f;
          s.beta = 1.0f;
          s.limit = 7.0f;
        }
        out.push_back(resolved(s));
        ++k;
      }
  for (const char* arch : {"sm_90", "sm_100a"})
    for (OutDtype o : {OutDtype::FP8E4M3, OutDtype::INT8}) {
      KernelSpec s = makeSpec(2880, 32, arch);
      s.outDtype = o;
      s.ue8m0 = true;
      s.scaleRounding = o == OutDtype::INT8 ? ScaleRounding::Ceil : ScaleRounding::Floor;
      s.scaleLayout = ScaleLayout::Swizzled128x4;
      s.masked = o == OutDtype::INT8;
      out.push_back(resolved(s));
    }
  return out;
}

TEST_F(CompilerTest, Fp4AndSwizzledCompileWithoutSpillsOnEveryTarget) {
  expectMatrixCompiles(*compiler_, fp4Matrix(), [](const KernelSpec& s, const CompiledKernel& k) {
    // The hardware conversions only where PTX has them (family-specific
    // Blackwell targets); plain sm_100 / sm_120 convert in software.
    const Arch arch = *Arch::parse(s.arch);
    const bool hw = arch.number >= 100 && arch.suffix != 0;
    const bool fp4 = s.outDtype == OutDtype::FP4E2M1;
    std::string problems;
    if (contains(k.ptx, "e2m1x2") != (hw && fp4))
      problems += std::string("e2m1x2 conversion ") + (hw && fp4 ? "missing" : "present") + "; ";
    const bool mxCeil = fp4 && s.ue8m0 && s.scaleRounding == ScaleRounding::Ceil;
    if (contains(k.ptx, "ue8m0x2") != (hw && mxCeil))
      problems += std::string("ue8m0x2 conversion ") + (hw && mxCeil ? "missing" : "present");
    return problems;
  });
}

TEST_F(CompilerTest, Nvfp4OnSm100aUsesTheHardwareConversion) {
  KernelSpec s = makeSpec(7168, 16, "sm_100a");
  s.outDtype = OutDtype::FP4E2M1;
  s.scaleLayout = ScaleLayout::Swizzled128x4;
  auto hw = compileChecked(s);
  s.arch = "sm_100";
  auto soft = compileChecked(s);
  ASSERT_TRUE(hw && soft);
  EXPECT_TRUE(contains(hw->ptx, "cvt.rn.satfinite.e2m1x2.f32"));
  EXPECT_FALSE(contains(soft->ptx, "e2m1x2"));
  EXPECT_NE(hw->key, soft->key);
  auto id = compiler_->identify(resolved(s));
  ASSERT_TRUE(bool(id));
  for (const char* constant : {"kOutDtype = kE2M1;", "kScaleLayout = kSwizzled128x4;"})
    EXPECT_TRUE(contains(id->source.text, constant)) << constant;
}

TEST_F(CompilerTest, SourceCarriesActivationConstantsAsHexFloats) {
  KernelSpec s = withActivation(makeSpec(2880, 32), Activation::Swiglu);
  s.gateUp = GateUp::Interleaved;
  s.scaleLayout = ScaleLayout::Bytes;
  s.ue8m0 = true;
  s.scaleRounding = ScaleRounding::Floor;
  auto k = compileChecked(s);
  ASSERT_TRUE(k.has_value());
  auto id = compiler_->identify(k->spec);
  ASSERT_TRUE(bool(id));
  for (const char* constant :
       {"kActivation = kSwiglu;", "kAlpha = 0x1.b3b646p+0f;", "kBeta = 0x1p+0f;",
        "kHasLimit = true;", "kLimit = 0x1.cp+2f;", "kGateUp = kInterleaved;",
        "kScaleRounding = kFloor;", "kScaleLayout = kBytes;"})
    EXPECT_TRUE(contains(id->source.text, constant)) << constant << " in\n" << id->source.text;
  EXPECT_TRUE(contains(k->loweredName, "_swiglu_a3fd9db23_b3f800000_l40e00000_interleaved_floor_"))
      << k->loweredName;
  // silu keeps its old name and constants: no clamp, alpha 1, beta 0.
  auto silu = compiler_->identify(resolved(makeSpec(2048, 128)));
  ASSERT_TRUE(bool(silu));
  for (const char* constant :
       {"kActivation = kSilu;", "kAlpha = 0x1p+0f;", "kBeta = 0x0p+0f;", "kHasLimit = false;",
        "kGateUp = kSplit;", "kScaleRounding = kCeil;"})
    EXPECT_TRUE(contains(silu->source.text, constant)) << constant;
}

// swiglu's limit as a pair of the input format's values, where it is exactly
// one: 7 in bf16 (0x40e0) and fp16 (0x4700), 0.5 and 2^-20 (an fp16
// subnormal) in fp16; 7.1 in neither, 65520 above fp16's largest, fp32
// input and no limit get 0 (and the fp32 clamps). With a pair the kernel
// clamps packed inputs (min.NaN / max.NaN on bf16x2).
TEST_F(CompilerTest, SwigluLimitPairIsTheLimitInTheInputFormat) {
  auto pairOf = [](InDtype in, std::optional<float> limit) {
    KernelSpec s = makeSpec(3072, 128);
    s.activation = Activation::Swiglu;
    s.inDtype = in;
    s.limit = limit;
    return limitPair16(s);
  };
  EXPECT_EQ(pairOf(InDtype::BF16, 7.0f), 0x40e040e0u);
  EXPECT_EQ(pairOf(InDtype::FP16, 7.0f), 0x47004700u);
  EXPECT_EQ(pairOf(InDtype::FP16, 0.5f), 0x38003800u);
  EXPECT_EQ(pairOf(InDtype::FP16, 0x1p-20f), 0x00100010u);
  EXPECT_EQ(pairOf(InDtype::FP16, 65504.0f), 0x7bff7bffu);
  EXPECT_EQ(pairOf(InDtype::BF16, 7.1f), 0u);
  EXPECT_EQ(pairOf(InDtype::FP16, 7.1f), 0u);
  EXPECT_EQ(pairOf(InDtype::FP16, 65520.0f), 0u);
  EXPECT_EQ(pairOf(InDtype::FP16, 0x1p-25f), 0u);
  EXPECT_EQ(pairOf(InDtype::FP32, 7.0f), 0u);
  EXPECT_EQ(pairOf(InDtype::BF16, std::nullopt), 0u);

  KernelSpec oss = withActivation(makeSpec(3072, 128), Activation::Swiglu); // limit 7
  auto packed = compileChecked(oss);
  ASSERT_TRUE(packed.has_value());
  EXPECT_TRUE(contains(packed->ptx, "min.NaN.bf16x2")) << "the clamps on packed pairs";
  auto id = compiler_->identify(packed->spec);
  ASSERT_TRUE(bool(id));
  EXPECT_TRUE(contains(id->source.text, "kLimitPair = 0x40e040e0u;")) << id->source.text;
  KernelSpec odd = oss;
  odd.limit = 7.1f;
  auto scalar = compileChecked(odd);
  ASSERT_TRUE(scalar.has_value());
  EXPECT_FALSE(contains(scalar->ptx, "min.NaN.bf16x2")) << "7.1 is no bf16: fp32 clamps";
}

TEST_F(CompilerTest, SourceCarriesMinScaleAsAHexFloat) {
  // The default: MIN_SCALE of the output type, and no suffix in the name.
  auto plain = compiler_->identify(resolved(makeSpec(2048, 128)));
  ASSERT_TRUE(bool(plain));
  EXPECT_TRUE(contains(plain->source.text, "kMinScale = 0x1.24924ap-18f;")) << plain->source.text;
  KernelSpec i8 = makeSpec(2048, 128);
  i8.outDtype = OutDtype::INT8;
  auto int8 = compiler_->identify(resolved(i8));
  ASSERT_TRUE(bool(int8));
  EXPECT_TRUE(contains(int8->source.text, "kMinScale = 0x1p-23f;")) << int8->source.text;
  // A spec's own floor, exactly, compiled.
  KernelSpec s = makeSpec(2048, 128);
  s.minScale = 0x1.f6a246p-43f; // fl32(1e-10 / 448)
  auto k = compileChecked(s);
  ASSERT_TRUE(k.has_value());
  auto id = compiler_->identify(k->spec);
  ASSERT_TRUE(bool(id));
  EXPECT_TRUE(contains(id->source.text, "kMinScale = 0x1.f6a246p-43f;")) << id->source.text;
  EXPECT_TRUE(contains(k->loweredName, "_m2a7b5123_tpg")) << k->loweredName;
}

TEST_F(CompilerTest, InterleavedOddGroupCompilesWithScalarLoads) {
  for (Activation a : {Activation::Swiglu, Activation::Gelu}) {
    KernelSpec s = withActivation(makeSpec(17 * 8, 17), a);
    s.gateUp = GateUp::Interleaved;
    const KernelSpec r = resolved(s);
    ASSERT_EQ(r.shape->vecWidth, 1);
    EXPECT_TRUE(compileChecked(r).has_value()) << toString(a);
  }
}

// The L2's 256-byte prefetch goes where a team's step reads half a line of
// each input (64 of 128 bytes) and nowhere else: where it was measured
// slower (a whole line, a sector, FP4's 16-byte steps), the loads keep no hint.
TEST_F(CompilerTest, L2PrefetchHintOnlyWhereATeamsStepReadsHalfALine) {
  struct Case {
    int hidden, group, tpg, vec;
    OutDtype out;
    bool hinted;
  };
  const Case cases[] = {
      {7168, 64, 4, 8, OutDtype::FP8E4M3, true},   // 4 x 16 bytes
      {18432, 96, 4, 8, OutDtype::FP8E4M3, true},  // 4 x 16 bytes, 3 steps
      {7168, 64, 8, 4, OutDtype::FP8E4M3, true},   // 8 x 8 bytes
      {7168, 128, 8, 8, OutDtype::FP8E4M3, false}, // a whole line
      {7168, 64, 8, 8, OutDtype::FP8E4M3, false},  // a whole line
      {7168, 32, 2, 8, OutDtype::FP8E4M3, false},  // a sector
      {7168, 32, 1, 8, OutDtype::FP4E2M1, false},  // FP4 (MXFP4)
  };
  for (const Case& c : cases) {
    const KernelSpec s = shapedSpec(c.hidden, c.group, c.tpg, c.vec, c.out);
    auto k = compileChecked(s);
    ASSERT_TRUE(k.has_value()) << s.label();
    // After the evict_first cache hint where there is one.
    EXPECT_EQ(contains(k->ptx, "ld.global.nc.L1::no_allocate.L2::256B") ||
                  contains(k->ptx, "ld.global.nc.L1::no_allocate.L2::cache_hint.L2::256B"),
              c.hinted)
        << s.label();
    EXPECT_TRUE(contains(k->ptx, "ld.global.nc.L1::no_allocate")) << s.label();
  }
}

// Threads that read two or more vectors an input (the many-token shapes on an
// H200) load with an L2 evict_first policy for silu and swiglu; threads of one
// vector (the few-token shapes), FP4, gelu_tanh and gelu keep the default
// policy.
TEST_F(CompilerTest, EvictFirstLoadsOnlyInThreadsOfTwoOrMoreVectors) {
  struct Case {
    int hidden, group, tpg, vec;
    OutDtype out;
    bool evictFirst;
    Activation activation = Activation::Silu;
  };
  const Case cases[] = {
      {7168, 64, 4, 8, OutDtype::FP8E4M3, true},    // 2 vectors, with the 256-byte fetch
      {7168, 128, 8, 8, OutDtype::FP8E4M3, true},   // 2 vectors
      {18432, 96, 4, 8, OutDtype::FP8E4M3, true},   // 3 vectors
      {7168, 128, 16, 8, OutDtype::FP8E4M3, false}, // 1 vector (few tokens)
      {7168, 64, 16, 4, OutDtype::FP8E4M3, false},  // 1 vector (very few tokens)
      {7168, 32, 1, 8, OutDtype::FP4E2M1, false},   // FP4 (MXFP4), 2 vectors
      {7168, 128, 8, 8, OutDtype::FP8E4M3, true, Activation::Swiglu},
      {7168, 128, 8, 8, OutDtype::FP8E4M3, false, Activation::GeluTanh}, // needs its warps
      {7168, 128, 8, 8, OutDtype::FP8E4M3, false, Activation::Gelu},
  };
  for (const Case& c : cases) {
    const KernelSpec s = shapedSpec(c.hidden, c.group, c.tpg, c.vec, c.out, c.activation);
    auto k = compileChecked(s);
    ASSERT_TRUE(k.has_value()) << s.label();
    EXPECT_EQ(contains(k->ptx, "createpolicy.fractional.L2::evict_first"), c.evictFirst)
        << s.label();
    EXPECT_EQ(contains(k->ptx, "ld.global.nc.L1::no_allocate.L2::cache_hint"), c.evictFirst)
        << s.label();
  }
}

// A team that is a warp reduces its amax with one redux.sync, two halves of
// a warp with two; smaller teams, and a block of half a warp (whose missing
// lanes a whole-warp redux would wait for), shuffle.
TEST_F(CompilerTest, AmaxByReduxOnlyForTeamsOfAWarpOrHalfAWarp) {
  struct Case {
    int group, tpg, vec, gpb;
    size_t reduxes;
  };
  const Case cases[] = {
      {128, 32, 4, 8, 1},  {96, 24, 4, 8, 1},  {64, 16, 4, 16, 2},
      {128, 16, 8, 16, 2}, {128, 8, 8, 16, 0}, {64, 16, 4, 1, 0},
  };
  for (const Case& c : cases) {
    KernelSpec s = makeSpec(c.group * 24, c.group);
    LaunchShape shape{c.tpg, c.vec, c.gpb};
    s.shape = shape;
    auto k = compileChecked(s);
    ASSERT_TRUE(k.has_value()) << s.label();
    size_t count = 0;
    for (size_t at = k->ptx.find("redux.sync.max.u32"); at != std::string::npos;
         at = k->ptx.find("redux.sync.max.u32", at + 1))
      ++count;
    EXPECT_EQ(count, c.reduxes) << s.label();
  }
}

// NVFP4's global scale is read at the kernel's start, before the rows'
// loads, where the launch makes no occupancy promise (the H100's few-token
// teams: 0.2 us of 5.75 at 2048 x 1024, bench/NOTES.md thirtieth session),
// and after the activation under a promise, where the register it would
// hold made ptxas spill; MXFP4 reads none.
TEST_F(CompilerTest, Nvfp4ReadsTheGlobalScaleFirstOnlyWithoutAnOccupancyPromise) {
  struct Case {
    int hidden, group, tpg, gpb, minBlocksPerSm;
    bool early;
  };
  const Case cases[] = {
      {2048, 16, 2, 128, 0, true},  // the few-token teams on an H100
      {2048, 16, 2, 128, 8, false}, // the H200's full-SM few-token split
      {7168, 16, 1, 256, 6, false}, // the two-vector teams
      {7168, 32, 2, 128, 0, false}, // MXFP4: no global scale
  };
  for (const Case& c : cases) {
    KernelSpec s = makeSpec(c.hidden, c.group);
    s.outDtype = OutDtype::FP4E2M1;
    s.ue8m0 = c.group == 32;
    s.scaleLayout = ScaleLayout::Swizzled128x4;
    LaunchShape shape{c.tpg, 8, c.gpb};
    shape.minBlocksPerSm = c.minBlocksPerSm;
    s.shape = shape;
    auto k = compileChecked(s);
    ASSERT_TRUE(k.has_value()) << s.label();
    const size_t scaleRead = k->ptx.find("ld.global.nc.f32");
    const size_t rowsRead = k->ptx.find("ld.global.nc.L1::no_allocate");
    const size_t activation = k->ptx.find("ex2.approx"); // silu's exp
    ASSERT_NE(rowsRead, std::string::npos) << s.label();
    if (c.group == 32) {
      EXPECT_EQ(scaleRead, std::string::npos) << s.label();
      continue;
    }
    ASSERT_NE(scaleRead, std::string::npos) << s.label();
    if (c.early) {
      EXPECT_LT(scaleRead, rowsRead) << s.label();
    } else {
      ASSERT_NE(activation, std::string::npos) << s.label();
      EXPECT_GT(scaleRead, activation) << s.label();
    }
  }
}

// Whether the kernel's PTX takes onePlusExpOfBf16: its constant, log2(e) to
// 15 significant bits, in an instruction (onePlusExp and the exact path take
// log2(e) rounded to fp32, 0f3FB8AA3B), not in the constant's own .global
// definition (the PTX defines every namespace-scope constant of the
// templates).
bool takesOnePlusExpOfBf16(const std::string& ptx) {
  std::istringstream lines(ptx);
  for (std::string line; std::getline(lines, line);)
    if (line.find("0f3FB8AA00") != std::string::npos && line.find(".global") == std::string::npos)
      return true;
  return false;
}

TEST_F(CompilerTest, OnePlusExpOfBf16WhereZIsBf16UnderEveryOccupancyPromise) {
  // 8-bit 7168 G = 128 at 8,8,32 (fp32: four values a 16-byte vector).
  auto eightBit = [](InDtype in, Activation activation) {
    KernelSpec s = makeSpec(7168, 128);
    s.inDtype = in;
    s.activation = activation;
    s.shape = LaunchShape{8, in == InDtype::FP32 ? 4 : 8, 32};
    return s;
  };
  auto swiglu = [&](std::optional<float> alpha, std::optional<float> beta,
                    std::optional<float> limit) {
    KernelSpec s = eightBit(InDtype::BF16, Activation::Swiglu);
    s.alpha = alpha;
    s.beta = beta;
    s.limit = limit;
    return s;
  };
  KernelSpec nvfp4 = makeSpec(7168, 16); // under its promise of 40 registers
  nvfp4.outDtype = OutDtype::FP4E2M1;
  nvfp4.scaleLayout = ScaleLayout::Swizzled128x4;
  nvfp4.shape = LaunchShape{1, 8, 256};
  nvfp4.shape->minBlocksPerSm = 6;
  // Full-SM variants (32 registers), with the form where it spilled 12 bytes
  // before the group's place was taken again after the math.
  KernelSpec capped = makeSpec(3072, 64);
  capped.outDtype = OutDtype::FP8E5M2;
  capped.ue8m0 = true;
  capped.scaleLayout = ScaleLayout::Ue8m0Packed;
  capped.shape = LaunchShape{8, 8, 32};
  capped.shape->minBlocksPerSm = 8;
  KernelSpec cappedRow = makeSpec(2048, 128);
  cappedRow.shape = LaunchShape{16, 8, 16};
  cappedRow.shape->minBlocksPerSm = 8;
  const std::pair<KernelSpec, bool> cases[] = {
      {eightBit(InDtype::BF16, Activation::Silu), true},
      {nvfp4, true},
      {capped, true},
      {cappedRow, true},
      {swiglu({}, 1.0f, {}), true},
      {swiglu({}, {}, 7.0f), true},  // a limit that bf16 holds
      {swiglu({}, {}, 7.1f), false}, // one it does not
      {swiglu(1.702f, 1.0f, 7.0f), false},
      {eightBit(InDtype::BF16, Activation::GeluTanh), false},
      {eightBit(InDtype::FP16, Activation::Silu), false},
      {eightBit(InDtype::FP32, Activation::Silu), false},
  };
  for (const auto& [spec, takesIt] : cases) {
    auto k = compileChecked(spec);
    ASSERT_TRUE(k.has_value()) << spec.label();
    EXPECT_EQ(takesOnePlusExpOfBf16(k->ptx), takesIt) << spec.label();
    EXPECT_FALSE(k->resources.spills()) << spec.label();
  }
}

TEST_F(CompilerTest, EveryLaunchShapeOfASpecTakesTheSameOnePlusExp) {
  // A row's bytes must not depend on T or on a tuned shape: the autotuner
  // leaves out a shape whose bytes differ from the heuristic's (a GPU test
  // caught the 32-register variants taking the other form). Every variant
  // the planner gives a bf16 silu spec, full-SM ones included, on every
  // known device, and a candidate of each team size.
  const Planner planner(Config{}, "test");
  std::set<std::string> seen;
  for (const DeviceProfile& device : DeviceProfile::knownModels())
    for (ScaleLayout layout : {ScaleLayout::Row, ScaleLayout::Ue8m0Packed}) {
      KernelSpec s = makeSpec(2048, 128, device.arch.str());
      s.scaleLayout = layout;
      s.ue8m0 = layout == ScaleLayout::Ue8m0Packed;
      auto plan = planner.plan(s, device);
      ASSERT_TRUE(bool(plan)) << consumeToString(plan.takeError());
      std::vector<KernelSpec> variants = plan->variants;
      for (const LaunchShape& shape : candidateShapes(s, Regime::FewTokens, device))
        if (shape.threadsPerGroup == 32 || shape.threadsPerGroup == 1) {
          KernelSpec v = s;
          v.shape = shape;
          variants.push_back(v);
        }
      for (const KernelSpec& v : variants) {
        if (!seen.insert(v.canonical()).second)
          continue;
        auto k = compileChecked(v);
        ASSERT_TRUE(k.has_value()) << v.label();
        EXPECT_TRUE(takesOnePlusExpOfBf16(k->ptx))
            << v.label() << " on " << device.model << " (" << v.shape->label() << ")";
      }
    }
}

TEST_F(CompilerTest, ExplicitShapesCompile) {
  KernelSpec s = makeSpec(4096, 128);
  const auto shapes = candidateShapes(s);
  ASSERT_GE(shapes.size(), 2u);
  for (size_t i = 0; i < shapes.size() && i < 4; ++i) {
    KernelSpec e = s;
    e.shape = shapes[i];
    EXPECT_TRUE(compileChecked(e).has_value());
  }
}

TEST_F(CompilerTest, UnsupportedArchNamesArchAndListsSupported) {
  // A family- or architecture-specific target newer than NVRTC: its
  // features cannot come from PTX of an older target.
  KernelSpec s = resolved(makeSpec(2048, 128, "sm_999a"));
  ASSERT_FALSE(bool(s.validate())); // the pattern is fine
  auto k = compileSpec(*compiler_, s);
  ASSERT_FALSE(bool(k));
  std::string message;
  EXPECT_EQ(consumeError(k.takeError(), &message), ErrorCode::InvalidSpec);
  EXPECT_TRUE(contains(message, "'arch' = 'sm_999a'"));
  EXPECT_TRUE(contains(message, "supports"));
  EXPECT_TRUE(contains(message, "sm_80"));
  EXPECT_TRUE(contains(message, "sm_90"));
  EXPECT_TRUE(contains(message, compiler_->identity().toString()));
  // Exactly the architectures bqjit accepts (sm_80 on) of those NVRTC
  // supports: an older one NVRTC knows (sm_75) would be listed as supported
  // and then rejected by the spec's own rule.
  std::string accepted;
  for (int a : nvrtcSupportedArchs())
    if (a >= Arch::kMinNumber)
      accepted += (accepted.empty() ? "sm_" : ", sm_") + std::to_string(a);
  EXPECT_TRUE(contains(message, "must be one of " + accepted + " (those from sm_80 on"));
  for (int a : nvrtcSupportedArchs())
    if (a < Arch::kMinNumber)
      EXPECT_FALSE(contains(message, "sm_" + std::to_string(a) + ",")) << a;
}

// A GPU newer than every architecture this NVRTC targets gets PTX of the
// newest virtual architecture, which its driver compiles when it loads it.
TEST_F(CompilerTest, ArchNewerThanNvrtcGetsPtxOfTheNewestVirtualArch) {
  const auto archs = nvrtcSupportedArchs();
  ASSERT_FALSE(archs.empty());
  const int newest = *std::max_element(archs.begin(), archs.end());
  const std::string future = "sm_" + std::to_string((newest / 10 + 1) * 10);
  const KernelSpec s = resolved(makeSpec(2048, 128, future));
  ASSERT_EQ(Compiler::ptxFallback(s), newest);
  EXPECT_EQ(Compiler::ptxFallback(resolved(makeSpec(2048, 128, "sm_90"))), std::nullopt);
  EXPECT_EQ(Compiler::ptxFallback(resolved(makeSpec(2048, 128, future + "a"))), std::nullopt);
  auto k = compileSpec(*compiler_, s);
  ASSERT_TRUE(bool(k)) << consumeToString(k.takeError());
  EXPECT_EQ(k->options.front(), "--gpu-architecture=compute_" + std::to_string(newest));
  EXPECT_EQ(targetLine(k->ptx), ".target sm_" + std::to_string(newest));
  // The image the driver loads is the PTX, NUL-terminated; ptxas runs on the device.
  ASSERT_EQ(k->cubin.size(), k->ptx.size() + 1);
  EXPECT_EQ(std::string(k->cubin.data()), k->ptx);
  EXPECT_EQ(k->resources.registers, -1);
  EXPECT_EQ(k->spec.arch, future);
  // Its own cache key: not the newest real architecture's kernel.
  auto real = compileChecked(makeSpec(2048, 128, "sm_" + std::to_string(newest)));
  ASSERT_TRUE(real.has_value());
  EXPECT_NE(k->key, real->key);
}

TEST_F(CompilerTest, SupportedArchListIsSane) {
  const auto archs = nvrtcSupportedArchs();
  ASSERT_FALSE(archs.empty());
  for (int a : {80, 90, 100})
    EXPECT_NE(std::find(archs.begin(), archs.end(), a), archs.end()) << a;
}

TEST_F(CompilerTest, UnresolvedSpecIsAnInternalError) {
  auto id = compiler_->identify(makeSpec(2048, 128));
  ASSERT_FALSE(bool(id));
  std::string message;
  EXPECT_EQ(consumeError(id.takeError(), &message), ErrorCode::Internal);
  EXPECT_TRUE(contains(message, "launch shape"));
  // A shape without its occupancy is not resolved either.
  KernelSpec s = makeSpec(2048, 128);
  s.shape = LaunchShape{8, 8, 32};
  auto noOccupancy = compiler_->identify(s);
  ASSERT_FALSE(bool(noOccupancy));
  EXPECT_EQ(consumeError(noOccupancy.takeError(), &message), ErrorCode::Internal);
}

TEST_F(CompilerTest, IdentityIsComputedFromTheResolvedSpecAlone) {
  const KernelSpec s = resolved(makeSpec(2048, 64));
  auto a = compiler_->identify(s);
  auto b = compiler_->identify(s);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->key, b->key);
  EXPECT_EQ(a->keyText, b->keyText);
  EXPECT_EQ(a->key, hash128(a->keyText));
  EXPECT_TRUE(contains(a->keyText, templateDigest().xxh3));
  EXPECT_TRUE(contains(a->keyText, TextDigest::of(a->source.text).xxh3));
  KernelSpec other = s;
  other.shape->minBlocksPerSm = 1;
  auto c = compiler_->identify(other);
  ASSERT_TRUE(bool(c));
  EXPECT_NE(c->key, a->key);
  EXPECT_TRUE(contains(c->source.text, "kMinBlocksPerSm = 1;"));
}

// The library embeds every header of templates/ as it is in the tree (a
// header left out of jit/CMakeLists.txt's list would make NVRTC miss an
// include), the kernel's last; every other header is included by one, and
// the key's digest counts every name and text.
TEST(TemplateHeaders, AreTheFilesOfTemplatesEachIncludedAndDigested) {
  std::set<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(BQJIT_TEMPLATE_DIR))
    if (entry.path().extension() == ".cuh")
      files.insert("bqjit/" + entry.path().filename().string());
  std::set<std::string> embedded;
  size_t digested = 0;
  for (const TemplateHeader& h : templateHeaders()) {
    embedded.insert(h.name);
    digested += h.name.size() + h.text.size() + 2;
    std::ifstream in(std::string(BQJIT_TEMPLATE_DIR) + "/" + h.name.substr(6));
    std::stringstream text;
    text << in.rdbuf();
    EXPECT_EQ(text.str(), h.text.str()) << h.name << " differs from the tree's";
    if (h.name == kTemplateHeaderName)
      continue;
    const std::string include = "#include \"" + h.name + "\"";
    EXPECT_TRUE(
        std::any_of(templateHeaders().begin(), templateHeaders().end(),
                    [&](const TemplateHeader& o) { return contains(o.text.str(), include); }))
        << h.name << " is included by no header";
  }
  EXPECT_EQ(embedded, files);
  ASSERT_FALSE(templateHeaders().empty());
  EXPECT_EQ(templateHeaders().back().name, kTemplateHeaderName);
  EXPECT_EQ(templateDigest().bytes, digested);
}

TEST_F(CompilerTest, ConcurrentCompilesOfOneSpecAgree) {
  const KernelSpec s = resolved(makeSpec(2048, 64));
  std::optional<CompiledKernel> a, b;
  std::thread ta([&] {
    auto k = compileSpec(*compiler_, s);
    if (k)
      a = std::move(*k);
    else
      llvm::consumeError(k.takeError());
  });
  std::thread tb([&] {
    auto k = compileSpec(*compiler_, s);
    if (k)
      b = std::move(*k);
    else
      llvm::consumeError(k.takeError());
  });
  ta.join();
  tb.join();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->ptx, b->ptx); // deterministic output
  EXPECT_EQ(a->cubin, b->cubin);
  EXPECT_EQ(a->key, b->key);
}

} // namespace
} // namespace bqjit
