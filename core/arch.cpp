#include "bqjit/arch.hpp"

#include <cctype>

#include "bqjit/error.hpp"
#include "core/json_input.hpp"

namespace bqjit {

llvm::Expected<Arch> Arch::parse(llvm::StringRef text, llvm::StringRef field) {
  auto invalid = [&](const std::string& rule) {
    return makeError(ErrorCode::InvalidSpec, "invalid spec field '" + field.str() + "' = '" +
                                                 shownText(text) + "': " + rule);
  };
  if (!text.startswith("sm_"))
    return invalid("must look like sm_90, sm_90a or sm_100f");
  llvm::StringRef digits = text.drop_front(3);
  Arch arch;
  if (!digits.empty() && (digits.back() == 'a' || digits.back() == 'f')) {
    arch.suffix = digits.back();
    digits = digits.drop_back();
  }
  if (digits.empty() || digits.size() > 5 ||
      !llvm::all_of(digits, [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
    return invalid("must look like sm_90, sm_90a or sm_100f");
  digits.getAsInteger(10, arch.number);
  if (arch.number < kMinNumber)
    return invalid("must be sm_" + std::to_string(kMinNumber) + " or newer");
  return arch;
}

std::string Arch::str() const {
  std::string s = "sm_" + std::to_string(number);
  if (suffix)
    s += suffix;
  return s;
}

} // namespace bqjit
