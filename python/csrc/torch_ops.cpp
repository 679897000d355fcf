// The PyTorch ops torch.ops.bqjit.*: argument checks, output allocation, the
// current stream and a per-process table from (spec fields, device) to a
// loaded kernel, over libbqjit's C API. No JSON and no Python on the hot path:
// JSON is built only when a (spec, device) is seen for the first time.
//
// The C API, not the C++ one: it needs nothing but the C standard library, so
// this file builds against any torch with only torch's and CUDA's headers, and
// no C++ type crosses between code built by two compilers' standard libraries.
//
// The checks and their messages are those of python/bqjit/ops.py, which keeps
// the fake (meta) implementations for torch.compile; tests hold the two to the
// same messages.
#include "bqjit/bqjit.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_map>

namespace {

// Kept in sync with python/bqjit/ops.py (MIN_GROUP, MAX_GROUP, MAX_HIDDEN).
constexpr int64_t kMinGroup = 16, kMaxGroup = 1024, kMaxHidden = 65536;

enum class OutType : int8_t { E4m3, E5m2, Int8, E2m1 };
enum class Layout : int8_t { Row, Col, ColTma, Ue8m0Packed, Bytes, Swizzled };

// torch's packed e2m1 pair type (torch 2.8 and later); uint8 before it.
#if __has_include(<c10/util/Float4_e2m1fn_x2.h>)
constexpr at::ScalarType kFp4Scalar = at::kFloat4_e2m1fn_x2;
#else
constexpr at::ScalarType kFp4Scalar = at::kByte;
#endif

const char* const kStatusNames[] = {
    "ok",           "invalid-spec", "invalid-argument", "compile-failed", "cache-error",
    "driver-error", "no-driver",    "arch-mismatch",    "not-in-cache",   "internal"};

/// Raises the C API's error as a RuntimeError that python/bqjit/ops.py turns
/// into a bqjit.BqjitError: "[bqjit:<code>] <message>".
[[noreturn]] void throwStatus(bqjit_status status, const char* function) {
  const int code = static_cast<int>(status);
  const char* name = code >= 0 && code <= 9 ? kStatusNames[code] : "unknown";
  TORCH_CHECK(false, "[bqjit:", code, "] ", function, ": ", name, ": ", bqjit_last_error());
}

OutType parseOut(const std::string& s) {
  if (s == "fp8_e4m3")
    return OutType::E4m3;
  if (s == "fp8_e5m2")
    return OutType::E5m2;
  if (s == "int8")
    return OutType::Int8;
  if (s == "fp4_e2m1")
    return OutType::E2m1;
  TORCH_CHECK_VALUE(false, "out_dtype = '", s,
                    "': must be one of fp8_e4m3, fp8_e5m2, int8, fp4_e2m1");
}

Layout parseLayout(const std::string& s) {
  if (s == "row")
    return Layout::Row;
  if (s == "col")
    return Layout::Col;
  if (s == "col_tma")
    return Layout::ColTma;
  if (s == "ue8m0_packed")
    return Layout::Ue8m0Packed;
  if (s == "bytes" || s == "e8m0")
    return Layout::Bytes;
  if (s == "swizzled_128x4")
    return Layout::Swizzled;
  TORCH_CHECK_VALUE(false, "scale_layout = '", s,
                    "': must be one of row, col, col_tma, ue8m0_packed, bytes, swizzled_128x4 "
                    "(alias e8m0)");
}

const char* outName(OutType o) {
  return o == OutType::E4m3   ? "fp8_e4m3"
         : o == OutType::E5m2 ? "fp8_e5m2"
         : o == OutType::Int8 ? "int8"
                              : "fp4_e2m1";
}
const char* layoutName(Layout l) {
  return l == Layout::Row        ? "row"
         : l == Layout::Col      ? "col"
         : l == Layout::ColTma   ? "col_tma"
         : l == Layout::Bytes    ? "bytes"
         : l == Layout::Swizzled ? "swizzled_128x4"
                                 : "ue8m0_packed";
}

/// Row-major layouts (row, bytes): scales [..., NG] for x of any rank.
bool rowMajor(Layout l) {
  return l == Layout::Row || l == Layout::Bytes;
}
at::ScalarType outScalar(OutType o) {
  return o == OutType::E4m3   ? at::kFloat8_e4m3fn
         : o == OutType::E5m2 ? at::kFloat8_e5m2
         : o == OutType::Int8 ? at::kChar
                              : kFp4Scalar;
}
/// Last dim of q: H, or H / 2 bytes of two e2m1 values.
int64_t qColumns(int64_t h, OutType o) {
  return o == OutType::E2m1 ? h / 2 : h;
}
/// NVFP4: fp4_e2m1 without power-of-two scales (docs/contract.md section 8).
bool isNvfp4(OutType o, bool ue8m0) {
  return o == OutType::E2m1 && !ue8m0;
}
/// The dtype as Python prints it ("torch.bfloat16").
std::string dtypeText(at::ScalarType t) {
  switch (t) {
  case at::kBFloat16:
    return "torch.bfloat16";
  case at::kHalf:
    return "torch.float16";
  case at::kFloat:
    return "torch.float32";
  case at::kDouble:
    return "torch.float64";
  case at::kFloat8_e4m3fn:
    return "torch.float8_e4m3fn";
  case at::kFloat8_e5m2:
    return "torch.float8_e5m2";
  case at::kChar:
    return "torch.int8";
#if __has_include(<c10/util/Float4_e2m1fn_x2.h>)
  case at::kFloat4_e2m1fn_x2:
    return "torch.float4_e2m1fn_x2";
#endif
  case at::kByte:
    return "torch.uint8";
  case at::kInt:
    return "torch.int32";
  case at::kLong:
    return "torch.int64";
  default:
    return std::string("torch.") + c10::toString(t);
  }
}

const char* inName(at::ScalarType t) {
  return t == at::kBFloat16 ? "bf16" : t == at::kHalf ? "fp16" : "fp32";
}

std::string shapeText(at::IntArrayRef a) {
  std::ostringstream s;
  s << '(';
  for (size_t i = 0; i < a.size(); ++i)
    s << (i ? ", " : "") << a[i];
  s << (a.size() == 1 ? ",)" : ")");
  return s.str();
}

/// The checks that need no tensor; the messages of python/bqjit/ops.py's _check_static.
void checkStatic(int64_t group, OutType out, Layout layout, const std::string& layoutText,
                 bool ue8m0) {
  TORCH_CHECK_VALUE(group >= kMinGroup && group <= kMaxGroup, "group_size = ", group,
                    ": must be in ", kMinGroup, "..", kMaxGroup);
  const bool nvfp4 = isNvfp4(out, ue8m0);
  if (out == OutType::E2m1) {
    TORCH_CHECK_VALUE(!(group == 16 && ue8m0),
                      "out_dtype = 'fp4_e2m1' with group_size = 16 is NVFP4, whose scales are "
                      "E4M3: ue8m0 must be False (MXFP4 is group_size = 32 with ue8m0 = True)");
    TORCH_CHECK_VALUE(!(group == 32 && !ue8m0),
                      "out_dtype = 'fp4_e2m1' with group_size = 32 is MXFP4, whose scales are "
                      "E8M0: ue8m0 must be True (NVFP4 is group_size = 16 with ue8m0 = False)");
    TORCH_CHECK_VALUE(group == 16 || group == 32, "group_size = ", group,
                      ": fp4_e2m1 needs G = 16 (NVFP4) or G = 32 with ue8m0 (MXFP4)");
    TORCH_CHECK_VALUE(!nvfp4 || layout == Layout::Bytes || layout == Layout::Swizzled,
                      "scale_layout = '", layoutText,
                      "': NVFP4 (fp4_e2m1, group_size 16) stores E4M3 scale bytes: must be "
                      "'bytes' or 'swizzled_128x4'");
  }
  TORCH_CHECK_VALUE(layout != Layout::Ue8m0Packed || ue8m0,
                    "scale_layout = 'ue8m0_packed' needs ue8m0 = True (got ue8m0 = False): packed "
                    "scales are the exponents of power-of-two scales");
  TORCH_CHECK_VALUE(layout != Layout::Bytes || ue8m0 || nvfp4,
                    "scale_layout = 'bytes' needs ue8m0 = True (got ue8m0 = False): its bytes "
                    "are the E8M0 exponents of power-of-two scales");
  TORCH_CHECK_VALUE(layout != Layout::Swizzled || ue8m0 || nvfp4,
                    "scale_layout = 'swizzled_128x4' needs ue8m0 = True (got ue8m0 = False): its "
                    "bytes are E8M0 exponents (or NVFP4's E4M3); fp32 scales have no 128x4 layout");
}

/// A float32 tensor of one element on x's device (scale_ub, global_scale).
void checkScalarTensor(const char* name, const at::Tensor& v, const at::Tensor& x) {
  TORCH_CHECK_VALUE(v.scalar_type() == at::kFloat && v.numel() == 1 && v.device() == x.device(),
                    name, " must be a float32 tensor with one element on x's device (",
                    x.device().str(), "), got dtype ", dtypeText(v.scalar_type()), ", ", v.numel(),
                    " elements, device ", v.device().str());
}

struct Rows {
  int64_t t, h, ldx;
};

/// Checks x (and scale_ub); the rows of x flattened to T rows of pitch ldx.
void checkDeviceAndDtype(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.device().is_cuda(), "x must be a CUDA tensor, got a tensor on device '",
                    x.device().str(), "'");
  const at::ScalarType dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kBFloat16 || dt == at::kHalf || dt == at::kFloat,
                   "x.dtype = ", dtypeText(dt),
                   ": must be torch.bfloat16, torch.float16 or torch.float32");
}

