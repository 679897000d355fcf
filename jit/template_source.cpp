#include "jit/template_source.hpp"

#include <cstddef>

namespace bqjit {
namespace detail {
extern const unsigned char kTemplateBytes[];
extern const size_t kTemplateSize;
} // namespace detail

llvm::StringRef templateSource() {
  return llvm::StringRef(reinterpret_cast<const char*>(detail::kTemplateBytes),
                         detail::kTemplateSize);
}

const TextDigest& templateDigest() {
  // Never destroyed (a background compile may run while the process exits).
  static const TextDigest* const digest = new TextDigest(TextDigest::of(templateSource()));
  return *digest;
}

} // namespace bqjit
