// cuDNN's fused flash attention (SDPA forward) as a baseline for ./bench, through the raw cuDNN 9
// backend descriptor API (cudnn_graph.h; the cudnn-frontend header library is not installed).
//
// The operation graph is the one cudnn-frontend's SDPA node lowers to for cuDNN < 9.21 (its
// composite path: matmuls, pointwise ops and reductions that cuDNN's runtime-fusion engine
// recognises as flash attention and runs as one kernel). Tensor uids and types:
//   Q  (1) bf16 [B, H, Nq, Dh]                 Kᵀ (2) bf16 [B, H, Dh, Nk], strides of K transposed
//   V  (3) bf16 [B, H, Nk, Dh]                 O  (4) bf16 [B, H, Nq, Dh]
//   Stats (5) f32 [B, H, Nq, 1] = lse          scale (6), -inf (7): f32 scalars passed by value
//   virtual tensors (100+), f32 unless noted:
//   S  = matmul(Q, Kᵀ)                        [B, H, Nq, Nk]
//   Ss = S · scale                            pointwise MUL
//   causal only: r = gen_index(Ss, axis 2), c = gen_index(Ss, axis 3)   (i32)
//                m = r >= c                   CMP_GE, bool
//                Ss = m ? Ss : lowest float   BINARY_SELECT
//   M = max over keys (reduction MAX)         [B, H, Nq, 1]
//   E = exp(Ss − M);  L = Σ E (reduction ADD) [B, H, Nq, 1]
//   Stats = M + log L                         (non-virtual output)
//   P = E / L                                 bf16 (the A operand of the second matmul)
//   O = matmul(P, V)
// All compute (matmul, pointwise, reduction) types are f32. The engine comes from the heuristics
// (CUDNN_HEUR_MODE_A): the first config whose execution plan finalizes wins; the finalized plan is
// cached per (B, H, Nq, Nk, Dh, causal), so repeated calls only build a variant pack and execute.
// The workspace comes from the engine's caching device allocator (Tensor::empty on device()).
//
// Scope: bf16 (cuDNN's fused path is fp16/bf16 only; f32 is rejected with a clear error), optional
// causal mask; no key-padding mask (cuDNN takes per-batch sequence lengths, not a [B, Nk] mask)
// and no QK LayerNorm. Every cuDNN and CUDA status is checked and turned into a one-line
// engine::Error naming the call, the attribute and cuDNN's last error message.
//
// Compiled only by nvcc (the sim build has no cuDNN): under g++ this file is empty and
// kernels::cuda::sdpa_cudnn is not defined there.
#if defined(__CUDACC__)
#include <cudnn_graph.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"

#if CUDNN_MAJOR < 9
#error "kernels/cuda/sdpa_cudnn.cu needs the cuDNN 9 backend API"
#endif

namespace kernels::cuda {
namespace {

constexpr const char* kOp = "sdpa_cudnn";

// cuDNN's last error message (it explains most BAD_PARAM / NOT_SUPPORTED statuses), on one line.
std::string last_error() {
  char msg[1024] = {0};
  cudnnGetLastErrorString(msg, sizeof msg);
  std::string s(msg);
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

[[noreturn]] void cudnn_fail(cudnnStatus_t st, const std::string& what) {
  const std::string detail = last_error();
  ENGINE_FAIL(kOp, ": ", what, " failed: ", cudnnGetErrorString(st), detail.empty() ? "" : " (",
              detail, detail.empty() ? "" : ")");
}

#define SDPA_CUDNN_CHECK(call)                               \
  do {                                                       \
    cudnnStatus_t sdpa_cudnn_st_ = (call);                   \
    if (sdpa_cudnn_st_ != CUDNN_STATUS_SUCCESS) [[unlikely]] \
      ::kernels::cuda::cudnn_fail(sdpa_cudnn_st_, #call);    \
  } while (0)

// An owned backend descriptor with a name for error messages. Move-only.
class Desc {
 public:
  Desc(cudnnBackendDescriptorType_t type, std::string name) : name_(std::move(name)) {
    const cudnnStatus_t st = cudnnBackendCreateDescriptor(type, &d_);
    if (st != CUDNN_STATUS_SUCCESS) cudnn_fail(st, "cudnnBackendCreateDescriptor for " + name_);
  }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)), name_(std::move(o.name_)) {}
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  Desc& operator=(Desc&&) = delete;
  ~Desc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);  // status ignored: nothing to do about it here
  }