/// `sizes` and `strides` are x's, or one expert's of a masked batch.
Rows checkInput(const at::Tensor& x, at::IntArrayRef sizes, at::IntArrayRef strides, int64_t group,
                OutType out, Layout layout, bool ue8m0, const std::optional<at::Tensor>& scaleUb,
                const std::optional<at::Tensor>& globalScale) {
  const int64_t dim = static_cast<int64_t>(sizes.size());
  checkDeviceAndDtype(x);
  TORCH_CHECK_VALUE(dim >= 1, "x must have at least one dimension [..., 2H], got a 0-d tensor");
  const int64_t h2 = sizes[dim - 1];
  TORCH_CHECK_VALUE(h2 % 2 == 0 && h2 != 0, "x.shape[-1] = ", h2,
                    ": must be 2H, even and > 0 (gate then up)");
  const int64_t h = h2 / 2;
  TORCH_CHECK_VALUE(h <= kMaxHidden, "x.shape[-1] = ", h2, ": H = ", h, " must be <= ", kMaxHidden);
  TORCH_CHECK_VALUE(strides[dim - 1] == 1, "x.stride(-1) = ", strides[dim - 1],
                    ": the last dim of x must be contiguous (stride 1); rows may be strided");
  TORCH_CHECK_VALUE(h % group == 0, "group_size = ", group, ": must divide H = ", h,
                    " (x.shape[-1] = ", h2, ")");
  TORCH_CHECK_VALUE(rowMajor(layout) || dim == 2, "scale_layout = '", layoutName(layout),
                    "' needs a 2-D x [T, 2H], got shape ", shapeText(sizes),
                    "; flatten the leading dims first (x.view(-1, x.shape[-1]))");
  if (scaleUb)
    checkScalarTensor("scale_ub", *scaleUb, x);
  const bool nvfp4 = isNvfp4(out, ue8m0);
  TORCH_CHECK_VALUE(!nvfp4 || !scaleUb,
                    "scale_ub must be None for NVFP4 (out_dtype 'fp4_e2m1', group_size 16): its "
                    "block scales are bounded by 448 and set by global_scale");
  TORCH_CHECK_VALUE(!nvfp4 || globalScale,
                    "global_scale is None: NVFP4 (out_dtype 'fp4_e2m1', group_size 16) needs a "
                    "float32 tensor with one element on x's device (448 * 6 / amax of the tensor, "
                    "by vLLM's convention)");
  TORCH_CHECK_VALUE(nvfp4 || !globalScale,
                    "global_scale applies only to NVFP4 (out_dtype 'fp4_e2m1', group_size 16)");
  if (globalScale)
    checkScalarTensor("global_scale", *globalScale, x);
  int64_t t = 1;
  int64_t ldx = -1, expect = -1;
  for (int64_t i = dim - 2; i >= 0; --i) {
    const int64_t size = sizes[i], stride = strides[i];
    t *= size;
    if (size == 1)
      continue;
    if (ldx < 0)
      ldx = stride;
    else
      TORCH_CHECK_VALUE(stride == expect, "x has shape ", shapeText(sizes), " and strides ",
                        shapeText(strides),
                        ": its leading dims cannot be flattened to rows of one stride (need "
                        "stride[i] == stride[i+1] * size[i+1] for the dims before the last); call "
                        "x.contiguous() or reshape it");
    expect = stride * size;
  }
  if (ldx < 0)
    ldx = h2;
  else
    TORCH_CHECK_VALUE(ldx >= h2, "x has row stride ", ldx, " < last dim ", h2, " (shape ",
                      shapeText(sizes), ", strides ", shapeText(strides),
                      "): rows must not overlap");
  return {t, h, ldx};
}

