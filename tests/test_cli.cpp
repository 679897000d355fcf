// Tests of the `bqjit` command: the real binary, run with a fresh cache
// directory, plus the parsers behind it (spec fields, manifests).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bqjit/error.hpp"
#include "core/json_input.hpp"
#include "jit/cache_key.hpp"
#include "runtime/cuda_driver.hpp"
#include "test_util.hpp"
#include "tools/manifest.hpp"
#include "tools/spec_args.hpp"

#ifndef BQJIT_CLI_PATH
#error "BQJIT_CLI_PATH must name the bqjit binary"
#endif
#ifndef BQJIT_EXAMPLE_MANIFEST
#error "BQJIT_EXAMPLE_MANIFEST must name examples/manifest.json"
#endif

namespace bqjit::cli {
namespace {

namespace fs = std::filesystem;

using test::contains;

std::string shellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s)
    out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// The version of the top-level VERSION file, the one source of it.
std::string versionFile() {
  std::ifstream in(BQJIT_VERSION_FILE);
  std::string version;
  in >> version;
  return version;
}

std::string readAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

struct RunResult {
  int status = -1;
  std::string out;
  std::string err;
};

/// Runs the bqjit binary with a private cache directory.
class CliTest : public testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bqjit_cli_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    cacheDir_ = dir_ / "cache";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  /// `shell` runs before the command in the same shell (ulimit, say).
  RunResult run(const std::vector<std::string>& args, const std::string& env = "",
                const std::string& shell = "") {
    // Settings of the caller's environment must not leak into the test.
    std::string cmd = shell +
                      "env -u BQJIT_NO_COMPILE -u BQJIT_CACHE_MAX_BYTES -u BQJIT_LOG_LEVEL "
                      "-u BQJIT_CACHE_GROUP -u BQJIT_REMOTE_CACHE -u BQJIT_CACHE_SECRET_FILE "
                      "-u BQJIT_INSECURE_UNSIGNED "
                      "BQJIT_CACHE_DIR=" +
                      shellQuote(cacheDir_.string()) + " " + env + " " + shellQuote(BQJIT_CLI_PATH);
    for (const auto& a : args)
      cmd += " " + shellQuote(a);
    const fs::path out = dir_ / "stdout", err = dir_ / "stderr";
    cmd += " >" + shellQuote(out.string()) + " 2>" + shellQuote(err.string());
    RunResult r;
    const int raw = std::system(cmd.c_str());
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    r.out = readAll(out);
    r.err = readAll(err);
    return r;
  }

  fs::path writeFile(const std::string& name, const std::string& text) {
    const fs::path path = dir_ / name;
    std::ofstream(path) << text;
    return path;
  }

  /// Three specs, one with G=96, and one repeat that must be compiled once.
  fs::path smallManifest() {
    return writeFile("small.json", R"({
      "archs": ["sm_90"],
      "defaults": {"in_dtype": "bf16", "out_dtype": "fp8_e4m3"},
      "specs": [
        {"hidden": 7168, "group_size": 128},
        {"hidden": 7104, "group_size": 96, "comment": "G not a power of two"},
        {"hidden": 2048, "scale_layout": "col_tma", "ue8m0": true},
        {"hidden": 7168}
      ]})");
  }

  fs::path dir_;
  fs::path cacheDir_;
};

TEST_F(CliTest, HelpDocumentsExitStatuses) {
  for (std::vector<std::string> args : {std::vector<std::string>{"--help"},
                                        {"prewarm", "--help"},
                                        {"ptx", "--help"},
                                        {"cache", "ls", "--help"},
                                        {"verify", "--help"},
                                        {"tune", "--help"},
                                        {"version", "--help"}}) {
    RunResult r = run(args);
    EXPECT_EQ(r.status, 0) << args[0];
    EXPECT_TRUE(contains(r.out, "Exit status: 0 success")) << args[0];
    EXPECT_TRUE(contains(r.out, "3 compile failed")) << args[0];
  }
}

TEST_F(CliTest, UsageErrorsExit2WithOneErrorLine) {
  RunResult none = run({});
  EXPECT_EQ(none.status, 2);
  EXPECT_EQ(none.err.rfind("bqjit: error: ", 0), 0u) << none.err;
  RunResult noTokens = run({"verify", "H=7168"});
  EXPECT_EQ(noTokens.status, 2);
  EXPECT_TRUE(contains(noTokens.err, "--tokens"));
}

// CLI11's checks printed the range of a double, 300 digits, and took "abc"
// for a number out of range.
TEST_F(CliTest, NumericOptionErrorsNameTheValueAndTheRule) {
  RunResult gc = run({"cache", "gc", "--max-bytes", "-1"});
  EXPECT_EQ(gc.status, 2);
  EXPECT_EQ(gc.err,
            "bqjit: error: --max-bytes: must be a whole number >= 0, got '-1' (see --help)\n");
  RunResult word = run({"cache", "gc", "--max-bytes", "abc"});
  EXPECT_EQ(word.status, 2);
  EXPECT_TRUE(contains(word.err, "--max-bytes: must be a whole number >= 0, got 'abc'"));
  RunResult huge = run({"cache", "gc", "--max-bytes", "99999999999999999999"});
  EXPECT_EQ(huge.status, 2);
  EXPECT_TRUE(
      contains(huge.err, "--max-bytes: must be a whole number >= 0, got '99999999999999999999'"));

  // The GPU commands' options, checked before any driver is needed.
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--ldx", "-1"}, "--ldx: must be a whole number >= 0, got '-1'"},
      {{"--device", "-2"}, "--device: must be a whole number from 0 to 2147483647, got '-2'"},
      {{"--scale-ub", "0"}, "--scale-ub: must be a number > 0, got '0'"},
      {{"--scale-ub", "nan"}, "--scale-ub: must be a number > 0, got 'nan'"},
  };
  for (const auto& [option, message] : cases) {
    std::vector<std::string> args = {"verify", "H=7168", "--tokens", "64"};
    args.insert(args.end(), option.begin(), option.end());
    RunResult r = run(args);
    EXPECT_EQ(r.status, 2) << option[0];
    EXPECT_TRUE(contains(r.err, "bqjit: error: " + message)) << option[0];
    EXPECT_LT(r.err.size(), 200u) << r.err;
  }
  // Still accepted.
  EXPECT_EQ(run({"cache", "gc", "--max-bytes", "0"}).status, 0);
}

// "A subcommand is required" named neither the word nor the commands.
TEST_F(CliTest, UnknownOrMissingCommandIsNamed) {
  RunResult top = run({"bogus"});
  EXPECT_EQ(top.status, 2);
  EXPECT_EQ(top.err, "bqjit: error: 'bogus' is not a command of 'bqjit' (its commands: prewarm, "
                     "ptx, cache, bundle, verify, tune, version)\n");
  RunResult cache = run({"cache", "foo"});
  EXPECT_EQ(cache.status, 2);
  EXPECT_EQ(cache.err, "bqjit: error: 'foo' is not a command of 'bqjit cache' (its commands: ls, "
                       "stats, verify, clear, gc, dir)\n");
  RunResult withOption = run({"--cache-dir", dir_.string(), "cache", "foo", "bar"});
  EXPECT_EQ(withOption.status, 2);
  EXPECT_TRUE(contains(withOption.err, "'foo' is not a command of 'bqjit cache'"));
  RunResult option = run({"--bogus"});
  EXPECT_EQ(option.status, 2);
  EXPECT_TRUE(contains(option.err, "'bqjit' has no option '--bogus'"));
  RunResult bare = run({"cache"});
  EXPECT_EQ(bare.status, 2);
  EXPECT_TRUE(contains(bare.err, "'bqjit cache' needs a command, one of: ls, stats, verify, "
                                 "clear, gc, dir"));
}

