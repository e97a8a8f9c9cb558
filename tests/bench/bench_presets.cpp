// ./bench presets: one training forward + backward of every model preset at its own input size
// (batch 2, random inputs), with the time it takes on this machine. Shows that every preset,
// including the paper-size ones, builds and runs on the CPU, and what a step of each costs.
#include <cmath>
#include <cstdio>

#include "autograd/ops.h"
#include "models/imp.h"
#include "models/params.h"
#include "models/presets.h"
#include "models/vit.h"
#include "tests/bench/timing.h"

namespace bench {

void bench_presets() {
  std::printf("\n== every preset: one forward + backward, batch 2, random input ==\n");
  std::printf("  %-20s %15s %12s %10s\n", "preset", "parameters", "input", "seconds");
  for (const auto& p : models::presets()) {
    auto model = models::build_model(p.config);
    models::ParamSet ps(*model, 1);
    models::Context ctx(true, 1, 1);
    const double t0 = now_s();
    autograd::Var loss;
    std::string input;
    if (auto* vit = dynamic_cast<models::ViT*>(model.get())) {
      const auto& c = vit->cfg;
      auto img = engine::Tensor::normal({2, c.image_size, c.image_size, c.channels}, 1, 1);
      input = std::to_string(c.image_size) + "px";
      loss = autograd::cross_entropy(vit->forward(autograd::Var(img), ctx),
                                     engine::Tensor::from_vector(std::vector<int64_t>{0, 1}, {2}));
    } else {
      auto* imp = dynamic_cast<models::IMP*>(model.get());
      const auto& v = p.config.at("vision");
      const int64_t s = v.at("image_size"), ch = v.at("channels");
      auto img = engine::Tensor::normal({2, s, s, ch}, 1, 1);
      input = std::to_string(s) + "px";
      auto enc = imp->encode(models::Modality::vision, autograd::Var(img), ctx);
      loss = autograd::cross_entropy(imp->classify("image", enc.pooled),
                                     engine::Tensor::from_vector(std::vector<int64_t>{0, 1}, {2}));
    }
    autograd::Var aux = ctx.aux_loss_sum();
    if (aux.defined()) loss = autograd::add(loss, aux);
    loss.backward();
    double g = 0;
    for (double x : ps.grad.narrow(0, 0, std::min<int64_t>(ps.grad.numel(), 1 << 20)).to_vector<double>())
      g += x * x;
    std::printf("  %-20s %15lld %12s %10.2f%s\n", p.name.c_str(), (long long)ps.num_parameters(),
                input.c_str(), now_s() - t0, std::isfinite(g) && std::isfinite(loss.item()) ? "" : "  NON-FINITE");
    std::fflush(stdout);
  }
}

}  // namespace bench