/// The scale tensor of one expert: [T, NG] (or [T, NW] packed words, or
/// swizzled_128x4's [Tp, NGp] bytes) with its strides, and the elements the
/// kernel writes (padding included).
struct ScaleShape {
  int64_t rows, cols, strideT, strideJ, storage;
};

ScaleShape scaleShape(Layout layout, int64_t t, int64_t ng) {
  const int64_t t4 = (t + 3) / 4 * 4;
  switch (layout) {
  case Layout::Row:
  case Layout::Bytes:
    return {t, ng, ng, 1, t * ng};
  case Layout::Col:
    return {t, ng, 1, t, ng * t};
  case Layout::ColTma:
    return {t, ng, 1, t4, ng * t4};
  case Layout::Swizzled: {
    const int64_t tp = (t + 127) / 128 * 128, ngp = (ng + 3) / 4 * 4;
    return {tp, ngp, ngp, 1, tp * ngp};
  }
  case Layout::Ue8m0Packed:
    break;
  }
  const int64_t nw = (ng + 3) / 4;
  return {t, nw, 1, t4, nw * t4};
}

at::ScalarType scaleScalar(Layout l) {
  return l == Layout::Ue8m0Packed                      ? at::kInt
         : l == Layout::Bytes || l == Layout::Swizzled ? at::kByte
                                                       : at::kFloat;
}

