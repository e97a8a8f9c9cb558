// End to end through the autograd stack: a small MLP classifier (Linear → LayerNorm → GELU →
// Linear → cross-entropy) has gradients that match finite differences for every parameter, and
// a few fused AdamW steps over a flat parameter buffer lower its loss.
#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "kernels/adamw.h"
#include "tests/helpers.h"

using autograd::Var;
using engine::DType;
using engine::Tensor;
using testing::randn;

namespace {

// params: w1 [H,D], b1 [H], ln_w [H], ln_b [H], w2 [C,H], b2 [C]
Var mlp_loss(const Var& x, const std::vector<Var>& p, const Tensor& targets) {
  Var h = autograd::linear(x, p[0], p[1]);
  h = autograd::layer_norm(h, p[2], p[3], 1e-5);
  h = autograd::gelu(h, autograd::GeluApprox::tanh);
  Var logits = autograd::linear(h, p[4], p[5]);
  return autograd::cross_entropy(logits, targets, 0.1);
}

}  // namespace

TEST_CASE("mlp: gradients of every parameter match finite differences") {
  const int N = 5, D = 7, H = 9, C = 3;
  Tensor targets = Tensor::from_vector<int64_t>({0, 2, 1, 2, 0}, {N});
  std::vector<Tensor> inputs = {randn({N, D}, 1, DType::f64), randn({H, D}, 2, DType::f64, 0.4),
                                randn({H}, 3, DType::f64, 0.1), randn({H}, 4, DType::f64),
                                randn({H}, 5, DType::f64, 0.1), randn({C, H}, 6, DType::f64, 0.4),
                                randn({C}, 7, DType::f64, 0.1)};
  auto f = [&](const std::vector<Var>& v) {
    std::vector<Var> p(v.begin() + 1, v.end());
    return mlp_loss(v[0], p, targets);
  };
  auto r = autograd::gradcheck(f, inputs);
  INFO(r.detail);
  CHECK(r.ok);
}

TEST_CASE("mlp: AdamW steps on a flat parameter buffer lower the loss") {
  const int N = 32, D = 11, H = 17, C = 4;
  // Parameters are views into one flat buffer, gradients into another (DESIGN §1).
  std::vector<engine::Shape> shapes = {{H, D}, {H}, {H}, {H}, {C, H}, {C}};
  int64_t total = 0;
  for (auto& s : shapes) total += s.numel();
  Tensor flat = Tensor::zeros({total}), flat_grad = Tensor::zeros({total});
  std::vector<Var> params;
  int64_t off = 0;
  uint64_t stream = 10;
  for (auto& s : shapes) {
    Tensor view = flat.narrow(0, off, s.numel()).view(s);
    view.copy_(randn(s, stream++, DType::f32, 0.3));
    Var p(view, true);
    p.set_grad(flat_grad.narrow(0, off, s.numel()).view(s));
    params.push_back(p);
    off += s.numel();
  }
  params[2].mutable_data().fill_(1.0);  // LayerNorm scale
  Tensor x = randn({N, D}, 1);
  std::vector<int64_t> t(N);
  auto xv = x.to_vector<float>();
  for (int i = 0; i < N; ++i) t[i] = (xv[i * D] > 0) + 2 * (xv[i * D + 1] > 0);  // learnable labels
  Tensor targets = Tensor::from_vector(t, {N});
  Tensor m = Tensor::zeros({total}), v = Tensor::zeros({total});
  kernels::AdamWParams hp;
  hp.lr = 0.03;
  double first = 0, last = 0;
  for (int step = 1; step <= 40; ++step) {
    flat_grad.zero_();
    Var loss = mlp_loss(Var(x), params, targets);
    loss.backward();
    if (step == 1) first = loss.item();
    last = loss.item();
    hp.step = step;
    kernels::adamw_step(flat, flat_grad, m, v, Tensor(), hp);
  }
  CHECK(std::isfinite(last));
  CHECK(last < 0.5 * first);
  // Every gradient landed in the flat buffer (no parameter was left out of the graph).
  for (auto& p : params) CHECK(p.grad().shares_storage(flat_grad));
}