TEST_F(CliTest, UnsupportedArchListsOnlyWhatBqjitAccepts) {
  // An architecture-specific target newer than NVRTC cannot come from PTX.
  RunResult r = run({"ptx", "H=7168", "--arch", "sm_200a", "--no-ptx"});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.err, "bqjit: error: invalid spec field 'arch' = 'sm_200a': must be one "
                              "of sm_80, "));
  EXPECT_TRUE(contains(r.err, "sm_90"));
  EXPECT_FALSE(contains(r.err, "sm_75"));
  // A plain one gets PTX of NVRTC's newest virtual architecture.
  RunResult ptx = run({"ptx", "H=7168", "--arch", "sm_200", "--no-ptx"});
  EXPECT_EQ(ptx.status, 0) << ptx.err;
  EXPECT_TRUE(contains(ptx.out, "PTX, compiled by the driver when it loads")) << ptx.out;
  EXPECT_TRUE(contains(ptx.out, "sm_200")) << ptx.out;
}

TEST_F(CliTest, VersionNamesNvrtcArchsAndCache) {
  RunResult r = run({"version"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "bqjit " + versionFile() + "\n"));
  EXPECT_TRUE(contains(r.out, "cache format " + std::to_string(kCacheFormatVersion) + "\n"));
  EXPECT_TRUE(contains(r.out, "NVRTC "));
  EXPECT_TRUE(contains(r.out, "sm_90"));
  EXPECT_TRUE(contains(r.out, cacheDir_.string()));
}

TEST_F(CliTest, PrewarmCompilesOnceThenFindsEverythingCached) {
  const fs::path manifest = smallManifest();
  RunResult first = run({"prewarm", manifest.string(), "--jobs", "2"});
  ASSERT_EQ(first.status, 0) << first.err;
  EXPECT_TRUE(contains(first.out, "prewarm: 3 compiled, 0 already cached, 0 failed in "));
  EXPECT_TRUE(contains(first.err, "[3/3] compiled "));
  EXPECT_TRUE(contains(first.err, "H=7104 G=96 bf16->fp8_e4m3 row sm_90"));
  EXPECT_TRUE(contains(first.err, "1 duplicate entry skipped"));

  RunResult second = run({"prewarm", manifest.string(), "--jobs", "2"});
  ASSERT_EQ(second.status, 0) << second.err;
  EXPECT_TRUE(contains(second.out, "prewarm: 0 compiled, 3 already cached, 0 failed in "));

  RunResult stats = run({"cache", "stats", "--json"});
  ASSERT_EQ(stats.status, 0) << stats.err;
  // Each spec left its launch shape to bqjit, so prewarm compiled the shape
  // of each regime (many, few, very few and very many tokens): four distinct
  // ones for G = 128 (two specs), three for G = 96, where the very-many-token
  // shape is the many-token one: 11 entries.
  auto j = nlohmann::json::parse(stats.out);
  EXPECT_EQ(j["compiles"], 11);
  EXPECT_EQ(j["entries"], 11);
  EXPECT_EQ(j["hits"], 11);
  EXPECT_GT(j["bytes"].get<int64_t>(), 0);
  RunResult text = run({"cache", "stats"});
  EXPECT_TRUE(contains(text.out, "compiles:    11"));

  RunResult ls = run({"cache", "ls"});
  ASSERT_EQ(ls.status, 0) << ls.err;
  EXPECT_EQ(std::count(ls.out.begin(), ls.out.end(), '\n'), 11);
  EXPECT_TRUE(contains(ls.out, "H=7104 G=96"));
  RunResult lsJson = run({"cache", "ls", "--json"});
  EXPECT_EQ(nlohmann::json::parse(lsJson.out).size(), 11u);

  RunResult clear = run({"cache", "clear"});
  ASSERT_EQ(clear.status, 0) << clear.err;
  EXPECT_TRUE(contains(clear.out, "removed 11 entries"));
  EXPECT_EQ(run({"cache", "ls"}).out, "");
}

// A kernel that did not reach the disk is a failure of its item, with the
// reason, and a non-zero exit: prewarm exists to fill the disk.
TEST_F(CliTest, PrewarmFailsItemsThatDidNotReachTheDisk) {
  // Every file bqjit writes is limited to 4 KiB (SIGXFSZ ignored, so a
  // write past it fails with EFBIG, as on a full disk): no cubin fits.
  RunResult r =
      run({"prewarm", smallManifest().string(), "--jobs", "2"}, "", "trap '' XFSZ; ulimit -f 8; ");
  EXPECT_EQ(r.status, 4) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "prewarm: 0 compiled, 0 already cached, 3 failed")) << r.out;
  EXPECT_TRUE(contains(r.err, "did not store it in the cache")) << r.err;
  EXPECT_TRUE(contains(r.err, "File too large")) << r.err;
  EXPECT_TRUE(contains(r.err, "bqjit: error: prewarm: 3 of 3 kernel(s) failed")) << r.err;
  // And what it says is what a strict server finds: nothing.
  RunResult check = run({"prewarm", smallManifest().string(), "--check"});
  EXPECT_EQ(check.status, 6) << check.err;
}