/// q and scales for x [..., 2H] (plain) or [E, T, 2H] (masked: per expert).
std::tuple<at::Tensor, at::Tensor> allocate(const at::Tensor& x, int64_t h, int64_t group,
                                            OutType out, Layout layout, bool masked) {
  std::vector<int64_t> lead(x.sizes().begin(), x.sizes().end() - 1);
  std::vector<int64_t> qShape = lead;
  qShape.push_back(qColumns(h, out));
  at::Tensor q = at::empty(qShape, x.options().dtype(outScalar(out)));
  const auto sOpts = x.options().dtype(scaleScalar(layout));
  const int64_t ng = h / group;
  if (masked) {
    const int64_t e = x.size(0), t = x.size(1);
    const ScaleShape s = scaleShape(layout, t, ng);
    at::Tensor buf = at::empty({e * s.storage}, sOpts);
    return {q, buf.as_strided({e, s.rows, s.cols}, {s.storage, s.strideT, s.strideJ})};
  }
  if (rowMajor(layout)) {
    std::vector<int64_t> sShape = lead;
    sShape.push_back(ng);
    return {q, at::empty(sShape, sOpts)};
  }
  const int64_t t = x.size(0);
  const ScaleShape s = scaleShape(layout, t, ng);
  // The kernel writes all of storage (padding rows too), more than
  // empty_strided(shape, strides) would hold.
  at::Tensor buf = at::empty({s.storage}, sOpts);
  return {q, buf.as_strided({s.rows, s.cols}, {s.strideT, s.strideJ})};
}

void checkOutputs(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, int64_t h,
                  int64_t group, OutType out, Layout layout, bool masked) {
  std::vector<int64_t> wantQ(x.sizes().begin(), x.sizes().end() - 1);
  wantQ.push_back(qColumns(h, out));
  TORCH_CHECK_VALUE(q.device() == x.device(), "out is on device '", q.device().str(), "', x on '",
                    x.device().str(), "': must be the same device");
  TORCH_CHECK_TYPE(q.scalar_type() == outScalar(out), "out.dtype = ", dtypeText(q.scalar_type()),
                   ": must be ", dtypeText(outScalar(out)), " (the out_dtype)");
  TORCH_CHECK_VALUE(q.sizes() == at::IntArrayRef(wantQ), "out.shape = ", shapeText(q.sizes()),
                    ": must be ", shapeText(wantQ), " ",
                    out == OutType::E2m1 ? "(x.shape[:-1] + (H // 2,): two e2m1 values a byte)"
                                         : "(x.shape[:-1] + (H,))");
  TORCH_CHECK_VALUE(q.is_contiguous(), "out must be contiguous, got strides ",
                    shapeText(q.strides()));
  TORCH_CHECK_VALUE(scales.device() == x.device(), "scales_out is on device '",
                    scales.device().str(), "', x on '", x.device().str(),
                    "': must be the same device");
  const at::ScalarType sdt = scaleScalar(layout);
  TORCH_CHECK_TYPE(scales.scalar_type() == sdt,
                   "scales_out.dtype = ", dtypeText(scales.scalar_type()), ": must be ",
                   dtypeText(sdt), " for scale_layout '", layoutName(layout), "'");
  const int64_t ng = h / group;
  const int64_t t = masked ? x.size(1) : (rowMajor(layout) ? 0 : x.size(0));
  if (!masked && (rowMajor(layout) || layout == Layout::Swizzled)) {
    // Contiguous: [..., NG], or swizzled_128x4's [Tp, NGp] (x is 2-D).
    std::vector<int64_t> want(x.sizes().begin(), x.sizes().end() - 1);
    want.push_back(ng);
    if (layout == Layout::Swizzled) {
      const ScaleShape s = scaleShape(layout, x.size(0), ng);
      want = {s.rows, s.cols};
    }
    TORCH_CHECK_VALUE(scales.sizes() == at::IntArrayRef(want),
                      "scales_out.shape = ", shapeText(scales.sizes()), ": must be ",
                      shapeText(want), " for scale_layout '", layoutName(layout), "'");
    TORCH_CHECK_VALUE(scales.is_contiguous(), "scales_out must be contiguous for scale_layout '",
                      layoutName(layout), "', got strides ", shapeText(scales.strides()));
    return;
  }
  const ScaleShape s = scaleShape(layout, t, ng);
  std::vector<int64_t> want, strides;
  if (masked) {
    want = {x.size(0), s.rows, s.cols};
    strides = {s.storage, s.strideT, s.strideJ};
  } else {
    want = {s.rows, s.cols};
    strides = {s.strideT, s.strideJ};
  }
  TORCH_CHECK_VALUE(scales.sizes() == at::IntArrayRef(want),
                    "scales_out.shape = ", shapeText(scales.sizes()), ": must be ", shapeText(want),
                    " for scale_layout '", layoutName(layout), "'");
  for (size_t d = 0; d < want.size(); ++d)
    TORCH_CHECK_VALUE(want[d] <= 1 || scales.stride(d) == strides[d],
                      "scales_out.stride() = ", shapeText(scales.strides()), ": must be ",
                      shapeText(strides), " for scale_layout '", layoutName(layout), "' (a ",
                      shapeText(want), " view of a buffer of ",
                      (masked ? x.size(0) : 1) * s.storage, " elements)");
  const int64_t total = (masked ? x.size(0) : 1) * s.storage;
  const int64_t room = static_cast<int64_t>(scales.storage().nbytes()) / scales.element_size() -
                       scales.storage_offset();
  TORCH_CHECK_VALUE(room >= total, "scales_out has room for ", room,
                    " elements from its offset: scale_layout '", layoutName(layout), "' writes ",
                    total, " (padding rows included); allocate torch.empty(", total,
                    ").as_strided(", shapeText(want), ", ", shapeText(strides), ")");
}

