// WarmTable: answers by (spec, device), valid for one generation; many
// threads reading and writing at once (run under TSan in CI).
#include "runtime/warm_table.hpp"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace bqjit {
namespace {

KernelSpec specOf(int i) {
  KernelSpec s;
  s.hidden = 128 * (i + 1);
  s.groupSize = 128;
  return s;
}

TEST(WarmTable, AnswersBySpecAndDeviceForOneGeneration) {
  WarmTable<int> table;
  EXPECT_FALSE(table.find(specOf(0), 0, 0));
  table.insert(specOf(0), 0, 5, 42);
  EXPECT_EQ(table.find(specOf(0), 0, 5), 42);
  EXPECT_FALSE(table.find(specOf(0), 1, 5)); // another device
  EXPECT_FALSE(table.find(specOf(1), 0, 5)); // another spec
  KernelSpec shaped = specOf(0);
  shaped.shape = LaunchShape{8, 8, 32};
  EXPECT_FALSE(table.find(shaped, 0, 5)); // every field counts
  KernelSpec otherArch = specOf(0);
  otherArch.arch = "sm_90a";
  EXPECT_FALSE(table.find(otherArch, 0, 5));
  // A newer generation (a tuning record stored, an invalidation) misses.
  EXPECT_FALSE(table.find(specOf(0), 0, 6));
  table.insert(specOf(0), 0, 6, 43);
  EXPECT_EQ(table.find(specOf(0), 0, 6), 43);
  // An answer made before a newer one does not replace it.
  table.insert(specOf(0), 0, 5, 41);
  EXPECT_EQ(table.find(specOf(0), 0, 6), 43);
  EXPECT_EQ(table.size(), 1u);
  table.clear();
  EXPECT_FALSE(table.find(specOf(0), 0, 6));
  EXPECT_EQ(table.size(), 0u);
}

TEST(WarmTable, ManyThreadsHitMissAndInvalidate) {
  WarmTable<std::shared_ptr<const std::string>> table;
  constexpr int kThreads = 16, kSpecs = 64, kRounds = 4000;
  std::atomic<uint64_t> generation{0};
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        const int i = (t * 7 + r) % kSpecs;
        const uint64_t g = generation.load();
        auto hit = table.find(specOf(i), i % 2, g);
        if (hit) {
          if (**hit != std::to_string(i))
            ++wrong;
        } else {
          table.insert(specOf(i), i % 2, g, std::make_shared<const std::string>(std::to_string(i)));
        }
        if (t == 0 && r % 500 == 0) {
          generation.fetch_add(1);
          table.clear();
        }
      }
    });
  for (auto& th : threads)
    th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_LE(table.size(), static_cast<size_t>(kSpecs));
  for (int i = 0; i < kSpecs; ++i)
    if (auto v = table.find(specOf(i), i % 2, generation.load()))
      EXPECT_EQ(**v, std::to_string(i));
}

} // namespace
} // namespace bqjit
