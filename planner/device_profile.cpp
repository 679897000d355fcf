#include "planner/device_profile.hpp"

#include <cctype>

namespace bqjit {

namespace {

/// The H100 SXM5's peak bandwidth per SM (2 x 2619 MHz x 5120 bits / 132).
constexpr double kReferenceBandwidthPerSm = 2.0 * 2619000e3 * (5120 / 8) / 132;

DeviceProfile entry(const char* model, int arch, int sms, int64_t clockKHz, int bus, int64_t l2MiB,
                    int threads) {
  DeviceProfile p;
  p.model = model;
  p.arch = Arch{arch, 0};
  p.smCount = sms;
  p.memoryClockKHz = clockKHz;
  p.busWidthBits = bus;
  p.l2Bytes = l2MiB << 20;
  p.registersPerSm = 65536;
  p.maxThreadsPerSm = threads;
  return p;
}

} // namespace

double DeviceProfile::peakBandwidth() const {
  return 2.0 * static_cast<double>(memoryClockKHz) * 1e3 * (busWidthBits / 8.0);
}

double DeviceProfile::inFlightScale() const {
  if (smCount <= 0 || memoryClockKHz <= 0 || busWidthBits <= 0)
    return 1.0;
  return peakBandwidth() / smCount / kReferenceBandwidthPerSm;
}

std::string DeviceProfile::slug() const {
  if (model.empty())
    return "arch-" + arch.str();
  std::string out;
  for (char c : model)
    out += std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' ? c : '_';
  return out;
}

const std::vector<DeviceProfile>& DeviceProfile::knownModels() {
  // The driver's values. The H200's and the H100 SXM's were read on those
  // GPUs (tests/test_gpu_runtime.cpp checks the table against the driver of
  // whatever GPU it runs on); the others are the vendor's published figures.
  // Never destroyed: a service's background compile may plan while the
  // process exits, after the statics made later than the service are gone.
  static const std::vector<DeviceProfile>* const table = new std::vector<DeviceProfile>{
      entry("H100 80GB HBM3", 90, 132, 2619000, 5120, 50, 2048),
      entry("H200", 90, 132, 3201000, 6016, 60, 2048),
      entry("H100 PCIe", 90, 114, 1593000, 5120, 50, 2048),
      entry("A100-SXM4-80GB", 80, 108, 1593000, 5120, 40, 2048),
      entry("A100-SXM4-40GB", 80, 108, 1215000, 5120, 40, 2048),
      entry("L40S", 89, 142, 9001000, 384, 96, 1536),
  };
  return *table;
}

std::string DeviceProfile::knownModelList() {
  std::string list;
  for (const DeviceProfile& p : knownModels())
    list += (list.empty() ? "\"" : ", \"") + p.model + "\"";
  return list;
}

std::string DeviceProfile::modelName(llvm::StringRef driverName) {
  driverName = driverName.trim();
  driverName.consume_front("NVIDIA ");
  return driverName.trim().str();
}

std::optional<DeviceProfile> DeviceProfile::known(llvm::StringRef model) {
  const std::string name = modelName(model);
  for (const DeviceProfile& p : knownModels())
    if (p.model == name)
      return p;
  return std::nullopt;
}

const DeviceProfile& DeviceProfile::reference() {
  static const DeviceProfile* const profile = new DeviceProfile(*known("H100 80GB HBM3"));
  return *profile;
}

DeviceProfile DeviceProfile::forArch(const Arch& arch) {
  DeviceProfile p = reference();
  p.model.clear();
  p.arch = arch;
  return p;
}

bool DeviceProfile::operator==(const DeviceProfile& o) const {
  return model == o.model && arch == o.arch && smCount == o.smCount &&
         memoryClockKHz == o.memoryClockKHz && busWidthBits == o.busWidthBits &&
         l2Bytes == o.l2Bytes && registersPerSm == o.registersPerSm &&
         maxThreadsPerSm == o.maxThreadsPerSm;
}

} // namespace bqjit