void checkMasked(const at::Tensor& x, const at::Tensor& maskedM) {
  TORCH_CHECK_VALUE(maskedM.device() == x.device(), "masked_m is on device '",
                    maskedM.device().str(), "', x on '", x.device().str(),
                    "': must be the same device");
  TORCH_CHECK_TYPE(maskedM.scalar_type() == at::kInt,
                   "masked_m.dtype = ", dtypeText(maskedM.scalar_type()), ": must be torch.int32");
  TORCH_CHECK_VALUE(maskedM.dim() == 1 && maskedM.size(0) == x.size(0),
                    "masked_m.shape = ", shapeText(maskedM.sizes()), ": must be (", x.size(0),
                    ",) (one count per expert of x)");
  TORCH_CHECK_VALUE(maskedM.stride(0) == 1 || maskedM.size(0) <= 1,
                    "masked_m must be contiguous, got stride ", maskedM.stride(0));
  // The kernel finds expert e's rows at e * T_max * ldx.
  TORCH_CHECK_VALUE(x.size(0) <= 1 || x.size(1) <= 1 || x.stride(0) == x.size(1) * x.stride(1),
                    "x.stride(0) = ", x.stride(0),
                    ": must be T_max * x.stride(1) = ", x.size(1) * x.stride(1),
                    " (experts back to back)");
}

/// One specialization the op has asked for, on one device.
struct TableKey {
  int64_t hidden, group;
  int8_t in, out, layout;
  bool ue8m0, hasUb, masked;
  int8_t maxVec; // 0: aligned, the heuristic's vectors; else the widest that fits
  int device;
  std::string launch; // the caller's override as JSON; empty: none
  std::string fields; // more spec fields (activation, ...) as a JSON object; empty: none
  bool operator==(const TableKey& o) const {
    return hidden == o.hidden && group == o.group && in == o.in && out == o.out &&
           layout == o.layout && ue8m0 == o.ue8m0 && hasUb == o.hasUb && masked == o.masked &&
           maxVec == o.maxVec && device == o.device && launch == o.launch && fields == o.fields;
  }
};

struct TableKeyHash {
  size_t operator()(const TableKey& k) const {
    uint64_t h = static_cast<uint64_t>(k.hidden) * 0x9E3779B97F4A7C15ull;
    h ^= static_cast<uint64_t>(k.group) + 0x632BE59BD9B4E019ull + (h << 6) + (h >> 2);
    const uint64_t bits = static_cast<uint64_t>(k.in) | static_cast<uint64_t>(k.out) << 8 |
                          static_cast<uint64_t>(k.layout) << 16 | uint64_t(k.ue8m0) << 24 |
                          uint64_t(k.hasUb) << 25 | uint64_t(k.masked) << 26 |
                          static_cast<uint64_t>(static_cast<uint8_t>(k.maxVec)) << 32 |
                          static_cast<uint64_t>(static_cast<uint32_t>(k.device)) << 40;
    h ^= bits + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    if (!k.launch.empty())
      h ^= std::hash<std::string>()(k.launch);
    if (!k.fields.empty())
      h ^= std::hash<std::string>()(k.fields) * 31;
    return static_cast<size_t>(h);
  }
};

/// The process's service and the kernels it handed to these ops. Kernels stay
/// loaded for the life of the process (a captured CUDA graph may launch them
/// at any time).
class KernelTable {
public:
  static KernelTable& instance() {
    static KernelTable* table = new KernelTable(); // never destroyed: graphs outlive statics
    return *table;
  }

  bqjit_kernel get(const TableKey& key) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = kernels_.find(key);
      if (it != kernels_.end())
        return it->second;
    }
    // Compiling or loading takes the service's own locks; two threads asking
    // for the same new kernel get the same one from the service.
    bqjit_kernel kernel = load(key);
    std::lock_guard<std::mutex> lock(mutex_);
    auto [it, inserted] = kernels_.emplace(key, kernel);
    if (!inserted)
      bqjit_kernel_release(kernel);
    return it->second;
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return kernels_.size();
  }