// `prewarm --check`: whether a (deployed, read-only) cache holds every kernel
// of a manifest, writing nothing.
TEST_F(CliTest, PrewarmCheckSaysWhatIsMissingAndWritesNothing) {
  const fs::path manifest = smallManifest();
  RunResult empty = run({"prewarm", manifest.string(), "--check"});
  EXPECT_EQ(empty.status, 6) << empty.err;
  EXPECT_FALSE(fs::exists(cacheDir_)) << "check created the cache directory";

  ASSERT_EQ(run({"prewarm", manifest.string()}).status, 0);
  auto snapshot = [&] {
    std::vector<std::string> files;
    for (const auto& e : fs::recursive_directory_iterator(cacheDir_))
      files.push_back(e.path().string() + " " +
                      (e.is_regular_file() ? std::to_string(e.file_size()) : "dir"));
    std::sort(files.begin(), files.end());
    return files;
  };
  const auto before = snapshot();
  RunResult ok = run({"prewarm", manifest.string(), "--check"});
  EXPECT_EQ(ok.status, 0) << ok.err;
  EXPECT_TRUE(contains(ok.out, "check: 3 of 3 kernel(s) complete in " + cacheDir_.string()))
      << ok.out;
  EXPECT_TRUE(contains(ok.err, "[2/3] present H=7104 G=96")) << ok.err;
  EXPECT_EQ(snapshot(), before) << "check wrote to the cache";

  // One entry of the G = 96 spec removed, one cubin of another altered.
  RunResult ls = run({"cache", "ls", "--json"});
  auto entries = nlohmann::json::parse(ls.out);
  std::string g96Key, otherKey;
  for (const auto& e : entries) {
    const std::string label = e["label"].get<std::string>();
    if (g96Key.empty() && contains(label, "G=96"))
      g96Key = e["key"].get<std::string>();
    else if (otherKey.empty() && contains(label, "H=2048"))
      otherKey = e["key"].get<std::string>();
  }
  ASSERT_FALSE(g96Key.empty() || otherKey.empty()) << ls.out;
  fs::remove_all(cacheDir_ / "v1" / "entries" / g96Key);
  {
    std::fstream f(cacheDir_ / "v1" / "entries" / otherKey / "kernel.cubin",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
  }
  const auto damaged = snapshot();
  RunResult missing = run({"prewarm", manifest.string(), "--check"});
  EXPECT_EQ(missing.status, 6) << missing.err;
  EXPECT_TRUE(contains(missing.out, "check: 1 of 3 kernel(s) complete")) << missing.out;
  EXPECT_TRUE(contains(missing.err, "(key " + g96Key + "): not in the cache")) << missing.err;
  EXPECT_TRUE(contains(missing.err, "(key " + otherKey + "): ")) << missing.err;
  EXPECT_TRUE(contains(missing.err, "MISSING H=7104 G=96")) << missing.err;
  EXPECT_EQ(snapshot(), damaged) << "check removed or wrote something";

  RunResult json = run({"prewarm", manifest.string(), "--check", "--json"});
  EXPECT_EQ(json.status, 6);
  auto j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["complete"], 1);
  EXPECT_EQ(j["incomplete"], 2);
  EXPECT_EQ(j["items"].size(), 3u);
}

TEST_F(CliTest, PrewarmJsonReportsEveryItem) {
  RunResult r = run({"prewarm", smallManifest().string(), "--json", "--arch", "sm_89,sm_90"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["compiled"], 6);
  EXPECT_EQ(j["failed"], 0);
  ASSERT_EQ(j["items"].size(), 6u);
  EXPECT_EQ(j["items"][0]["status"], "compiled");
  EXPECT_EQ(j["items"][0]["key"].get<std::string>().size(), 32u);
}

// A cache directory and a manifest whose paths are not UTF-8 (Linux allows
// any bytes): every --json report is still JSON, the bytes shown as U+FFFD,
// where a plain dump() threw and the command aborted.
TEST_F(CliTest, JsonReportsOfPathsThatAreNotUtf8AreJson) {
  const std::string odd = (dir_ / "caf\xe9").string();
  ASSERT_TRUE(fs::create_directory(odd));
  const fs::path manifest = odd + "/m.json";
  fs::copy_file(smallManifest(), manifest);
  const std::string shown = (dir_ / "caf\xEF\xBF\xBD").string();
  std::vector<std::vector<std::string>> commands = {
      {"prewarm", manifest.string(), "--json"},
      {"prewarm", manifest.string(), "--check", "--json"},
      {"cache", "ls", "--json"},
      {"cache", "stats", "--json"}};
  size_t listed = 0;
  for (const auto& args : commands) {
    std::vector<std::string> all = args;
    all.insert(all.end(), {"--cache-dir", odd + "/cache"});
    RunResult r = run(all);
    EXPECT_EQ(r.status, 0) << args[0] << " " << args[1] << ": " << r.err;
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(r.out)) << args[0] << " " << args[1] << ": " << r.out;
    if (args[1] == "stats") {
      EXPECT_EQ(j["root"], shown + "/cache/v1");
      EXPECT_EQ(j["entries"], listed);
    }
    if (args[0] == "prewarm") {
      EXPECT_EQ(j["manifest"], shown + "/m.json");
      if (args[2] == "--check")
        EXPECT_EQ(j["cache"], shown + "/cache");
    }
    if (args[1] == "ls")
      listed = j.size();
  }
}

TEST_F(CliTest, PrewarmInStrictModeFailsWithNotInCacheStatus) {
  RunResult r = run({"prewarm", smallManifest().string()}, "BQJIT_NO_COMPILE=1");
  EXPECT_EQ(r.status, 6) << r.err;
  EXPECT_TRUE(contains(r.err, "FAILED H=7168"));
  EXPECT_TRUE(contains(r.out, "prewarm: 0 compiled, 0 already cached, 3 failed"));
  EXPECT_TRUE(contains(r.err, "bqjit: error: prewarm: 3 of 3 kernel(s) failed"));
}

TEST_F(CliTest, CacheVerifyNamesTheCorruptEntry) {
  ASSERT_EQ(run({"prewarm", smallManifest().string()}).status, 0);
  RunResult good = run({"cache", "verify"});
  ASSERT_EQ(good.status, 0) << good.err;
  EXPECT_TRUE(contains(good.out, "11 entries checked, 0 bad"));

  fs::path victim;
  for (const auto& entry : fs::directory_iterator(cacheDir_ / "v1" / "entries"))
    victim = entry.path();
  ASSERT_FALSE(victim.empty());
  const std::string key = victim.filename().string();
  {
    std::fstream cubin(victim / "kernel.cubin", std::ios::in | std::ios::out | std::ios::binary);
    cubin.seekg(64);
    char byte = 0;
    cubin.read(&byte, 1);
    byte = static_cast<char>(byte ^ 0x5A);
    cubin.seekp(64);
    cubin.write(&byte, 1);
  }
  RunResult bad = run({"cache", "verify"});
  EXPECT_EQ(bad.status, 4);
  EXPECT_TRUE(contains(bad.out, "BAD " + key));
  EXPECT_TRUE(contains(bad.err, "bqjit: error: cache verify: 1 of 11 entries are bad: " + key));

  RunResult fix = run({"cache", "verify", "--remove-bad"});
  EXPECT_EQ(fix.status, 4);
  EXPECT_TRUE(contains(fix.out, "removed " + key));
  EXPECT_EQ(run({"cache", "verify"}).status, 0);
}

