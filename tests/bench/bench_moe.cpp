// ./bench moe: one MoE layer's forward + backward against a dense MLP with the same active FLOPs
// (issue: switch top-1 dropless and expert choice within 1.3x of the dense MLP's time, SpheroMoE
// within 1.5x). The dense MLP's hidden width is chosen so that its GEMM multiply-accumulates per
// token equal the MoE layer's (macs_per_token(): experts, router, and for SpheroMoE the dispatch
// and combine products), so the ratio measures overhead, not a different amount of work.
#include <cstdio>
#include <memory>

#include "autograd/ops.h"
#include "models/moe_expert_choice.h"
#include "models/moe_token_choice.h"
#include "models/params.h"
#include "models/spheromoe.h"
#include "tests/bench/timing.h"

namespace bench {

namespace {

using models::Context;
using models::FeedForward;

// Seconds per forward + backward of `ffn` on x [B, N, D] (training mode, fresh gradients).
double step_time(FeedForward& ffn, int64_t B, int64_t N, int64_t D) {
  models::ParamSet ps(ffn, 1);
  engine::Tensor x = engine::Tensor::normal({B, N, D}, 7, 1);
  engine::Tensor w = engine::Tensor::normal({B, N, D}, 7, 2);
  uint64_t step = 0;
  return time_it(
      [&] {
        Context ctx(true, 1, ++step);
        autograd::Var xin(x, true);
        autograd::Var y = ffn.forward(xin, ctx);
        autograd::Var loss = autograd::sum_all(autograd::mul(y, autograd::Var(w)));
        autograd::Var aux = ctx.aux_loss_sum();
        if (aux.defined()) loss = autograd::add(loss, aux);
        loss.backward();
      },
      3, 0.5);
}

std::shared_ptr<FeedForward> dense_like(int64_t D, double macs_per_token) {
  models::MLPConfig m;
  m.dim = D;
  m.hidden = std::max<int64_t>(1, int64_t(macs_per_token / (2.0 * D) + 0.5));
  return std::make_shared<models::MLP>(m);
}

void report(const char* what, int64_t T, int64_t D, int64_t E, FeedForward& moe, double limit,
            int64_t B, int64_t N) {
  auto dense = dense_like(D, moe.macs_per_token());
  const double tm = step_time(moe, B, N, D);
  const double td = step_time(*dense, B, N, D);
  const double flops = 3 * 2 * moe.macs_per_token() * T;  // forward + backward ≈ 3 forwards
  std::printf("  %-22s T=%-5lld d=%-4lld E=%-3lld  moe %8.2f ms  dense %8.2f ms  ratio %.2f  "
              "(limit %.1f: %s)  %.1f GF/s\n",
              what, (long long)T, (long long)D, (long long)E, tm * 1e3, td * 1e3, tm / td, limit,
              tm / td <= limit ? "ok" : "OVER", flops / tm / 1e9);
}

}  // namespace

void bench_moe() {
  std::printf("\n== MoE layer forward+backward vs a dense MLP of equal active FLOPs ==\n");
  const int64_t B = 64, N = 128, T = B * N;
  for (int64_t D : {192, 384})
    for (int64_t E : {8, 32}) {
      models::ExpertsConfig ec;
      ec.dim = D;
      ec.hidden = 4 * D;
      ec.num_experts = E;
      models::TokenChoiceConfig tc;
      tc.experts = ec;
      tc.load_balance_weight = 0.01;
      models::TokenChoiceMoE sw(tc);
      report("switch top-1 dropless", T, D, E, sw, 1.3, B, N);
      models::ExpertChoiceConfig xc;
      xc.experts = ec;
      models::ExpertChoiceMoE ecm(xc);
      report("expert choice", T, D, E, ecm, 1.3, B, N);
    }
  // SpheroMoE with as many slots per example as tokens (core experts 4·d wide, universal d).
  for (int64_t D : {192, 384}) {
    models::SpheroMoEConfig s;
    s.dim = D;
    s.core_experts = 64;
    s.univ_experts = 64;
    s.expert_dropout = 0.0;
    s.flops_tokens = N;
    models::SpheroMoE sm(s);
    report("spheromoe 64c+64u", T, D, 128, sm, 1.5, B, N);
  }
}

}  // namespace bench