private:
  bqjit_service service() {
    std::call_once(serviceOnce_, [this] {
      if (bqjit_status st = bqjit_service_create(nullptr, &service_))
        serviceStatus_ = st, serviceError_ = bqjit_last_error();
    });
    TORCH_CHECK(service_ != nullptr, "[bqjit:", static_cast<int>(serviceStatus_),
                "] bqjit_service_create: ", serviceError_);
    return service_;
  }

  std::string specText(const TableKey& k, const std::string& launch) const {
    std::string s =
        "{\"hidden\":" + std::to_string(k.hidden) + ",\"group_size\":" + std::to_string(k.group) +
        ",\"in_dtype\":\"" + inName(static_cast<at::ScalarType>(k.in)) + "\",\"out_dtype\":\"" +
        outName(static_cast<OutType>(k.out)) + "\",\"scale_layout\":\"" +
        layoutName(static_cast<Layout>(k.layout)) + "\",\"ue8m0\":" + (k.ue8m0 ? "true" : "false") +
        ",\"scale_ub\":" + (k.hasUb ? "true" : "false") +
        ",\"masked\":" + (k.masked ? "true" : "false");
    if (!launch.empty())
      s += ",\"launch\":" + launch;
    // The members of the fields object, after ours (checked to be an object
    // when the call came in; the library validates each).
    if (k.fields.size() > 2)
      s += "," + k.fields.substr(1, k.fields.size() - 2);
    return s + "}";
  }

  static std::string textCall(const char* function,
                              const std::function<bqjit_status(char*, size_t, size_t*)>& call) {
    std::string buf(512, '\0');
    size_t needed = 0;
    bqjit_status st = call(buf.data(), buf.size(), &needed);
    if (st == BQJIT_ERROR_INVALID_ARGUMENT && needed > buf.size()) {
      buf.assign(needed, '\0');
      st = call(buf.data(), buf.size(), &needed);
    }
    if (st != BQJIT_OK)
      throwStatus(st, function);
    buf.resize(needed ? needed - 1 : 0);
    return buf;
  }

  bqjit_kernel load(const TableKey& k) {
    bqjit_service svc = service();
    std::string launch = k.launch;
    if (launch.empty() && k.maxVec != 0) {
      // Narrower vectors for pointers that are not 16-byte aligned: the
      // heuristic's shape with at most maxVec elements a vector.
      const std::string base = specText(k, "");
      std::string withArch = base.substr(0, base.size() - 1) + ",\"arch\":\"sm_80\"}";
      launch = textCall("bqjit_default_launch", [&](char* b, size_t n, size_t* need) {
        return bqjit_default_launch(withArch.c_str(), k.maxVec, b, n, need);
      });
    }
    const std::string spec = specText(k, launch);
    const std::string resolved =
        textCall("bqjit_spec_for_device", [&](char* b, size_t n, size_t* need) {
          return bqjit_spec_for_device(svc, spec.c_str(), k.device, b, n, need);
        });
    bqjit_kernel kernel = nullptr;
    if (bqjit_status st = bqjit_kernel_get(svc, resolved.c_str(), k.device, &kernel))
      throwStatus(st, "bqjit_kernel_get");
    return kernel;
  }

  std::mutex mutex_;
  std::unordered_map<TableKey, bqjit_kernel, TableKeyHash> kernels_;
  std::once_flag serviceOnce_;
  bqjit_service service_ = nullptr;
  bqjit_status serviceStatus_ = BQJIT_OK;
  std::string serviceError_;
};

int64_t pow2Align(uint64_t a, uint64_t b) {
  const uint64_t v = a | b | 16;
  return static_cast<int64_t>(v & (~v + 1));
}