TEST_F(CliTest, CacheVerifyAndPrewarmRefuseAWorldWritableCache) {
  fs::create_directories(cacheDir_ / "v1" / "entries");
  const std::string entries = (cacheDir_ / "v1" / "entries").string();
  fs::permissions(entries, fs::perms::all);
  RunResult verify = run({"cache", "verify"});
  EXPECT_EQ(verify.status, 4);
  EXPECT_TRUE(contains(verify.out, "UNTRUSTED '" + entries + "' (owner uid "));
  EXPECT_TRUE(contains(verify.out, "mode 0777"));
  EXPECT_TRUE(contains(verify.err, "writable by someone untrusted"));
  RunResult prewarm = run({"prewarm", smallManifest().string()});
  EXPECT_EQ(prewarm.status, 4);
  EXPECT_TRUE(contains(prewarm.err, "refusing to load kernels from the cache"));
  EXPECT_TRUE(contains(prewarm.err, "fix: chmod o-w '" + entries + "'"));
  fs::permissions(entries, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
  EXPECT_EQ(run({"cache", "verify"}).status, 0);
}

TEST_F(CliTest, BundleRoundTripsAndRefusesTamperedTruncatedOrForeignBundles) {
  const fs::path manifest =
      writeFile("one.json", R"({"archs": ["sm_90"], "specs": [{"hidden": 2048}]})");
  const fs::path secret = writeFile("secret", "a fleet secret of more than 16 bytes\n");
  fs::permissions(secret, fs::perms::owner_read | fs::perms::owner_write);
  const std::string withSecret = "BQJIT_CACHE_SECRET_FILE=" + shellQuote(secret.string());
  const std::string bundle = (dir_ / "kernels.bqjit").string();

  RunResult noSecret = run({"bundle", "export", manifest.string(), "-o", bundle});
  EXPECT_EQ(noSecret.status, 4);
  EXPECT_TRUE(contains(noSecret.err, "bundle export needs the fleet secret"));

  RunResult exported = run({"bundle", "export", manifest.string(), "-o", bundle}, withSecret);
  ASSERT_EQ(exported.status, 0) << exported.err;
  EXPECT_TRUE(contains(exported.out, "compiled"));
  EXPECT_TRUE(contains(exported.out, "signed"));
  RunResult listed = run({"bundle", "ls", bundle}, withSecret);
  ASSERT_EQ(listed.status, 0) << listed.err;
  EXPECT_TRUE(contains(listed.out, "H=2048"));
  EXPECT_TRUE(contains(listed.out, ", signed, created"));

  // Into a fresh cache: every kernel there, nothing compiled.
  cacheDir_ = dir_ / "fresh";
  RunResult imported = run({"bundle", "import", bundle}, withSecret);
  ASSERT_EQ(imported.status, 0) << imported.err;
  EXPECT_TRUE(contains(imported.out, "added, 0 already in"));
  RunResult check = run({"prewarm", "--check", manifest.string()});
  EXPECT_EQ(check.status, 0) << check.err;

  // A flipped byte, a truncation, another secret: refused, nothing written.
  const std::string good = readAll(bundle);
  cacheDir_ = dir_ / "untouched";
  auto refused = [&](const std::string& bytes, const std::string& env, const std::string& why) {
    const fs::path bad = writeFile("bad.bqjit", bytes);
    RunResult r = run({"bundle", "import", bad.string()}, env);
    EXPECT_EQ(r.status, 4) << why;
    EXPECT_TRUE(contains(r.err, why));
    EXPECT_FALSE(fs::exists(cacheDir_ / "v1" / "entries")) << "written before validation";
  };
  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x01;
  refused(flipped, withSecret, "HMAC tag does not verify");
  refused(good.substr(0, good.size() - 100), withSecret, "does not verify");
  const fs::path other = writeFile("other", "another secret, also long enough\n");
  fs::permissions(other, fs::perms::owner_read | fs::perms::owner_write);
  refused(good, "BQJIT_CACHE_SECRET_FILE=" + shellQuote(other.string()), "does not verify");
  refused(good, "", "bundle import needs the fleet secret");
  // Unsigned reading (insecure) still checks every checksum.
  refused(flipped, "BQJIT_INSECURE_UNSIGNED=1", "bundle");
}

TEST_F(CliTest, CacheGcEvictsDownToTheLimit) {
  ASSERT_EQ(run({"prewarm", smallManifest().string()}).status, 0);
  RunResult keep = run({"cache", "gc"});
  ASSERT_EQ(keep.status, 0) << keep.err;
  EXPECT_TRUE(contains(keep.out, "cache gc: evicted 0,"));
  RunResult all = run({"cache", "gc", "--max-bytes", "1"});
  ASSERT_EQ(all.status, 0) << all.err;
  EXPECT_TRUE(contains(all.out, "cache gc: evicted 11, 0 bytes remain (limit 1)"));
  RunResult stats = run({"cache", "stats", "--json"});
  EXPECT_EQ(nlohmann::json::parse(stats.out)["evictions"], 11);
}

TEST_F(CliTest, CacheGcDropsEveryEntryThatVerifyCallsBad) {
  ASSERT_EQ(run({"prewarm", smallManifest().string()}).status, 0);
  fs::path victim;
  for (const auto& entry : fs::directory_iterator(cacheDir_ / "v1" / "entries"))
    victim = entry.path();
  ASSERT_FALSE(victim.empty());
  const std::string key = victim.filename().string();
  {
    std::fstream cubin(victim / "kernel.cubin", std::ios::in | std::ios::out | std::ios::binary);
    cubin.seekp(64);
    cubin.put('\x5a');
    cubin.seekp(65);
    cubin.put('\xa5');
  }
  ASSERT_EQ(run({"cache", "verify"}).status, 4);
  RunResult gc = run({"cache", "gc"}, "BQJIT_LOG_LEVEL=info");
  ASSERT_EQ(gc.status, 0) << gc.err;
  EXPECT_TRUE(contains(gc.out, key + "\n"));
  EXPECT_TRUE(contains(gc.out, "cache gc: evicted 1, "));
  EXPECT_TRUE(contains(gc.err, "bqjit: info: evicted key=" + key + " bytes=")) << gc.err;
  EXPECT_TRUE(contains(gc.err, " reason=bad problem=")) << gc.err;
  RunResult verify = run({"cache", "verify"});
  EXPECT_EQ(verify.status, 0) << verify.out << verify.err;
  EXPECT_TRUE(contains(verify.out, "10 entries checked, 0 bad"));
}

TEST_F(CliTest, CacheCommandsRefuseACacheDirectoryThatIsAFile) {
  const fs::path file = writeFile("not-a-dir", "x");
  for (const char* sub : {"ls", "stats", "verify", "gc", "clear"}) {
    RunResult r = run({"cache", sub, "--cache-dir", file.string()});
    EXPECT_EQ(r.status, 4) << sub << ": " << r.out << r.err;
    EXPECT_TRUE(contains(r.err, "bqjit: error: cache directory '" + file.string() + "'")) << sub;
    EXPECT_TRUE(contains(r.err, "is a regular file: it must be a directory")) << sub;
    EXPECT_EQ(r.out, "") << sub;
  }
  EXPECT_EQ(run({"cache", "dir", "--cache-dir", file.string()}).status, 0);
  // A directory that does not exist yet is an empty cache, not an error.
  RunResult empty = run({"cache", "stats", "--cache-dir", (dir_ / "nothing-yet").string()});
  EXPECT_EQ(empty.status, 0) << empty.err;
  EXPECT_TRUE(contains(empty.out, "entries:     0"));
}

TEST_F(CliTest, StatsCountTheJournalAndInfoLogsLoadsAndEvictions) {
  const fs::path manifest = smallManifest();
  ASSERT_EQ(run({"prewarm", manifest.string()}).status, 0);
  RunResult again = run({"prewarm", manifest.string()}, "BQJIT_LOG_LEVEL=info");
  ASSERT_EQ(again.status, 0) << again.err;
  // One info line per kernel read from the disk cache.
  size_t loads = 0;
  for (size_t at = 0;
       (at = again.err.find("bqjit: info: loaded from disk key=", at)) != std::string::npos; ++at)
    ++loads;
  EXPECT_EQ(loads, 11u) << again.err;
  EXPECT_FALSE(contains(again.err, "bqjit: debug: "));
  RunResult debug = run({"prewarm", manifest.string()}, "BQJIT_LOG_LEVEL=debug");
  EXPECT_TRUE(contains(debug.err, "bqjit: debug: cache entry read key=")) << debug.err;
  EXPECT_TRUE(contains(debug.err, "bqjit: debug: cache root=" + (cacheDir_ / "v1").string()));

  RunResult stats = run({"cache", "stats", "--json"});
  ASSERT_EQ(stats.status, 0) << stats.err;
  auto j = nlohmann::json::parse(stats.out);
  const auto journal = j["journal_bytes"].get<int64_t>();
  EXPECT_EQ(journal, static_cast<int64_t>(fs::file_size(cacheDir_ / "v1" / "journal.log")));
  EXPECT_EQ(j["total_bytes"].get<int64_t>(), j["bytes"].get<int64_t>() + journal);
  EXPECT_TRUE(
      contains(run({"cache", "stats"}).out, "journal:     " + std::to_string(journal) + " ("));
}

TEST_F(CliTest, CacheDirFollowsEnvironmentAndOption) {
  EXPECT_EQ(run({"cache", "dir"}).out, cacheDir_.string() + "\n");
  const std::string other = (dir_ / "other").string();
  EXPECT_EQ(run({"cache", "dir", "--cache-dir", other}).out, other + "\n");
  EXPECT_EQ(run({"--cache-dir", other, "cache", "dir"}).out, other + "\n");
}

// docs/contract.md section 8: the NVFP4 kernel for sm_100a converts with PTX's
// e2m1x2 instruction; for plain sm_100 in software.
TEST_F(CliTest, PtxOfNvfp4ShowsTheHardwareConversionOnSm100a) {
  RunResult hw =
      run({"ptx", "H=7168", "G=16", "out=fp4_e2m1", "layout=swizzled_128x4", "--arch", "sm_100a"});
  ASSERT_EQ(hw.status, 0) << hw.err;
  EXPECT_TRUE(contains(hw.out, "cvt.rn.satfinite.e2m1x2.f32"));
  EXPECT_TRUE(contains(hw.out, "fp4_e2m1 swizzled_128x4"));
  RunResult soft =
      run({"ptx", "H=7168", "G=16", "out=fp4_e2m1", "layout=bytes", "--arch", "sm_100"});
  ASSERT_EQ(soft.status, 0) << soft.err;
  EXPECT_FALSE(contains(soft.out, "e2m1x2"));
  RunResult bad = run({"ptx", "H=7168", "G=64", "out=fp4_e2m1", "--arch", "sm_100a"});
  EXPECT_NE(bad.status, 0);
  EXPECT_TRUE(contains(bad.err, "fp4_e2m1 needs G = 16 (NVFP4) or G = 32 with ue8m0 (MXFP4)"))
      << bad.err;
}

TEST_F(CliTest, PtxPrintsPtxAndResourceReport) {
  RunResult r = run({"ptx", "hidden=7104", "G=96", "--arch", "sm_90"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(contains(r.out, ".entry"));
  EXPECT_TRUE(contains(r.out, "registers"));
  EXPECT_TRUE(contains(r.out, "spill stores"));
  EXPECT_TRUE(contains(r.out, "source:        compiled"));

  RunResult j = run({"ptx", "hidden=7104", "G=96", "--arch", "sm_90", "--json"});
  ASSERT_EQ(j.status, 0) << j.err;
  auto report = nlohmann::json::parse(j.out);
  EXPECT_EQ(report["source"], "disk");
  EXPECT_EQ(report["spec"]["group_size"], 96);
  EXPECT_GT(report["resources"]["registers"].get<int>(), 0);
  EXPECT_TRUE(contains(report["ptx"].get<std::string>(), ".entry"));
  EXPECT_EQ(report["key"].get<std::string>().size(), 32u);

  RunResult noPtx = run({"ptx", "H=7104", "G=96", "--json", "--no-ptx"});
  ASSERT_EQ(noPtx.status, 0) << noPtx.err;
  EXPECT_FALSE(nlohmann::json::parse(noPtx.out).contains("ptx"));
}

// `--model` plans for a GPU model of the offline table and `--tokens`
// reports the variant a launch of T rows takes; every launch's variant is
// listed by T, the H200's full-SM split of the few-token regime among them.
TEST_F(CliTest, PtxReportsTheVariantOfALaunchOnANamedDevice) {
  RunResult r = run({"ptx", "H=3072", "--model", "H200", "--tokens", "700", "--no-ptx"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "tpg=16 vec=8 gpb=16 mbs=8\n")) << r.out; // the report's kernel
  EXPECT_TRUE(contains(r.out, "// launches on H200, by T (H = 3072):")) << r.out;
  EXPECT_TRUE(contains(r.out, "//   T 1..341: very-few-token,")) << r.out;
  EXPECT_TRUE(contains(r.out, "//   T 342..633: few-token, tpg=16 vec=8 gpb=16 mbs=0\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "//   T 634..1365: few-token-full-sm, tpg=16 vec=8 gpb=16 mbs=8 "
                              "(this report)"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "//   T 1366..10922: many-token, tpg=8 vec=8 gpb=16")) << r.out;
  EXPECT_TRUE(contains(r.out, "//   T 10923+: very-many-token,")) << r.out;

  // The arch's default device (no --model): no split, the many-token report.
  RunResult plain = run({"ptx", "H=3072", "--no-ptx"});
  ASSERT_EQ(plain.status, 0) << plain.err;
  EXPECT_FALSE(contains(plain.out, "few-token-full-sm")) << plain.out;
  EXPECT_TRUE(contains(plain.out, "// launches, by T (H = 3072):")) << plain.out;

  // Where the promise spills (H / G a power of two), the report says what the
  // service does instead.
  RunResult spills = run({"ptx", "H=4096", "--model", "H200", "--tokens", "500", "--no-ptx"});
  ASSERT_EQ(spills.status, 0) << spills.err;
  EXPECT_TRUE(contains(spills.out, "spills under its full-SM promise")) << spills.out;

  RunResult j = run({"ptx", "H=3072", "--model", "H200", "--tokens", "400", "--json", "--no-ptx"});
  ASSERT_EQ(j.status, 0) << j.err;
  auto report = nlohmann::json::parse(j.out);
  EXPECT_EQ(report["device"], "H200");
  EXPECT_EQ(report["spec"]["launch"]["min_blocks_per_sm"], 0);
  ASSERT_EQ(report["launches"].size(), 5u) << j.out;
  EXPECT_EQ(report["launches"][2]["slot"], "few-token-full-sm");
  EXPECT_EQ(report["launches"][2]["tokens_from"], 634);
  EXPECT_EQ(report["launches"][2]["tokens_to"], 1365);
  EXPECT_EQ(report["launches"][2]["launch"]["min_blocks_per_sm"], 8);
  EXPECT_TRUE(report["launches"][4]["tokens_to"].is_null());

  RunResult unknown = run({"ptx", "H=3072", "--model", "H300", "--no-ptx"});
  EXPECT_EQ(unknown.status, 2);
  EXPECT_TRUE(contains(unknown.err, "--model 'H300': not a known GPU model; known: "))
      << unknown.err;
  EXPECT_TRUE(contains(unknown.err, "\"H200\"")) << unknown.err;
  RunResult zero = run({"ptx", "H=3072", "--tokens", "0", "--no-ptx"});
  EXPECT_EQ(zero.status, 2);
  EXPECT_TRUE(contains(zero.err, "--tokens")) << zero.err;
}

TEST_F(CliTest, BadSpecFieldsExit2AndNameTheField) {
  RunResult unknown = run({"ptx", "H=7168", "colour=blue", "--arch", "sm_90"});
  EXPECT_EQ(unknown.status, 2);
  EXPECT_TRUE(contains(unknown.err, "bqjit: error: invalid spec field 'colour'"));
  EXPECT_TRUE(contains(unknown.err, "unknown field"));

  RunResult group = run({"ptx", "H=7168", "G=100", "--arch", "sm_90"});
  EXPECT_EQ(group.status, 2);
  EXPECT_TRUE(contains(group.err, "group_size"));
  EXPECT_TRUE(contains(group.err, "must divide hidden (7168)"));

  RunResult bare = run({"ptx", "H=7168", "bf16"});
  EXPECT_EQ(bare.status, 2);
  EXPECT_TRUE(contains(bare.err, "'bf16' is not of the form key=value"));

  RunResult arch = run({"ptx", "H=7168", "--arch", "sm_70"});
  EXPECT_EQ(arch.status, 2);
  EXPECT_TRUE(contains(arch.err, "'arch' = 'sm_70'"));
}

TEST_F(CliTest, BadManifestsExit2AndNameThePlace) {
  const fs::path notJson = writeFile("not.json", "{\"specs\": [ oops");
  RunResult r1 = run({"prewarm", notJson.string()});
  EXPECT_EQ(r1.status, 2);
  EXPECT_TRUE(contains(r1.err, "manifest '" + notJson.string() + "': not valid JSON"));

  const fs::path badSpec = writeFile(
      "bad_spec.json",
      R"({"archs": ["sm_90"], "specs": [{"hidden": 7168}, {"hidden": 7168, "group_size": 100}]})");
  RunResult r2 = run({"prewarm", badSpec.string()});
  EXPECT_EQ(r2.status, 2);
  EXPECT_TRUE(contains(r2.err, "manifest '" + badSpec.string() + "': specs[1]: "));
  EXPECT_TRUE(contains(r2.err, "'group_size' = 100"));

  const fs::path unknownTop =
      writeFile("top.json", R"({"archs": ["sm_90"], "spec": [{"hidden": 7168}]})");
  RunResult r3 = run({"prewarm", unknownTop.string()});
  EXPECT_EQ(r3.status, 2);
  EXPECT_TRUE(contains(r3.err, "unknown top-level field \"spec\""));

  const fs::path noSpecs = writeFile("none.json", R"({"archs": ["sm_90"]})");
  RunResult r4 = run({"prewarm", noSpecs.string()});
  EXPECT_EQ(r4.status, 2);
  EXPECT_TRUE(contains(r4.err, "missing \"specs\""));

  RunResult r5 = run({"prewarm", (dir_ / "absent.json").string()});
  EXPECT_EQ(r5.status, 2);
  EXPECT_TRUE(contains(r5.err, "absent.json': cannot read it"));
}

// A manifest nested 100000 levels deep (200 KB) used to overflow the stack
// while its error message was built: `bqjit prewarm` died with SIGSEGV (139).
TEST_F(CliTest, DeepManifestIsAnErrorNotACrash) {
  const fs::path deep =
      writeFile("deep.json", R"({"archs": ["sm_90"], "specs": [{"hidden": )" +
                                 std::string(100000, '[') + std::string(100000, ']') + "}]}");
  RunResult r = run({"prewarm", deep.string(), "--arch", "sm_90"});
  EXPECT_EQ(r.status, 2) << r.err.substr(0, 2000);
  EXPECT_TRUE(
      contains(r.err, "bqjit: error: manifest '" + deep.string() +
                          "': arrays and objects nested more than 64 levels deep at byte "));
  EXPECT_TRUE(contains(r.err, "(in specs[0].hidden[0][0]"));
  EXPECT_TRUE(contains(r.err, "the limit is 64 levels"));
  EXPECT_LT(r.err.size(), 1000u);
}

// Thousands of specs (here 5000, about 250 KB, four times the limit of one
// spec) are an ordinary manifest: every one is read, the error is in the last.
TEST_F(CliTest, ManifestOfThousandsOfSpecsIsReadWhole) {
  std::string text = R"({"archs": ["sm_90"], "specs": [)";
  for (int i = 0; i < 5000; ++i)
    text += R"({"hidden": )" + std::to_string(128 * (1 + i % 512)) + R"(, "in_dtype": ")" +
            (i < 2500 ? "bf16" : "fp16") + "\"},\n";
  text += R"({"hidden": 7168, "group_size": 100}]})";
  const fs::path big = writeFile("big.json", text);
  RunResult r = run({"prewarm", big.string()});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "manifest '" + big.string() + "': specs[5000]: "));
  EXPECT_TRUE(contains(r.err, "'group_size' = 100"));
}

