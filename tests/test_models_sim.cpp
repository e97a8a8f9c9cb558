// Backend parity of whole models: tiny versions of each preset family run forward and backward on
// the CPU and on the `sim` device (the CUDA backend's kernels executed by the emulation layer),
// from identical parameters and inputs; outputs, auxiliary losses and every parameter gradient
// must agree. Models are device-agnostic code, so this checks that every op they use has a CUDA
// implementation consistent with the CPU one.
#include <cmath>

#include "autograd/ops.h"
#include "kernels/cuda/device.h"
#include "models/imp.h"
#include "models/params.h"
#include "models/presets.h"
#include "models/vit.h"
#include "tests/helpers.h"

using namespace models;

namespace {

Json tiny_vit(const char* preset) {
  Json c = preset_config(preset);
  merge_strict(c, Json{{"image_size", 8}, {"patch", 4}, {"channels", 1}, {"classes", 3},
                       {"dim", 64}, {"depth", 2}, {"heads", 2}, {"mlp_hidden", 24}},
               "model");
  if (c["moe"]["type"] != "none") c["moe"]["layers"] = Json::array({1});
  if (c["moe"]["type"] == "soft") {
    c["moe"]["core_experts"] = 2;
    c["moe"]["univ_experts"] = 2;
    c["moe"]["expert_dropout"] = 0.0;
    c["moe"]["moe_drop_path"] = 0.0;
    c["moe"]["noise"] = false;
  }
  return c;
}

struct Run {
  Tensor out, aux, grads;
};

// One forward + backward of `loss_of` on a fresh model built from `cfg` on `dev`.
template <class F>
Run run_on(const Json& cfg, engine::Device dev, F loss_of) {
  auto model = build_model(cfg);
  ParamSet ps(*model, 3, DType::f32, dev);
  Context ctx;
  Var out = loss_of(*model, dev, ctx);
  Var loss = autograd::sum_all(autograd::mul(out, out));
  Var aux = ctx.aux_loss_sum();
  if (aux.defined()) loss = autograd::add(loss, aux);
  loss.backward();
  Run r;
  r.out = out.data().to(engine::Device::cpu());
  r.aux = aux.defined() ? aux.data().to(engine::Device::cpu()) : Tensor::zeros({});
  r.grads = ps.grad.to(engine::Device::cpu());
  return r;
}

template <class F>
void check_parity(const Json& cfg, F loss_of, double tol) {
  const engine::Device sim = kernels::cuda::device();
  Run c = run_on(cfg, engine::Device::cpu(), loss_of);
  Run s = run_on(cfg, sim, loss_of);
  CHECK_CLOSE(s.out, c.out, tol, tol);
  CHECK_CLOSE(s.aux, c.aux, tol, tol);
  CHECK_CLOSE(s.grads, c.grads, tol, tol);
}

}  // namespace

TEST_CASE("models/sim parity: ViT family (dense, switch, expert choice, SpheroMoE) cpu == sim") {
  for (const char* preset : {"vit_tiny", "switch_vit_tiny", "ec_vit_tiny", "spheromoe_tiny"}) {
    CAPTURE(preset);
    Json cfg = tiny_vit(preset);
    Tensor img = testing::randn({2, 8, 8, 1}, 4);
    check_parity(cfg, [&](Model& m, engine::Device dev, Context& ctx) {
      return static_cast<ViT&>(m).forward(Var(img.to(dev)), ctx);
    }, 2e-4);
  }
}

TEST_CASE("models/sim parity: IMP-MoE (vision, text, audio stems, expert choice) cpu == sim") {
  Json cfg = preset_config("imp_moe_tiny");
  merge_strict(cfg, Json{{"dim", 64}, {"depth", 2}, {"heads", 2}, {"mlp_hidden", 24},
                         {"moe", {{"layers", Json::array({1})}}},
                         {"vision", {{"patch", 4}, {"channels", 1}, {"buckets", {2, 2, 2}}}},
                         {"audio", {{"patch", 4}, {"buckets", {2, 2}}}},
                         {"cross_head", {{"hidden", 8}, {"out", 8}}}},
               "model");
  Tensor img = testing::randn({2, 8, 8, 1}, 5), spec = testing::randn({2, 8, 8}, 6);
  Tensor ids = Tensor::from_vector(std::vector<int64_t>{72, 105, 256, 256, 65, 66, 67, 256}, {2, 4});
  check_parity(cfg, [&](Model& m, engine::Device dev, Context& ctx) {
    auto& imp = static_cast<IMP&>(m);
    auto v = imp.encode(Modality::vision, Var(img.to(dev)), ctx);
    auto t = imp.encode(Modality::text, Var(ids.to(dev)), ctx);
    auto a = imp.encode(Modality::audio, Var(spec.to(dev)), ctx);
    Var s = autograd::matmul(imp.project(Modality::vision, Modality::text, v.pooled),
                             imp.project(Modality::text, Modality::vision, t.pooled), false, true);
    return autograd::concat({autograd::div(s, imp.temperature(Modality::vision, Modality::text)),
                             imp.classify("audio", a.pooled)}, 1);
  }, 2e-4);
}
