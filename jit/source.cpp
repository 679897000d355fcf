#include "jit/source.hpp"

#include <sstream>

#include "jit/template_source.hpp"

namespace bqjit {

GeneratedSource generateSource(const KernelSpec& spec) {
  const LaunchShape& s = *spec.shape;
  std::ostringstream name;
  name << "bqjit_kernel::silu_mul_quant<" << spec.hidden << ", " << spec.groupSize << ", "
       << static_cast<int>(spec.inDtype) << ", " << static_cast<int>(spec.outDtype) << ", "
       << static_cast<int>(spec.scaleLayout) << ", " << (spec.ue8m0 ? "true" : "false") << ", "
       << (spec.hasScaleUb ? "true" : "false") << ", " << (spec.masked ? "true" : "false") << ", "
       << s.threadsPerGroup << ", " << s.vecWidth << ", " << s.groupsPerBlock << ">";

  GeneratedSource out;
  out.fileName = "bqjit_silu_mul_quant.cu";
  out.nameExpression = name.str();
  // The template is instantiated through the name expression; the spec is
  // echoed so that a PTX or log read by a person says what it is.
  out.text = "// bqjit specialization " + spec.canonical() + "\n#include \"" +
             std::string(kTemplateHeaderName) + "\"\n";
  return out;
}

} // namespace bqjit