TEST_F(CliTest, OversizedManifestIsRefusedBeforeParsing) {
  // 16 MiB + 1 byte of valid JSON.
  const size_t limit = 16u * 1024 * 1024;
  const std::string head = R"({"archs": ["sm_90"], "specs": [{"hidden": 7168}], "comment": ")";
  const fs::path huge =
      writeFile("huge.json", head + std::string(limit - head.size() - 1, 'x') + "\"}");
  ASSERT_EQ(fs::file_size(huge), limit + 1);
  RunResult r = run({"prewarm", huge.string()});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.err, "manifest '" + huge.string() + "': " + std::to_string(limit + 1) +
                                  " bytes is over the limit of 16777216 bytes (16 MiB)"));
}

// Used to be "not valid JSON: [json.exception.parse_error.101] ... unexpected end of input".
TEST_F(CliTest, DirectoryGivenAsManifestIsNamed) {
  RunResult r = run({"prewarm", dir_.string(), "--arch", "sm_90"});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.err, "bqjit: error: manifest '" + dir_.string() +
                                  "' is a directory, not a manifest file"));
  EXPECT_FALSE(contains(r.err, "end of input"));
  EXPECT_FALSE(contains(r.err, "json.exception"));
}

// Used to exit 0 with "0 kernel(s)".
TEST_F(CliTest, EmptyManifestIsAUsageError) {
  const fs::path empty = writeFile("empty.json", R"({"specs": []})");
  RunResult r = run({"prewarm", empty.string(), "--arch", "sm_90"});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.err, "bqjit: error: manifest '" + empty.string() +
                                  "': \"specs\" is empty; a manifest lists at least one spec"));
  EXPECT_FALSE(contains(r.err, "0 kernel(s)"));
}

