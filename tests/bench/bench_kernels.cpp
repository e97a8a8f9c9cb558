// ./bench kernels: the handwritten CUDA kernels on a real GPU, as TFLOP/s or GB/s and the
// fraction of H100 peak (989 TFLOP/s BF16 dense, 3.35 TB/s HBM3). Under the sim (the default
// build) or without a device it says so and skips: sim timings are not benchmarks.
//   (a) fused attention forward / backward vs cuDNN's fused SDPA and the unfused cuBLAS baseline
//   (b) grouped expert matmul vs one cuBLAS GEMM of the same FLOPs (target >= 75%)
//   (c) the fused memory-bound kernels, GB/s of the minimum traffic: every input read once,
//       every output written once (target >= 75% of HBM bandwidth)
// The baselines sdpa_cudnn / sdpa_cublas exist only in the nvcc build (`make cuda`); this file is
// shared by both builds, so it references them weakly (see below).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <initializer_list>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/bias_gelu.h"
#include "kernels/cross_entropy.h"
#include "kernels/cuda/device.h"
#include "kernels/grouped_matmul.h"
#include "kernels/index.h"
#include "kernels/l2norm.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"
#include "kernels/routing.h"
#include "kernels/softmax.h"
#include "tests/bench/timing.h"

// kernels/cuda/sdpa_cudnn.cu and sdpa_cublas.cu compile to nothing under the sim (the normal
// build, whose bench objects `make cuda` links as well). Weak references let the sim build link
// without them: there the addresses are null and the rows say so; build-cuda/bench links the nvcc
// objects, which define them.
namespace kernels::cuda {
__attribute__((weak)) AttentionResult sdpa_cudnn(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 const AttentionOptions& opts);
__attribute__((weak)) AttentionResult sdpa_cublas(const Tensor& q, const Tensor& k, const Tensor& v,
                                                  const AttentionOptions& opts);
}  // namespace kernels::cuda

namespace bench {
namespace {

using engine::Device;
using engine::DType;
using engine::Tensor;

constexpr double kPeakBf16Flops = 989e12;
constexpr double kPeakBytes = 3.35e12;

double time_gpu(const std::function<void()>& f) {
  return time_it([&] {
    f();
    kernels::cuda::synchronize();
  });
}

// Seconds per call, or nothing when f throws; `why` gets the one-line reason.
std::optional<double> try_time(const std::function<void()>& f, std::string& why) {
  try {
    return time_gpu(f);
  } catch (const std::exception& e) {
    why = e.what();
    return std::nullopt;
  }
}

std::string dname(DType dt) { return std::string(engine::dtype_name(dt)); }

double nbytes(std::initializer_list<const Tensor*> ts) {
  double b = 0;
  for (const Tensor* t : ts)
    if (t->defined()) b += double(t->nbytes());
  return b;
}

void report_bw(const std::string& name, double t, double bytes) {
  std::printf("%-52s %9.3f ms %8.1f GB/s %6.1f%% of HBM\n", name.c_str(), t * 1e3, bytes / t * 1e-9,
              100 * bytes / t / kPeakBytes);
}

// Times f (warm-up included) and reports GB/s of `bytes`; a throwing kernel prints its reason.
void bw_row(const std::string& name, double bytes, const std::function<void()>& f) {
  std::string why;
  if (auto t = try_time(f, why)) {
    report_bw(name, *t, bytes);
  } else {
    std::printf("%-52s failed: %s\n", name.c_str(), why.c_str());
  }
}

Tensor randn(const engine::Shape& shape, uint64_t stream, DType dt, const Device& dev,
             double stddev = 1.0) {
  return Tensor::normal(shape, 1234, stream, 0, stddev, dt).to(dev);
}

Tensor random_ids(int64_t n, int64_t range, uint64_t seed, const Device& dev) {
  std::vector<int64_t> ids(static_cast<size_t>(n));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& id : ids) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;  // xorshift64: uniform enough for a benchmark
    id = int64_t(s % uint64_t(range));
  }
  return Tensor::from_vector(ids, {n}).to(dev);
}

// ---- (a) attention ------------------------------------------------------------------------

// One baseline's forward time, or its one-line reason (printed once per distinct reason).
struct Baseline {
  const char* name;
  kernels::AttentionResult (*fn)(const Tensor&, const Tensor&, const Tensor&,
                                 const kernels::AttentionOptions&);
  std::set<std::string> reasons_printed;
};