/// `pdl`: whether the launch is a programmatic dependent launch
/// (BQJIT_LAUNCH_PDL / BQJIT_LAUNCH_NO_PDL); none leaves it to the library's
/// default (BQJIT_PDL, on from sm_90 unless 0).
void run(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, const Rows& r,
         int64_t group, OutType out, Layout layout, bool ue8m0,
         const std::optional<at::Tensor>& scaleUb, const std::optional<std::string>& launch,
         const std::optional<std::string>& fields, const at::Tensor* maskedM,
         const std::optional<at::Tensor>& globalScale, std::optional<bool> pdl) {
  if (r.t == 0 || (maskedM && maskedM->size(0) == 0))
    return;
  const int device = x.get_device();
  TableKey key{r.h,
               group,
               static_cast<int8_t>(x.scalar_type()),
               static_cast<int8_t>(out),
               static_cast<int8_t>(layout),
               ue8m0,
               scaleUb.has_value(),
               maskedM != nullptr,
               0,
               device,
               launch ? *launch : std::string(),
               fields ? *fields : std::string()};
  const uint64_t xp = reinterpret_cast<uint64_t>(x.data_ptr());
  const uint64_t qp = reinterpret_cast<uint64_t>(q.data_ptr());
  if (!launch) {
    const int64_t esize = x.element_size();
    const int64_t xa = pow2Align(xp, static_cast<uint64_t>(r.ldx * esize));
    // A vector of v values stores v bytes of q, v / 2 for fp4_e2m1.
    const int64_t qa = pow2Align(qp, 0) * (out == OutType::E2m1 ? 2 : 1);
    if (xa < 16 || qa < 16)
      key.maxVec = static_cast<int8_t>(std::min<int64_t>(std::min(xa / esize, qa), 16));
  }
  bqjit_kernel kernel = KernelTable::instance().get(key);
  bqjit_launch_args args{};
  args.x = xp;
  args.ldx = r.ldx;
  args.tokens = maskedM ? x.size(1) : r.t;
  args.q = qp;
  args.scales = reinterpret_cast<uint64_t>(scales.data_ptr());
  args.scale_ub = scaleUb ? reinterpret_cast<uint64_t>(scaleUb->data_ptr()) : 0;
  args.masked_m = maskedM ? reinterpret_cast<uint64_t>(maskedM->data_ptr()) : 0;
  args.num_experts = maskedM ? x.size(0) : 1;
  // The legacy default stream and the kernel's module resolve through the
  // current context: make x's device current.
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  void* stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
  bqjit_launch_extra extra{};
  extra.size = sizeof extra;
  extra.global_scale = globalScale ? reinterpret_cast<uint64_t>(globalScale->data_ptr()) : 0;
  extra.flags = !pdl ? 0u : *pdl ? BQJIT_LAUNCH_PDL : BQJIT_LAUNCH_NO_PDL;
  if (bqjit_status st = bqjit_kernel_launch_ex(kernel, &args, &extra, stream))
    throwStatus(st, "bqjit_kernel_launch_ex");
}

/// `fields`: None, or a JSON object of more spec fields, e.g.
/// {"activation":"swiglu","alpha":1.702}; the library validates its members.
void checkFields(const std::optional<std::string>& fields) {
  if (!fields)
    return;
  const std::string& f = *fields;
  TORCH_CHECK_VALUE(f.size() >= 2 && f.front() == '{' && f.back() == '}', "fields = '", f,
                    "': must be None or a JSON object of spec fields");
}

Rows checkArguments(const at::Tensor& x, int64_t group, OutType out, Layout layout,
                    const std::string& layoutText, bool ue8m0,
                    const std::optional<at::Tensor>& scaleUb, const at::Tensor* maskedM,
                    const std::optional<at::Tensor>& globalScale) {
  checkStatic(group, out, layout, layoutText, ue8m0);
  if (maskedM) {
    checkDeviceAndDtype(x);
    TORCH_CHECK_VALUE(x.dim() == 3, "x must be [E, T_max, 2H] for a masked batch, got shape ",
                      shapeText(x.sizes()));
    // Each expert is a [T_max, 2H] batch: every layout applies per expert.
    Rows r = checkInput(x, x.sizes().slice(1), x.strides().slice(1), group, out, layout, ue8m0,
                        scaleUb, globalScale);
    checkMasked(x, *maskedM);
    if (x.size(1) == 1 && x.size(0) > 1) {
      // One row an expert: the expert stride is the row pitch.
      r.ldx = x.stride(0);
      TORCH_CHECK_VALUE(r.ldx >= x.size(2), "x has expert stride ", r.ldx, " < last dim ",
                        x.size(2), " (shape ", shapeText(x.sizes()), ", strides ",
                        shapeText(x.strides()), "): rows must not overlap");
    }
    r.t = x.size(0) * x.size(1);
    return r;
  }
  return checkInput(x, x.sizes(), x.strides(), group, out, layout, ue8m0, scaleUb, globalScale);
}

std::tuple<at::Tensor, at::Tensor>
siluMulQuant(const at::Tensor& x, int64_t group, const std::string& outDtype,
             const std::string& scaleLayout, bool ue8m0, const std::optional<at::Tensor>& scaleUb,
             const std::optional<std::string>& launch, const std::optional<std::string>& fields,
             const std::optional<at::Tensor>& globalScale, std::optional<bool> pdl) {
  const OutType out = parseOut(outDtype);
  const Layout layout = parseLayout(scaleLayout);
  checkFields(fields);
  const Rows r =
      checkArguments(x, group, out, layout, scaleLayout, ue8m0, scaleUb, nullptr, globalScale);
  auto [q, s] = allocate(x, r.h, group, out, layout, false);
  run(x, q, s, r, group, out, layout, ue8m0, scaleUb, launch, fields, nullptr, globalScale, pdl);
  return {q, s};
}