// Used to be accepted, the last "hidden" winning: one kernel of H=2048 compiled.
TEST_F(CliTest, RepeatedKeyInManifestIsRefused) {
  const fs::path twice = writeFile(
      "twice.json", R"({"archs": ["sm_90"], "specs": [{"hidden": 7168, "hidden": 2048}]})");
  RunResult r = run({"prewarm", twice.string()});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(contains(r.err, "bqjit: error: manifest '" + twice.string() +
                                  "': the key \"hidden\" appears twice in specs[0]; a key may "
                                  "appear only once in an object"));
  EXPECT_FALSE(fs::exists(cacheDir_ / "v1" / "entries"));
}

TEST_F(CliTest, GpuCommandsWithoutDriverExit5) {
  auto driver = CudaDriver::load();
  if (driver)
    GTEST_SKIP() << "a CUDA driver is present";
  llvm::consumeError(driver.takeError());
  for (const char* command : {"verify", "tune"}) {
    RunResult r = run({command, "H=7168", "G=128", "--tokens", "64"});
    EXPECT_EQ(r.status, 5) << command;
    EXPECT_TRUE(contains(r.err, "bqjit: error: ")) << command;
    EXPECT_TRUE(contains(r.err, "libcuda")) << command;
  }
}

TEST_F(CliTest, ExampleManifestPrewarmsCompletely) {
  RunResult first = run({"prewarm", BQJIT_EXAMPLE_MANIFEST, "--arch", "sm_90", "--json"});
  ASSERT_EQ(first.status, 0) << first.err;
  auto j = nlohmann::json::parse(first.out);
  const size_t items = j["items"].size();
  EXPECT_GE(items, 15u);
  EXPECT_EQ(j["failed"], 0);
  // Every item compiled, or found the kernel an earlier item of the run
  // compiled: the H200's and the H100 class's FP4 kernels are the same.
  std::set<std::string> compiledKeys;
  size_t cached = 0;
  for (const auto& item : j["items"]) {
    if (item["status"] == "compiled")
      compiledKeys.insert(item["key"].get<std::string>());
    else if (item["status"] == "cached")
      ++cached;
    else
      ADD_FAILURE() << item.dump();
  }
  for (const auto& item : j["items"])
    if (item["status"] == "cached")
      EXPECT_EQ(compiledKeys.count(item["key"].get<std::string>()), 1u) << item.dump();
  EXPECT_EQ(j["compiled"], items - cached);
  EXPECT_EQ(j["cached"], cached);

  RunResult second = run({"prewarm", BQJIT_EXAMPLE_MANIFEST, "--arch", "sm_90"});
  ASSERT_EQ(second.status, 0) << second.err;
  EXPECT_TRUE(contains(second.out, "prewarm: 0 compiled, " + std::to_string(items) +
                                       " already cached, 0 failed"));
}