std::string ratio_cell(Baseline& b, const Tensor& q, const Tensor& k, const Tensor& v,
                       const kernels::AttentionOptions& opts, double t_ours,
                       std::vector<std::string>& notes) {
  std::string why;
  std::optional<double> t;
  if (b.fn == nullptr) {
    why = "not in this build (nvcc-only, `make cuda`)";
  } else {
    t = try_time([&] { auto r = b.fn(q, k, v, opts); }, why);
  }
  if (!t) {
    if (b.reasons_printed.insert(why).second) notes.push_back(std::string(b.name) + ": " + why);
    return "n/a";
  }
  char cell[32];
  std::snprintf(cell, sizeof cell, "%.2fx", *t / t_ours);  // > 1: ours is faster
  return cell;
}

void bench_attention(const Device& dev) {
  std::printf(
      "\n-- (a) fused attention (kernels::cuda::attention_forward / attention_backward)\n"
      "FLOPs: forward 4·B·H·N²·Dh, backward 2.5x that, halved when causal; %% of %.0f "
      "TFLOP/s (BF16 dense peak, also for f32).\n"
      "vs cuDNN / vs cuBLAS: baseline forward time / ours (> 1: ours is faster), same "
      "shape without QK-LN.\n",
      kPeakBf16Flops * 1e-12);
  std::printf("%-40s %9s %8s %6s | %9s %8s %6s | %8s %8s\n", "config", "fwd ms", "TFLOP/s", "%peak",
              "bwd ms", "TFLOP/s", "%peak", "cuDNN", "cuBLAS");
  Baseline cudnn{"cuDNN SDPA (sdpa_cudnn)", &kernels::cuda::sdpa_cudnn, {}};
  Baseline cublas{"cuBLAS unfused (sdpa_cublas)", &kernels::cuda::sdpa_cublas, {}};
  for (DType dt : {DType::bf16, DType::f32}) {
    for (int64_t D : {64, 128}) {
      const int64_t H = 768 / D;  // a 768-wide model
      for (int64_t N : {197, 512, 1024, 2048}) {
        const int64_t B = N == 197 ? 64 : 16384 / N;  // ViT-B batch 64; else 16384 tokens
        struct Variant {
          bool causal, qk_norm;
        };
        std::vector<Variant> variants = {{false, false}};
        if (N != 197) variants.push_back({true, false});  // a ViT is bidirectional
        variants.push_back({false, true});
        Tensor q = randn({B, H, N, D}, 1, dt, dev), k = randn({B, H, N, D}, 2, dt, dev);
        Tensor v = randn({B, H, N, D}, 3, dt, dev), g = randn({B, H, N, D}, 4, dt, dev);
        Tensor w = Tensor::ones({D}, dt, dev);
        for (Variant var : variants) {
          kernels::AttentionOptions opts;
          opts.causal = var.causal;
          opts.qk_norm = var.qk_norm;
          if (var.qk_norm) opts.qk_norm_weight = w;
          char name[96];
          std::snprintf(name, sizeof name, "%s B%lld H%lld N%lld Dh%lld%s%s", dname(dt).c_str(),
                        (long long)B, (long long)H, (long long)N, (long long)D,
                        var.causal ? " causal" : "", var.qk_norm ? " qk-ln" : "");
          const double fwd_flops = 4.0 * B * H * double(N) * N * D * (var.causal ? 0.5 : 1.0);
          std::string why;
          kernels::AttentionResult fwd;
          auto t_fwd =
              try_time([&] { fwd = kernels::cuda::attention_forward(q, k, v, opts); }, why);
          if (!t_fwd) {
            std::printf("%-40s failed: %s\n", name, why.c_str());
            continue;
          }
          auto t_bwd = try_time(
              [&] { auto r = kernels::cuda::attention_backward(g, q, k, v, opts, fwd); }, why);
          char bwd_cells[64];
          if (t_bwd) {
            const double bf = 2.5 * fwd_flops;
            std::snprintf(bwd_cells, sizeof bwd_cells, "%9.3f %8.1f %5.1f%%", *t_bwd * 1e3,
                          bf / *t_bwd * 1e-12, 100 * bf / *t_bwd / kPeakBf16Flops);
          } else {
            std::snprintf(bwd_cells, sizeof bwd_cells, "%9s %8s %6s", "failed", "-", "-");
          }
          std::vector<std::string> notes;
          if (!t_bwd) notes.push_back("backward: " + why);
          std::string r_cudnn = "-", r_cublas = "-";
          if (!var.qk_norm) {
            kernels::AttentionOptions base;
            base.causal = var.causal;
            r_cudnn = ratio_cell(cudnn, q, k, v, base, *t_fwd, notes);
            r_cublas = ratio_cell(cublas, q, k, v, base, *t_fwd, notes);
          }
          std::printf("%-40s %9.3f %8.1f %5.1f%% | %s | %8s %8s\n", name, *t_fwd * 1e3,
                      fwd_flops / *t_fwd * 1e-12, 100 * fwd_flops / *t_fwd / kPeakBf16Flops,
                      bwd_cells, r_cudnn.c_str(), r_cublas.c_str());
          for (const std::string& n : notes) std::printf("    %s\n", n.c_str());
        }
      }
      kernels::cuda::release_cached();  // the unfused baseline's N×N buffers
    }
  }
}

