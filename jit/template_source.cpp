#include "jit/template_source.hpp"

#include <cstddef>
#include <vector>

namespace bqjit {
namespace detail {
extern const char* const kTemplateNames[];
extern const unsigned char* const kTemplateData[];
extern const size_t kTemplateSizes[];
extern const size_t kTemplateCount;
} // namespace detail

// Both never destroyed (a background compile may run while the process exits).
llvm::ArrayRef<TemplateHeader> templateHeaders() {
  static const std::vector<TemplateHeader>* const headers = [] {
    auto* out = new std::vector<TemplateHeader>;
    for (size_t i = 0; i < detail::kTemplateCount; ++i)
      out->push_back({std::string("bqjit/") + detail::kTemplateNames[i],
                      llvm::StringRef(reinterpret_cast<const char*>(detail::kTemplateData[i]),
                                      detail::kTemplateSizes[i])});
    return out;
  }();
  return *headers;
}

const TextDigest& templateDigest() {
  static const TextDigest* const digest = [] {
    // Each name and text, NUL-terminated: no two sets of headers give the
    // same bytes.
    std::string all;
    for (const TemplateHeader& h : templateHeaders()) {
      all += h.name;
      all += '\0';
      all += h.text.str();
      all += '\0';
    }
    return new TextDigest(TextDigest::of(all));
  }();
  return *digest;
}

} // namespace bqjit