// Issue 18: CI compiles FP4 specs (NVFP4, MXFP4, MXFP8 in swizzled_128x4) for
// sm_90, sm_100, sm_100a and sm_120 through the prewarm command.
TEST_F(CliTest, PrewarmCompilesFp4ForHopperAndBlackwell) {
  const fs::path manifest = writeFile("fp4.json", R"({
    "archs": ["sm_90"],
    "defaults": {"out_dtype": "fp4_e2m1", "scale_layout": "swizzled_128x4"},
    "specs": [
      {"hidden": 7168, "group_size": 16},
      {"hidden": 2064, "group_size": 16, "scale_layout": "bytes", "masked": true},
      {"hidden": 2880, "group_size": 32, "ue8m0": true},
      {"hidden": 2880, "group_size": 32, "ue8m0": true, "scale_rounding": "floor", "in_dtype": "fp32"},
      {"hidden": 2880, "group_size": 32, "ue8m0": true, "out_dtype": "fp8_e4m3", "scale_rounding": "floor"}
    ]})");
  RunResult r =
      run({"prewarm", manifest.string(), "--arch", "sm_90,sm_100,sm_100a,sm_120", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["items"].size(), 5u * 4u);
  EXPECT_EQ(j["compiled"], 5 * 4);
  EXPECT_EQ(j["failed"], 0);
}

// ---- the parsers, called directly -------------------------------------------------

TEST(SpecArgs, AliasesArchOverrideAndErrors) {
  auto a = parseSpecArgs({"H=7168", "G=128", "in=fp16", "layout=col", "tpg=8", "vec=8", "gpb=16"},
                         "sm_100");
  ASSERT_TRUE(static_cast<bool>(a)) << consumeToString(a.takeError());
  EXPECT_EQ(a->spec.hidden, 7168);
  EXPECT_EQ(a->spec.inDtype, InDtype::FP16);
  EXPECT_EQ(a->spec.scaleLayout, ScaleLayout::Col);
  EXPECT_EQ(a->spec.arch, "sm_100");
  EXPECT_TRUE(a->archGiven);
  EXPECT_TRUE(a->shapeGiven);

  auto b = parseSpecArgs({"hidden=4096", "arch=sm_89"}, "sm_90");
  ASSERT_TRUE(static_cast<bool>(b));
  EXPECT_EQ(b->spec.arch, "sm_90");
  auto c = parseSpecArgs({"hidden=4096"});
  ASSERT_TRUE(static_cast<bool>(c));
  EXPECT_FALSE(c->archGiven);
  EXPECT_FALSE(c->shapeGiven);

  auto twice = parseSpecArgs({"H=4096", "hidden=2048"});
  ASSERT_FALSE(static_cast<bool>(twice));
  std::string message;
  EXPECT_EQ(consumeError(twice.takeError(), &message), ErrorCode::InvalidArgument);
  EXPECT_TRUE(contains(message, "'hidden=2048' sets hidden again"));
  auto empty = parseSpecArgs({"=5"});
  EXPECT_EQ(consumeError(empty.takeError(), &message), ErrorCode::InvalidArgument);
  auto bad = parseSpecArgs({"H=4096", "ue8m0=maybe"});
  EXPECT_EQ(consumeError(bad.takeError(), &message), ErrorCode::InvalidSpec);
  EXPECT_TRUE(contains(message, "ue8m0"));
}

TEST(Manifest, ExpandsArchsMergesDefaultsAndDropsRepeats) {
  auto m = parseManifest(R"({
    "archs": ["sm_90", "sm_100"],
    "defaults": {"group_size": 64, "comment": "ignored"},
    "specs": [{"hidden": 4096}, {"hidden": 4096, "group_size": 64},
              {"hidden": 1024, "arch": "sm_89", "comment": "pinned"}]})",
                         "m.json");
  ASSERT_TRUE(static_cast<bool>(m)) << consumeToString(m.takeError());
  ASSERT_EQ(m->items.size(), 3u);
  EXPECT_EQ(m->duplicates, 2);
  EXPECT_EQ(m->items[0].spec.arch, "sm_90");
  EXPECT_EQ(m->items[0].spec.groupSize, 64);
  EXPECT_EQ(m->items[1].spec.arch, "sm_100");
  EXPECT_EQ(m->items[2].spec.arch, "sm_89");

  auto over = parseManifest(R"({"archs": ["sm_90"], "specs": [{"hidden": 4096}]})", "m.json",
                            {"sm_80", "sm_86"});
  ASSERT_TRUE(static_cast<bool>(over));
  ASSERT_EQ(over->items.size(), 2u);
  EXPECT_EQ(over->items[1].spec.arch, "sm_86");
}