// ---- (b) grouped expert matmul ------------------------------------------------------------

void bench_grouped_matmul(const Device& dev) {
  const int64_t T = 16384, d = 768, h = 3072;
  const double flops = 2.0 * T * d * h;
  std::printf(
      "\n-- (b) grouped expert matmul (kernels::cuda::grouped_matmul), T = %lld tokens, "
      "d %lld, hidden %lld\n"
      "vs ONE cuBLAS GEMM of the same FLOPs (kernels::cuda::matmul on [T, d] x [d, h] and "
      "the matching dgrad / wgrad); target >= 75%%\n",
      (long long)T, (long long)d, (long long)h);
  std::printf("%-34s %-24s %9s %8s %8s %7s\n", "experts (counts)", "op", "ms", "TFLOP/s", "cuBLAS",
              "ratio");
  struct Case {
    std::string name;
    std::vector<int64_t> counts;
  };
  std::vector<Case> cases;
  for (int64_t E : {8, 16, 64}) {
    cases.push_back(
        {"E" + std::to_string(E) + " balanced", std::vector<int64_t>(size_t(E), T / E)});
  }
  {  // Zipf-like loads, every fourth expert empty; the rounding remainder goes to expert 0
    const int64_t E = 64;
    std::vector<double> wgt(static_cast<size_t>(E));
    double total = 0;
    for (int64_t e = 0; e < E; ++e)
      total += wgt[size_t(e)] = e % 4 == 3 ? 0.0 : 1.0 / double(e + 1);
    std::vector<int64_t> counts(static_cast<size_t>(E));
    int64_t used = 0;
    for (int64_t e = 0; e < E; ++e)
      used += counts[size_t(e)] = int64_t(double(T) * wgt[size_t(e)] / total);
    counts[0] += T - used;
    cases.push_back({"E64 skewed (16 empty, max " + std::to_string(counts[0]) + ")", counts});
  }
  for (DType dt : {DType::bf16, DType::f32}) {
    Tensor x = randn({T, d}, 11, dt, dev, 0.1), dy = randn({T, h}, 12, dt, dev, 0.1);
    Tensor w0 = randn({d, h}, 13, dt, dev, 0.02);
    // The reference: one dense GEMM per op with the same M·N·K.
    std::string why;
    auto c_fwd = try_time([&] { Tensor y = kernels::cuda::matmul(x, w0, false, false); }, why);
    auto c_dgrad = try_time([&] { Tensor y = kernels::cuda::matmul(dy, w0, false, true); }, why);
    auto c_wgrad = try_time([&] { Tensor y = kernels::cuda::matmul(x, dy, true, false); }, why);
    if (!c_fwd || !c_dgrad || !c_wgrad)
      std::printf("    cuBLAS reference failed: %s\n", why.c_str());
    for (const Case& c : cases) {
      const int64_t E = int64_t(c.counts.size());
      Tensor counts = Tensor::from_vector(c.counts, {E}).to(dev);
      Tensor w = randn({E, d, h}, 14, dt, dev, 0.02);
      const std::string label = c.name + " " + dname(dt);
      struct Op {
        const char* name;
        std::function<void()> f;
        std::optional<double> ref;
      };
      std::vector<Op> ops = {
          {"fwd x·W[e]", [&] { Tensor y = kernels::cuda::grouped_matmul(x, w, counts, false); },
           c_fwd},
          {"dgrad dy·W[e]^T",
           [&] { Tensor y = kernels::cuda::grouped_matmul(dy, w, counts, true); }, c_dgrad},
          {"wgrad x_e^T·dy_e",
           [&] { Tensor y = kernels::cuda::grouped_matmul_wgrad(x, dy, counts, false); }, c_wgrad},
      };
      for (const Op& op : ops) {
        auto t = try_time(op.f, why);
        if (!t) {
          std::printf("%-34s %-24s failed: %s\n", label.c_str(), op.name, why.c_str());
          continue;
        }
        char ref[16] = "-", ratio[16] = "-";
        if (op.ref) {
          std::snprintf(ref, sizeof ref, "%.1f", flops / *op.ref * 1e-12);
          std::snprintf(ratio, sizeof ratio, "%.0f%%", 100 * *op.ref / *t);
        }
        std::printf("%-34s %-24s %9.3f %8.1f %8s %7s\n", label.c_str(), op.name, *t * 1e3,
                    flops / *t * 1e-12, ref, ratio);
      }
    }
    kernels::cuda::release_cached();
  }
}