  cudnnBackendDescriptor_t get() const { return d_; }

  void set(cudnnBackendAttributeName_t attr, cudnnBackendAttributeType_t type, int64_t count,
           const void* value, const char* attr_name) {
    const cudnnStatus_t st = cudnnBackendSetAttribute(d_, attr, type, count, value);
    if (st != CUDNN_STATUS_SUCCESS)
      cudnn_fail(st, std::string("cudnnBackendSetAttribute(") + attr_name + ") on " + name_);
  }
  void finalize() {
    const cudnnStatus_t st = cudnnBackendFinalize(d_);
    if (st != CUDNN_STATUS_SUCCESS) cudnn_fail(st, "cudnnBackendFinalize of " + name_);
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
  std::string name_;
};

// Names the attribute in the error message.
#define SDPA_SET(desc, attr, type, count, value) (desc).set(attr, type, count, value, #attr)

using Dims = std::array<int64_t, 4>;

Dims row_major(const Dims& d) { return {d[1] * d[2] * d[3], d[2] * d[3], d[3], 1}; }

// The descriptors of one graph. Raw handles stay valid while `owned` holds their Desc.
struct Graph {
  std::vector<Desc> owned;
  std::vector<cudnnBackendDescriptor_t> ops;  // in topological order
  int64_t next_virtual_uid = 100;

