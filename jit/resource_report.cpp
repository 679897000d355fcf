#include "jit/resource_report.hpp"

#include <cctype>

#include "bqjit/error.hpp"

namespace bqjit {

nlohmann::json ResourceReport::toJson() const {
  return {{"registers", registers},
          {"spill_store_bytes", spillStoreBytes},
          {"spill_load_bytes", spillLoadBytes},
          {"stack_frame_bytes", stackFrameBytes},
          {"shared_bytes", sharedBytes},
          {"barriers", barriers}};
}

ResourceReport ResourceReport::fromJson(const nlohmann::json& j) {
  ResourceReport r;
  r.registers = j.value("registers", 0);
  r.spillStoreBytes = j.value("spill_store_bytes", 0);
  r.spillLoadBytes = j.value("spill_load_bytes", 0);
  r.stackFrameBytes = j.value("stack_frame_bytes", 0);
  r.sharedBytes = j.value("shared_bytes", 0);
  r.barriers = j.value("barriers", 0);
  return r;
}

namespace {

// The number written just before `suffix` in `text` (e.g. "40" in
// "Used 40 registers"), or -1 when `suffix` does not occur.
int numberBefore(const std::string& text, const std::string& suffix) {
  auto pos = text.find(suffix);
  if (pos == std::string::npos)
    return -1;
  size_t end = pos;
  while (end > 0 && text[end - 1] == ' ')
    --end;
  size_t begin = end;
  while (begin > 0 && std::isdigit(static_cast<unsigned char>(text[begin - 1])))
    --begin;
  return begin == end ? -1 : std::stoi(text.substr(begin, end - begin));
}

// The number written just after `prefix`, or -1.
int numberAfter(const std::string& text, const std::string& prefix) {
  auto pos = text.find(prefix);
  if (pos == std::string::npos)
    return -1;
  pos += prefix.size();
  size_t end = pos;
  while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end])))
    ++end;
  return end == pos ? -1 : std::stoi(text.substr(pos, end - pos));
}

} // namespace

llvm::Expected<ResourceReport> parsePtxasReport(const std::string& log,
                                                const std::string& loweredName) {
  const std::string marker = "Compiling entry function '" + loweredName + "'";
  auto begin = log.find(marker);
  if (begin == std::string::npos)
    return makeError(ErrorCode::Internal,
                     "ptxas report has no entry for kernel '" + loweredName + "'");
  auto end = log.find("Compiling entry function '", begin + marker.size());
  const std::string section = log.substr(begin, end == std::string::npos ? end : end - begin);

  ResourceReport r;
  r.registers = numberAfter(section, "Used ");
  if (r.registers < 0)
    return makeError(ErrorCode::Internal,
                     "ptxas report for '" + loweredName + "' has no register count:\n" + section);
  auto orZero = [](int v) { return v < 0 ? 0 : v; };
  r.stackFrameBytes = orZero(numberBefore(section, "bytes stack frame"));
  r.spillStoreBytes = orZero(numberBefore(section, "bytes spill stores"));
  r.spillLoadBytes = orZero(numberBefore(section, "bytes spill loads"));
  r.sharedBytes = orZero(numberBefore(section, "bytes smem"));
  r.barriers = orZero(numberAfter(section, "used "));
  return r;
}

} // namespace bqjit