// ---- (c) memory-bound kernels -------------------------------------------------------------

void bench_memory_bound(const Device& dev) {
  std::printf(
      "\n-- (c) fused memory-bound kernels: GB/s of the minimum traffic (inputs read once, "
      "outputs written once), %% of %.2f TB/s; target >= 75%%\n",
      kPeakBytes * 1e-12);
  for (DType dt : {DType::bf16, DType::f32}) {
    const std::string s = " " + dname(dt);
    {  // LayerNorm over d = 768
      const int64_t rows = 65536, d = 768;
      Tensor x = randn({rows, d}, 21, dt, dev), g = randn({rows, d}, 22, dt, dev);
      Tensor w = Tensor::ones({d}, dt, dev), b = Tensor::zeros({d}, dt, dev);
      kernels::LayerNormOut out = kernels::cuda::layernorm(x, w, b, 1e-6);
      bw_row("layernorm fwd [65536x768]" + s, nbytes({&x, &w, &b, &out.y, &out.mean, &out.rstd}),
             [&] { out = kernels::cuda::layernorm(x, w, b, 1e-6); });
      kernels::LayerNormGrads gr =
          kernels::cuda::layernorm_backward(g, x, w, out.mean, out.rstd, true);
      bw_row("layernorm bwd" + s,
             nbytes({&g, &x, &w, &out.mean, &out.rstd, &gr.dx, &gr.dweight, &gr.dbias}),
             [&] { gr = kernels::cuda::layernorm_backward(g, x, w, out.mean, out.rstd, true); });
    }
    {  // softmax over rows of 1024 (attention-score-like)
      const int64_t rows = 32768, n = 1024;
      Tensor x = randn({rows, n}, 23, dt, dev), g = randn({rows, n}, 24, dt, dev);
      Tensor y = kernels::cuda::softmax(x, -1);
      bw_row("softmax fwd [32768x1024]" + s, 2 * nbytes({&x}),
             [&] { y = kernels::cuda::softmax(x, -1); });
      bw_row("softmax bwd" + s, 3 * nbytes({&x}),
             [&] { Tensor dx = kernels::cuda::softmax_backward(g, y, -1); });
    }
    {  // bias + GELU on the MLP hidden activations
      const int64_t rows = 16384, n = 3072;
      Tensor x = randn({rows, n}, 25, dt, dev), g = randn({rows, n}, 26, dt, dev);
      Tensor bias = randn({n}, 27, dt, dev, 0.1);
      Tensor y = kernels::cuda::bias_gelu(x, bias);
      bw_row("bias+gelu fwd [16384x3072]" + s, nbytes({&x, &bias, &y}),
             [&] { y = kernels::cuda::bias_gelu(x, bias); });
      kernels::BiasGeluGrads gr = kernels::cuda::bias_gelu_backward(g, x, bias);
      bw_row("bias+gelu bwd" + s, nbytes({&g, &x, &bias, &gr.dx, &gr.dbias}),
             [&] { gr = kernels::cuda::bias_gelu_backward(g, x, bias); });
    }
    {  // softmax cross-entropy over 1000 classes
      const int64_t N = 32768, C = 1000;
      Tensor logits = randn({N, C}, 28, dt, dev, 2.0);
      Tensor targets = random_ids(N, C, 29, dev);
      kernels::CrossEntropyOut ce = kernels::cuda::softmax_cross_entropy(logits, targets);
      bw_row("softmax cross-entropy fwd [32768x1000]" + s,
             nbytes({&logits, &targets, &ce.losses, &ce.lse}),
             [&] { ce = kernels::cuda::softmax_cross_entropy(logits, targets); });
      Tensor g = Tensor::ones({N}, DType::f32, dev);
      Tensor dx = kernels::cuda::softmax_cross_entropy_backward(g, logits, targets, ce.lse);
      bw_row("softmax cross-entropy bwd" + s, nbytes({&g, &logits, &targets, &ce.lse, &dx}), [&] {
        dx = kernels::cuda::softmax_cross_entropy_backward(g, logits, targets, ce.lse);
      });
    }
    {  // L2 normalisation of embeddings
      const int64_t rows = 65536, d = 768;
      Tensor x = randn({rows, d}, 30, dt, dev), g = randn({rows, d}, 31, dt, dev);
      kernels::L2NormOut out = kernels::cuda::l2_normalize(x, 1e-6, -1);
      bw_row("l2-normalise fwd [65536x768]" + s, nbytes({&x, &out.y, &out.inv_norm}),
             [&] { out = kernels::cuda::l2_normalize(x, 1e-6, -1); });
      Tensor dx = kernels::cuda::l2_normalize_backward(g, out.y, out.inv_norm, -1);
      bw_row("l2-normalise bwd" + s, nbytes({&g, &out.y, &out.inv_norm, &dx}),
             [&] { dx = kernels::cuda::l2_normalize_backward(g, out.y, out.inv_norm, -1); });
    }
    {  // embedding gather: only the gathered rows count as read
      const int64_t V = 50000, d = 768, T = 65536;
      Tensor table = randn({V, d}, 32, dt, dev), ids = random_ids(T, V, 33, dev);
      Tensor out = kernels::cuda::embedding(table, ids);
      bw_row("embedding gather [65536 of 50000x768]" + s, nbytes({&ids}) + 2 * nbytes({&out}),
             [&] { out = kernels::cuda::embedding(table, ids); });
    }
    {  // router softmax over 64 experts (fp32 probabilities)
      const int64_t T = 262144, E = 64;
      Tensor logits = randn({T, E}, 34, dt, dev);
      Tensor probs = kernels::cuda::router_softmax(logits);
      bw_row("router softmax [262144x64]" + s, nbytes({&logits, &probs}),
             [&] { probs = kernels::cuda::router_softmax(logits); });
    }
    kernels::cuda::release_cached();
  }
  {  // top-2 per token of fp32 router probabilities (the router's output dtype for either input)
    const int64_t T = 262144, E = 64, k = 2;
    Tensor probs = kernels::cuda::router_softmax(randn({T, E}, 35, DType::f32, dev));
    kernels::TokenChoice tc = kernels::cuda::topk_per_token(probs, k);
    bw_row("router top-2 per token [262144x64] f32", nbytes({&probs, &tc.expert_ids, &tc.gates}),
           [&] { tc = kernels::cuda::topk_per_token(probs, k); });
  }
  {  // fused AdamW over one flat 100M-element buffer: reads p, g, m, v; writes p, m, v
    const int64_t n = 100'000'000;
    Tensor p = Tensor::full({n}, 0.5, DType::f32, dev),
           grad = Tensor::full({n}, 1e-3, DType::f32, dev);
    Tensor m = Tensor::zeros({n}, DType::f32, dev), v = Tensor::zeros({n}, DType::f32, dev);
    kernels::AdamWParams hp;
    bw_row("adamw step [100M] f32", 7.0 * double(n) * 4,
           [&] { kernels::cuda::adamw_step(p, grad, m, v, Tensor(), hp); });
  }
  kernels::cuda::release_cached();
}

}  // namespace

void bench_kernels() {
  std::printf("\n== CUDA kernels\n");
  if (kernels::cuda::device().type == engine::DeviceType::sim) {
    std::printf(
        "this is the sim build (CUDA kernels emulated on the CPU): sim timings are not\n"
        "benchmarks, skipped. Build with `make cuda` and run `build-cuda/bench kernels` on a "
        "GPU.\n");
    return;
  }
  if (!kernels::cuda::available()) {
    std::printf("no CUDA device present on this machine: skipped\n");
    return;
  }
  const Device dev = kernels::cuda::device();
  bench_attention(dev);
  bench_grouped_matmul(dev);
  bench_memory_bound(dev);
}

}  // namespace bench