void siluMulQuantOut(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales,
                     int64_t group, const std::string& outDtype, const std::string& scaleLayout,
                     bool ue8m0, const std::optional<at::Tensor>& scaleUb,
                     const std::optional<std::string>& launch,
                     const std::optional<std::string>& fields,
                     const std::optional<at::Tensor>& globalScale, std::optional<bool> pdl) {
  const OutType out = parseOut(outDtype);
  const Layout layout = parseLayout(scaleLayout);
  checkFields(fields);
  const Rows r =
      checkArguments(x, group, out, layout, scaleLayout, ue8m0, scaleUb, nullptr, globalScale);
  checkOutputs(x, q, scales, r.h, group, out, layout, false);
  run(x, q, scales, r, group, out, layout, ue8m0, scaleUb, launch, fields, nullptr, globalScale,
      pdl);
}

std::tuple<at::Tensor, at::Tensor> siluMulQuantMasked(
    const at::Tensor& x, const at::Tensor& maskedM, int64_t group, const std::string& outDtype,
    const std::string& scaleLayout, bool ue8m0, const std::optional<at::Tensor>& scaleUb,
    const std::optional<std::string>& launch, const std::optional<std::string>& fields,
    const std::optional<at::Tensor>& globalScale, std::optional<bool> pdl) {
  const OutType out = parseOut(outDtype);
  const Layout layout = parseLayout(scaleLayout);
  checkFields(fields);
  const Rows r =
      checkArguments(x, group, out, layout, scaleLayout, ue8m0, scaleUb, &maskedM, globalScale);
  auto [q, s] = allocate(x, r.h, group, out, layout, true);
  run(x, q, s, r, group, out, layout, ue8m0, scaleUb, launch, fields, &maskedM, globalScale, pdl);
  return {q, s};
}

void siluMulQuantMaskedOut(const at::Tensor& x, const at::Tensor& maskedM, const at::Tensor& q,
                           const at::Tensor& scales, int64_t group, const std::string& outDtype,
                           const std::string& scaleLayout, bool ue8m0,
                           const std::optional<at::Tensor>& scaleUb,
                           const std::optional<std::string>& launch,
                           const std::optional<std::string>& fields,
                           const std::optional<at::Tensor>& globalScale, std::optional<bool> pdl) {
  const OutType out = parseOut(outDtype);
  const Layout layout = parseLayout(scaleLayout);
  checkFields(fields);
  const Rows r =
      checkArguments(x, group, out, layout, scaleLayout, ue8m0, scaleUb, &maskedM, globalScale);
  checkOutputs(x, q, scales, r.h, group, out, layout, true);
  run(x, q, scales, r, group, out, layout, ue8m0, scaleUb, launch, fields, &maskedM, globalScale,
      pdl);
}

int64_t tableSize() {
  return static_cast<int64_t>(KernelTable::instance().size());
}

} // namespace

TORCH_LIBRARY(bqjit, m) {
  // The fake (meta) implementations for torch.compile live in this module.
  m.set_python_module("bqjit.ops");
  m.def("silu_mul_quant(Tensor x, int group_size, str out_dtype, str scale_layout, bool ue8m0, "
        "Tensor? scale_ub, str? launch, str? fields=None, Tensor? global_scale=None, "
        "bool? pdl=None) -> (Tensor, Tensor)");
  m.def("silu_mul_quant_out(Tensor x, Tensor(a!) q, Tensor(b!) scales, int group_size, "
        "str out_dtype, str scale_layout, bool ue8m0, Tensor? scale_ub, str? launch, str? "
        "fields=None, Tensor? global_scale=None, bool? pdl=None) -> ()");
  m.def("silu_mul_quant_masked(Tensor x, Tensor masked_m, int group_size, str out_dtype, "
        "str scale_layout, bool ue8m0, Tensor? scale_ub, str? launch, str? fields=None, "
        "Tensor? global_scale=None, bool? pdl=None) -> (Tensor, Tensor)");
  m.def("silu_mul_quant_masked_out(Tensor x, Tensor masked_m, Tensor(a!) q, Tensor(b!) scales, "
        "int group_size, str out_dtype, str scale_layout, bool ue8m0, Tensor? scale_ub, "
        "str? launch, str? fields=None, Tensor? global_scale=None, bool? pdl=None) -> ()");
  m.def("kernel_table_size() -> int", &tableSize);
}

// Every backend: a tensor not on a GPU gets the same error as from the fakes, not
// the dispatcher's "no kernel for CPU". The fakes (Meta) take precedence.
TORCH_LIBRARY_IMPL(bqjit, CompositeExplicitAutograd, m) {
  m.impl("silu_mul_quant", &siluMulQuant);
  m.impl("silu_mul_quant_out", &siluMulQuantOut);
  m.impl("silu_mul_quant_masked", &siluMulQuantMasked);
  m.impl("silu_mul_quant_masked_out", &siluMulQuantMaskedOut);
}