  cudnnBackendDescriptor_t keep(Desc d) {
    owned.push_back(std::move(d));
    return owned.back().get();
  }
};

cudnnBackendDescriptor_t tensor(Graph& g, const std::string& name, int64_t uid, cudnnDataType_t dt,
                                const Dims& dims, const Dims& strides, bool is_virtual,
                                bool by_value = false) {
  Desc d(CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor " + name);
  const int64_t alignment = 16;  // the tensor-core engines need 16-byte aligned operands
  SDPA_SET(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
  SDPA_SET(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data());
  SDPA_SET(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data());
  SDPA_SET(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
  SDPA_SET(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
  SDPA_SET(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
  if (by_value) SDPA_SET(d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
  d.finalize();
  return g.keep(std::move(d));
}

cudnnBackendDescriptor_t virtual_tensor(Graph& g, const std::string& name, cudnnDataType_t dt,
                                        const Dims& dims) {
  return tensor(g, name, g.next_virtual_uid++, dt, dims, row_major(dims), true);
}

// y = mode(x [, b [, t]]) computed in `prec`; `axis` >= 0 only for GEN_INDEX.
void pointwise(Graph& g, const std::string& name, cudnnPointwiseMode_t mode, cudnnDataType_t prec,
               cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
               cudnnBackendDescriptor_t y, int64_t axis = -1) {
  Desc pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise descriptor " + name);
  SDPA_SET(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
  SDPA_SET(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
  if (axis >= 0) SDPA_SET(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
  pw.finalize();
  cudnnBackendDescriptor_t pw_raw = g.keep(std::move(pw));

  Desc op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise operation " + name);
  SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
           &pw_raw);
  SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
  if (b) SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
  if (t) SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
  SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
  op.finalize();
  g.ops.push_back(g.keep(std::move(op)));
}

void matmul(Graph& g, const std::string& name, cudnnBackendDescriptor_t a,
            cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c) {
  Desc mm(CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul descriptor " + name);
  const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  SDPA_SET(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
  mm.finalize();
  cudnnBackendDescriptor_t mm_raw = g.keep(std::move(mm));

  Desc op(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul operation " + name);
  SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
  SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
  SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
  SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm_raw);
  op.finalize();
  g.ops.push_back(g.keep(std::move(op)));
}

void reduction(Graph& g, const std::string& name, cudnnReduceTensorOp_t mode,
               cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
  Desc rd(CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction descriptor " + name);
  const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  SDPA_SET(rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
  SDPA_SET(rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
  rd.finalize();
  cudnnBackendDescriptor_t rd_raw = g.keep(std::move(rd));

  Desc op(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction operation " + name);
  SDPA_SET(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
  SDPA_SET(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
  SDPA_SET(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd_raw);
  op.finalize();
  g.ops.push_back(g.keep(std::move(op)));
}

enum Uid : int64_t { kQ = 1, kK = 2, kV = 3, kO = 4, kStats = 5, kScale = 6, kNegInf = 7 };

struct PlanKey {
  int64_t B, H, Nq, Nk, D;
  bool causal;
  auto tie() const { return std::tie(B, H, Nq, Nk, D, causal); }
  bool operator<(const PlanKey& o) const { return tie() < o.tie(); }
};

// A finalized execution plan with everything it was built from (kept alive with it: the backend
// does not document which descriptors a plan may still refer to).
struct Plan {
  Graph graph;
  std::vector<Desc> configs;
  std::unique_ptr<Desc> plan;
  int64_t workspace = 0;
};

std::string describe_key(const PlanKey& k) {
  return engine::detail::concat("bf16 [B, H, Nq, Nk, Dh] = [", k.B, ", ", k.H, ", ", k.Nq, ", ",
                                k.Nk, ", ", k.D, "]", k.causal ? ", causal" : "");
}

std::unique_ptr<Plan> build_plan(cudnnHandle_t handle, const PlanKey& key) {
  auto p = std::make_unique<Plan>();
  Graph& g = p->graph;
  const int64_t B = key.B, H = key.H, Nq = key.Nq, Nk = key.Nk, D = key.D;
  const cudnnDataType_t io = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
  const Dims scalar = {1, 1, 1, 1};

  auto q = tensor(g, "Q", kQ, io, {B, H, Nq, D}, row_major({B, H, Nq, D}), false);
  // Kᵀ as a strided view of the contiguous K [B, H, Nk, D].
  auto kt = tensor(g, "K^T", kK, io, {B, H, D, Nk}, {H * Nk * D, Nk * D, 1, D}, false);
  auto v = tensor(g, "V", kV, io, {B, H, Nk, D}, row_major({B, H, Nk, D}), false);
  auto o = tensor(g, "O", kO, io, {B, H, Nq, D}, row_major({B, H, Nq, D}), false);
  auto stats = tensor(g, "Stats", kStats, f32, {B, H, Nq, 1}, row_major({B, H, Nq, 1}), false);
  auto scale = tensor(g, "scale", kScale, f32, scalar, scalar, false, true);

  const Dims sdims = {B, H, Nq, Nk}, rdims = {B, H, Nq, 1};
  auto s = virtual_tensor(g, "S", f32, sdims);
  matmul(g, "Q*K^T", q, kt, s);
  auto ss = virtual_tensor(g, "S*scale", f32, sdims);
  pointwise(g, "scale", CUDNN_POINTWISE_MUL, f32, s, scale, nullptr, ss);
  if (key.causal) {
    auto neg_inf = tensor(g, "-inf", kNegInf, f32, scalar, scalar, false, true);
    auto row = virtual_tensor(g, "row index", CUDNN_DATA_INT32, sdims);
    auto col = virtual_tensor(g, "column index", CUDNN_DATA_INT32, sdims);
    auto keep = virtual_tensor(g, "causal mask", CUDNN_DATA_BOOLEAN, sdims);
    auto masked = virtual_tensor(g, "masked S", f32, sdims);
    pointwise(g, "row index", CUDNN_POINTWISE_GEN_INDEX, f32, ss, nullptr, nullptr, row, 2);
    pointwise(g, "column index", CUDNN_POINTWISE_GEN_INDEX, f32, ss, nullptr, nullptr, col, 3);
    pointwise(g, "row >= column", CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, nullptr,
              keep);
    // BINARY_SELECT: y = t ? x : b.
    pointwise(g, "causal select", CUDNN_POINTWISE_BINARY_SELECT, f32, ss, neg_inf, keep, masked);
    ss = masked;
  }
  auto mx = virtual_tensor(g, "row max", f32, rdims);
  reduction(g, "row max", CUDNN_REDUCE_TENSOR_MAX, ss, mx);
  auto shifted = virtual_tensor(g, "S - max", f32, sdims);
  pointwise(g, "subtract max", CUDNN_POINTWISE_SUB, f32, ss, mx, nullptr, shifted);
  auto e = virtual_tensor(g, "exp", f32, sdims);
  pointwise(g, "exp", CUDNN_POINTWISE_EXP, f32, shifted, nullptr, nullptr, e);
  auto sum = virtual_tensor(g, "row sum", f32, rdims);
  reduction(g, "row sum", CUDNN_REDUCE_TENSOR_ADD, e, sum);
  auto log_sum = virtual_tensor(g, "log row sum", f32, rdims);
  pointwise(g, "log", CUDNN_POINTWISE_LOG, f32, sum, nullptr, nullptr, log_sum);
  pointwise(g, "stats", CUDNN_POINTWISE_ADD, f32, mx, log_sum, nullptr, stats);
  // P is the A operand of P·V: cuDNN wants it in the i/o type.
  auto prob = virtual_tensor(g, "P", io, sdims);
  pointwise(g, "normalise", CUDNN_POINTWISE_DIV, f32, e, sum, nullptr, prob);
  matmul(g, "P*V", prob, v, o);

  Desc graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
  SDPA_SET(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
           int64_t(g.ops.size()), g.ops.data());
  SDPA_SET(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  graph.finalize();
  cudnnBackendDescriptor_t graph_raw = g.keep(std::move(graph));

  Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "engine heuristics");
  const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  SDPA_SET(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
           &graph_raw);
  SDPA_SET(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
  heur.finalize();
  int64_t count = 0;
  SDPA_CUDNN_CHECK(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                            CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr));
  ENGINE_CHECK(count > 0, kOp, ": cuDNN's heuristics offer no engine for this attention graph");
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    p->configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR,
                            "engine config " + std::to_string(i));
    raw.push_back(p->configs.back().get());
  }
  int64_t returned = 0;
  SDPA_CUDNN_CHECK(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                            CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &returned,
                                            raw.data()));
  ENGINE_CHECK(returned > 0, kOp, ": cuDNN's heuristics returned no engine config");

  // The first config (best first) whose plan finalizes; the others may not support the shape.
  std::string last_failure;
  for (int64_t i = 0; i < std::min(returned, count); ++i) {
    auto plan = std::make_unique<Desc>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR,
                                       "execution plan " + std::to_string(i));
    SDPA_SET(*plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
    SDPA_SET(*plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
             &raw[i]);
    const cudnnStatus_t st = cudnnBackendFinalize(plan->get());
    if (st != CUDNN_STATUS_SUCCESS) {
      const std::string detail = last_error();
      last_failure =
          std::string(cudnnGetErrorString(st)) + (detail.empty() ? "" : " (" + detail + ")");
      continue;
    }
    int64_t ws = 0, n = 0;
    SDPA_CUDNN_CHECK(cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                              CUDNN_TYPE_INT64, 1, &n, &ws));
    ENGINE_CHECK(ws >= 0, kOp, ": cuDNN reported a negative workspace size ", ws);
    p->plan = std::move(plan);
    p->workspace = ws;
    return p;
  }
  ENGINE_FAIL(
      kOp, ": none of the ", returned,
      " engine configs cuDNN's heuristics offer finalizes; the last one said: ", last_failure);
}

struct State {
  std::mutex mutex;
  cudnnHandle_t handle = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
};

// Created on first use and never destroyed (like the cuBLAS handles): at process exit the CUDA
// context may already be gone.
State& state() {
  static State* s = new State;
  return *s;
}

void check_environment() {
  const size_t version = cudnnGetVersion();
  ENGINE_CHECK(version / 10000 == CUDNN_MAJOR, kOp, ": built against cuDNN ", CUDNN_MAJOR, ".",
               CUDNN_MINOR, " but the loaded libcudnn is version ", version);
  int dev = 0, major = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  ENGINE_CHECK(major >= 8, kOp, ": cuDNN's fused flash attention needs sm_80 or newer, device ",
               dev, " is sm_", major, "x");
}

}  // namespace

AttentionResult sdpa_cudnn(const Tensor& q, const Tensor& k, const Tensor& v,
                           const AttentionOptions& opts) {
  for (const Tensor* t : {&q, &k, &v}) {
    engine::check_dim(*t, 4, kOp, "q/k/v");
    ENGINE_CHECK(t->device() == device() && t->is_contiguous(), kOp,
                 ": expects contiguous [B, H, N, Dh] tensors on ", device(), ", got ",
                 t->describe());
    ENGINE_CHECK(
        t->dtype() == DType::bf16, kOp,
        ": cuDNN's fused flash attention supports fp16/bf16 only; q, k, v must be bf16, got ",
        t->describe());
    ENGINE_CHECK(reinterpret_cast<uintptr_t>(t->raw_data()) % 16 == 0, kOp,
                 ": q, k, v must start 16-byte aligned, got ", t->describe(), " at offset ",
                 t->offset());
  }
  ENGINE_CHECK(!opts.qk_norm, kOp, ": QK LayerNorm is not supported by cuDNN's SDPA");
  ENGINE_CHECK(!opts.key_mask.defined(), kOp,
               ": key_mask is not supported (cuDNN's SDPA takes per-batch sequence lengths)");
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), Nk = k.size(2), D = q.size(3);
  ENGINE_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D && v.shape() == k.shape(), kOp,
               ": shapes q ", q.describe(), ", k ", k.describe(), ", v ", v.describe(),
               " disagree");
  ENGINE_CHECK(!opts.causal || Nq == Nk, kOp, ": causal attention needs Nq == Nk, got ", Nq,
               " and ", Nk);
  ENGINE_CHECK(D % 8 == 0 && D <= 256, kOp,
               ": cuDNN's SDPA needs a head dim that is a multiple of 8 and at most 256, got ", D);
  const double scale_d = opts.scale ? *opts.scale : 1.0 / std::sqrt(double(D));
  ENGINE_CHECK(std::isfinite(scale_d), kOp, ": scale ", scale_d, " is not finite");

  AttentionResult res;
  res.out = Tensor::empty(q.shape(), q.dtype(), device());
  res.lse = Tensor::empty({B, H, Nq}, DType::f32, device());
  if (B * H * Nq == 0) return res;
  ENGINE_CHECK(Nk > 0, kOp, ": needs at least one key");

  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.handle) {
    check_environment();
    SDPA_CUDNN_CHECK(cudnnCreate(&s.handle));
  }
  SDPA_CUDNN_CHECK(cudnnSetStream(s.handle, static_cast<cudaStream_t>(stream())));

  const PlanKey key{B, H, Nq, Nk, D, opts.causal};
  auto it = s.plans.find(key);
  if (it == s.plans.end()) {
    std::unique_ptr<Plan> built;
    try {
      built = build_plan(s.handle, key);
    } catch (const engine::Error& e) {  // name the graph: every message above is about it
      throw engine::Error(std::string(e.what()) + " [graph: " + describe_key(key) + "]");
    }
    it = s.plans.emplace(key, std::move(built)).first;
  }
  const Plan& plan = *it->second;

  // Scalars passed by value: the variant pack points at host memory that lives until execute
  // returns (cuDNN copies them into the launch parameters).
  float scale = float(scale_d);
  float neg_inf = std::numeric_limits<float>::lowest();
  Tensor workspace;
  void* ws_ptr = nullptr;
  if (plan.workspace > 0) {
    workspace = Tensor::empty({(plan.workspace + 7) / 8}, DType::i64, device());
    ws_ptr = workspace.raw_data();
  }
  std::vector<int64_t> uids = {kQ, kK, kV, kO, kStats, kScale};
  std::vector<void*> ptrs = {q.raw_data(),       k.raw_data(),       v.raw_data(),
                             res.out.raw_data(), res.lse.raw_data(), &scale};
  if (opts.causal) {
    uids.push_back(kNegInf);
    ptrs.push_back(&neg_inf);
  }
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
  SDPA_SET(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, int64_t(uids.size()),
           uids.data());
  SDPA_SET(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, int64_t(ptrs.size()),
           ptrs.data());
  SDPA_SET(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws_ptr);
  pack.finalize();
  SDPA_CUDNN_CHECK(cudnnBackendExecute(s.handle, plan.plan->get(), pack.get()));
  return res;
}

}  // namespace kernels::cuda
#endif  // __CUDACC__