// "devices" adds each GPU model's launch shapes, on its own architecture; a
// pinned spec takes the models of its architecture only; an unknown model is
// an error naming the place and the known models.
TEST(Manifest, DevicesPlanEachModelOnItsArchitecture) {
  auto m = parseManifest(R"({
    "archs": ["sm_90"], "devices": ["H100 80GB HBM3", "NVIDIA H200", "A100-SXM4-80GB"],
    "specs": [{"hidden": 4096}, {"hidden": 1024, "arch": "sm_90"}]})",
                         "m.json");
  ASSERT_TRUE(static_cast<bool>(m)) << consumeToString(m.takeError());
  ASSERT_EQ(m->items.size(), 7u); // 1 + 3 for the first spec, 1 + 2 (sm_90 models) for the second
  EXPECT_EQ(m->items[0].device.model, "");
  EXPECT_EQ(m->items[0].device.slug(), "arch-sm_90");
  EXPECT_EQ(m->items[1].device.model, "H100 80GB HBM3");
  EXPECT_EQ(m->items[2].device.model, "H200");
  EXPECT_EQ(m->items[2].spec.arch, "sm_90");
  EXPECT_EQ(m->items[2].label(), m->items[2].spec.label() + " for H200");
  EXPECT_EQ(m->items[3].device.model, "A100-SXM4-80GB");
  EXPECT_EQ(m->items[3].spec.arch, "sm_80");
  EXPECT_EQ(m->items[4].device.model, "");
  EXPECT_EQ(m->items[6].device.model, "H200");
  EXPECT_EQ(m->items[6].spec.hidden, 1024);

  // Without "archs", the devices alone are the targets.
  auto only = parseManifest(R"({"devices": ["H200"], "specs": [{"hidden": 4096}]})", "m.json");
  ASSERT_TRUE(static_cast<bool>(only)) << consumeToString(only.takeError());
  ASSERT_EQ(only->items.size(), 1u);
  EXPECT_EQ(only->items[0].spec.arch, "sm_90");

  auto unknown =
      parseManifest(R"({"devices": ["H200", "Z9000"], "specs": [{"hidden": 4096}]})", "m.json");
  ASSERT_FALSE(static_cast<bool>(unknown));
  const std::string message = consumeToString(unknown.takeError());
  EXPECT_TRUE(contains(message, "devices[1]")) << message;
  EXPECT_TRUE(contains(message, "Z9000")) << message;
  EXPECT_TRUE(contains(message, "\"H200\"")) << message;
  auto notArray = parseManifest(R"({"devices": "H200", "specs": [{"hidden": 4096}]})", "m.json");
  ASSERT_FALSE(static_cast<bool>(notArray));
  EXPECT_TRUE(contains(consumeToString(notArray.takeError()), "\"devices\" must be"));
}

TEST(Manifest, ErrorsNameThePathAndPlace) {
  auto expectError = [](const std::string& text, const std::string& needle,
                        std::vector<std::string> archs = {}) {
    auto m = parseManifest(text, "x.json", archs);
    ASSERT_FALSE(static_cast<bool>(m)) << text;
    std::string message;
    consumeError(m.takeError(), &message);
    EXPECT_TRUE(contains(message, "manifest 'x.json': "));
    EXPECT_TRUE(contains(message, needle));
  };
  expectError("[1, 2]", "must be a JSON object");
  expectError(R"({"specs": {}})", "\"specs\" must be an array");
  expectError(R"({"archs": [], "specs": []})", "\"archs\" must be a non-empty array");
  expectError(R"({"archs": [90], "specs": []})", "archs[0] must be a string");
  expectError(R"({"archs": ["sm_90"], "specs": [7168]})", "specs[0] must be a spec object");
  expectError(R"({"archs": ["sm_90"], "defaults": {"arch": "sm_90"}, "specs": []})",
              "\"defaults\" may not set \"arch\"");
  expectError(
      R"({"archs": ["sm_90"], "defaults": {"in_dtype": "int4"}, "specs": [{"hidden": 64}]})",
      "specs[0] (with \"defaults\" applied): invalid spec field 'in_dtype'");
  expectError(R"({"specs": [{"hidden": 64}]})", "specs[0] names no \"arch\"");
  expectError(R"({"specs": [{"hidden": 64}]})", "archs[0]", {"gpu9000"});
  // Found by fuzz_manifest: a number too large for a double used to abort.
  expectError(R"({"archs": ["sm_90"], "specs": [{"hidden": 1e999}]})", "manifest 'x.json'");
  expectError(R"({"archs": ["sm_90"], "specs": [{"hidden": 1e999}]})",
              "not valid JSON at byte 43: the number 1e999 is too large");
  expectError("{\"specs\": [\n oops]}", "not valid JSON at line 2, column 2 (byte 14): ");
  expectError(R"({"archs": ["sm_90"], "specs": []})", "\"specs\" is empty");
  expectError(R"({"archs": ["sm_90"], "archs": ["sm_100"], "specs": [{"hidden": 64}]})",
              "the key \"archs\" appears twice in the top-level object");
  expectError(R"({"archs": ["sm_90"], "defaults": {"hidden": 64, "hidden": 128}, "specs": [{}]})",
              "the key \"hidden\" appears twice in defaults");
  // The object is level 1, the 64th bracket (byte 74) level 65.
  expectError("{\"specs\": " + std::string(64, '[') + std::string(64, ']') + "}",
              "nested more than 64 levels deep at byte 74 (in specs[0][0]");
  // A value in a message is cut to a few hundred bytes.
  expectError(R"({"archs": ["sm_90"], "specs": [")" + std::string(100000, 'x') + "\"]}",
              "specs[0] must be a spec object, got \"xxxx");
  expectError(R"({"archs": ["sm_90"], "specs": [{"hidden": 64}], ")" + std::string(5000, 'k') +
                  "\": 1}",
              "... (5002 bytes) (known: archs, devices, defaults, specs, comment)");
}

TEST(Manifest, MessagesAreShort) {
  auto m = parseManifest(R"({"archs": ["sm_90"], "specs": [")" + std::string(100000, 'x') + "\"]}",
                         "x.json");
  ASSERT_FALSE(static_cast<bool>(m));
  std::string message;
  consumeError(m.takeError(), &message);
  EXPECT_LT(message.size(), 400u) << message.substr(0, 400);
}

TEST(Manifest, ThousandsOfSpecsAreRead) {
  std::string text = R"({"archs": ["sm_90", "sm_100"], "specs": [)";
  for (int i = 0; i < 5000; ++i)
    text += std::string(i ? ", " : "") + R"({"hidden": )" + std::to_string(16 * (1 + i % 4096)) +
            R"(, "group_size": 16, "in_dtype": ")" + (i < 4096 ? "bf16" : "fp16") + "\"}";
  text += "]}";
  ASSERT_GT(text.size(), 4 * kSpecJsonLimits.maxBytes);
  auto m = parseManifest(text, "big.json");
  ASSERT_TRUE(static_cast<bool>(m)) << consumeToString(m.takeError());
  EXPECT_EQ(m->items.size(), 10000u);
  EXPECT_EQ(m->duplicates, 0);
  EXPECT_EQ(m->items.back().spec.hidden, 16 * (1 + 4999 % 4096));
  EXPECT_EQ(m->items.back().spec.inDtype, InDtype::FP16);
  EXPECT_EQ(m->items.back().spec.arch, "sm_100");
}

} // namespace
} // namespace bqjit::cli
