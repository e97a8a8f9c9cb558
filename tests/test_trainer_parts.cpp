// Trainer building blocks: lr schedules against their closed forms, the Optimizer (AdamW / SGD,
// clipping, layer-wise lr decay) against the kernels' f64 references applied per parameter, the
// AGD task sampler against plain simulations and counting, and checkpoints (round trip, pruning,
// crash leftovers, corrupt files).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <numbers>
#include <set>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "kernels/adamw.h"
#include "models/layers.h"
#include "models/params.h"
#include "tests/helpers.h"
#include "trainer/agd.h"
#include "trainer/checkpoint.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"

using engine::DType;
using engine::Tensor;
using testing::randn;
namespace fs = std::filesystem;

namespace {

// A tiny ViT-shaped module (no forward needed: the tests fill the gradient buffer directly), so
// the parameter names are those layer-wise lr decay reads.
struct TinyBlock : models::Module {
  explicit TinyBlock(int64_t d) : Module("TinyBlock") {
    child("norm1", std::make_shared<models::LayerNorm>(d));
    child("mlp", std::make_shared<models::Linear>(d, d + 1));
  }
};

struct TinyVit : models::Module {
  TinyVit(int layers, int64_t d = 4, int64_t classes = 3) : Module("TinyVit") {
    child("patch_embed", std::make_shared<models::Linear>(5, d));
    param("cls_token", {1, 1, d}, models::Init::normal(0.02), false);
    param("pos_embed", {1, 3, d}, models::Init::normal(0.02), false);
    auto blocks = child("blocks", std::make_shared<models::ModuleList>());
    for (int i = 0; i < layers; ++i)
      blocks->child(std::to_string(i), std::make_shared<TinyBlock>(d));
    child("norm", std::make_shared<models::LayerNorm>(d));
    child("head", std::make_shared<models::Linear>(d, classes));
  }
};

// ---------------------------------------------------------------------------------------------
// Schedule closed forms, written out independently of the implementation's phase logic.
double cosine(double peak, double end, double d, double D) {
  return end + (peak - end) * 0.5 * (1 + std::cos(std::numbers::pi * d / D));
}

train::ScheduleConfig imp_like() {
  train::ScheduleConfig c;
  c.name = "warmup_cosine";
  c.peak_lr = 1e-3;
  c.end_lr = 1e-6;
  c.pre_warmup_steps = 20;
  c.pre_warmup_start = 2e-5;
  c.pre_warmup_end = 5e-6;
  c.warmup_steps = 250;
  c.total_steps = 5000;
  return c;
}

}  // namespace

TEST_CASE("schedule/warmup_cosine: pre-warmup, warmup and cosine at key steps") {
  const auto c = imp_like();
  auto lr = [&](int64_t s) { return train::learning_rate(c, s); };
  CHECK(lr(0) == doctest::Approx(2e-5).epsilon(1e-12));
  CHECK(lr(10) == doctest::Approx(2e-5 + (5e-6 - 2e-5) * 10 / 20.0).epsilon(1e-12));
  CHECK(lr(19) == doctest::Approx(2e-5 + (5e-6 - 2e-5) * 19 / 20.0).epsilon(1e-12));
  CHECK(lr(20) == doctest::Approx(5e-6 + (1e-3 - 5e-6) * 1 / 250.0).epsilon(1e-12));
  CHECK(lr(20 + 124) == doctest::Approx(5e-6 + (1e-3 - 5e-6) * 125 / 250.0).epsilon(1e-12));
  CHECK(lr(269) == doctest::Approx(1e-3).epsilon(1e-12));  // last warmup step reaches the peak
  const double D = 5000 - 270;
  CHECK(lr(270) == doctest::Approx(1e-3).epsilon(1e-12));  // cosine starts at the peak
  CHECK(lr(270 + 1000) == doctest::Approx(cosine(1e-3, 1e-6, 1000, D)).epsilon(1e-12));
  CHECK(lr(270 + 2365) == doctest::Approx((1e-3 + 1e-6) / 2).epsilon(1e-12));  // halfway
  CHECK(lr(4999) == doctest::Approx(cosine(1e-3, 1e-6, D - 1, D)).epsilon(1e-12));
  CHECK(lr(5000) == 1e-6);
  CHECK(lr(123456) == 1e-6);
  // Monotone during the decay.
  for (int64_t s = 271; s < 5000; s += 97) CHECK(lr(s) < lr(s - 1));
}

TEST_CASE("schedule/warmup from zero without pre-warmup; constant and warmup_linear") {
  train::ScheduleConfig c;
  c.peak_lr = 0.4;
  c.end_lr = 0.01;
  c.warmup_steps = 8;
  c.total_steps = 108;
  for (const char* name : {"warmup_cosine", "warmup_linear", "constant"}) {
    CAPTURE(name);
    c.name = name;
    for (int64_t s = 0; s < 8; ++s)
      CHECK(train::learning_rate(c, s) == doctest::Approx(0.4 * double(s + 1) / 8).epsilon(1e-14));
  }
  c.name = "warmup_linear";
  CHECK(train::learning_rate(c, 8) == doctest::Approx(0.4));
  CHECK(train::learning_rate(c, 8 + 25) == doctest::Approx(0.01 + 0.39 * 0.75).epsilon(1e-14));
  CHECK(train::learning_rate(c, 107) == doctest::Approx(0.01 + 0.39 * 0.01).epsilon(1e-14));
  CHECK(train::learning_rate(c, 108) == 0.01);
  c.name = "constant";
  CHECK(train::learning_rate(c, 8) == 0.4);
  CHECK(train::learning_rate(c, 100000) == 0.4);
  c.name = "warmup_cosine";
  c.warmup_steps = 0;  // no warmup: the first step is the peak
  CHECK(train::learning_rate(c, 0) == doctest::Approx(0.4));
  CHECK(train::learning_rate(c, 54) == doctest::Approx(cosine(0.4, 0.01, 54, 108)).epsilon(1e-14));
}

TEST_CASE("schedule/errors name the field") {
  auto c = imp_like();
  c.name = "cosine";
  CHECK_THROWS_CONTAINING(train::learning_rate(c, 0), "unknown name 'cosine'");
  c = imp_like();
  c.warmup_steps = -1;
  CHECK_THROWS_CONTAINING(train::learning_rate(c, 0), "warmup_steps must be >= 0");
  c = imp_like();
  c.total_steps = 100;
  CHECK_THROWS_CONTAINING(train::learning_rate(c, 0), "total_steps (100) must be >=");
  c = imp_like();
  c.peak_lr = NAN;
  CHECK_THROWS_CONTAINING(train::learning_rate(c, 0), "peak_lr must be finite");
  c = imp_like();
  c.pre_warmup_start = -1;
  CHECK_THROWS_CONTAINING(train::learning_rate(c, 0), "pre_warmup_start");
  CHECK_THROWS_CONTAINING(train::learning_rate(imp_like(), -1), "step must be >= 0");
}

// ---------------------------------------------------------------------------------------------
namespace {

// Plain global L2 norm over the parameters' gradient views.
double plain_norm(const models::ParamSet& ps) {
  double s = 0;
  for (const auto& e : ps.entries())
    for (double g : e.var.grad().to_vector<double>()) s += g * g;
  return std::sqrt(s);
}

// Per-parameter reference state: its own parameter copy (a clone: to(f64) of an f64 tensor is
// the same memory) and moments.
struct RefParam {
  Tensor p, m, v, mask;
};

std::vector<RefParam> ref_state(const models::ParamSet& ps) {
  std::vector<RefParam> out;
  for (const auto& e : ps.entries()) {
    const int64_t n = e.shape.numel();
    out.push_back({e.var.data().to(DType::f64).reshape({n}).clone(), Tensor::zeros({n}, DType::f64),
                   Tensor::zeros({n}, DType::f64),
                   Tensor::full({n}, e.decay ? 1.0 : 0.0, DType::f64)});
  }
  return out;
}

// Random gradients in every parameter's view; the alignment padding stays zero, as after a real
// backward pass.
void fill_grads(models::ParamSet& ps, uint64_t stream, double scale) {
  ps.zero_grad();
  for (const auto& e : ps.entries()) {
    Tensor g = e.var.grad();
    g.copy_(randn(e.shape, stream++ * 1000, ps.grad.dtype(), scale));
  }
}

bool is_block1_mlp(const std::string& name) { return name.rfind("blocks.1.mlp.", 0) == 0; }

}  // namespace

TEST_CASE("optimizer/layer decay: ViT layer ids and scales") {
  CHECK(train::vit_layer_id("patch_embed.weight", 3) == 0);
  CHECK(train::vit_layer_id("cls_token", 3) == 0);
  CHECK(train::vit_layer_id("pos_embed", 3) == 0);
  CHECK(train::vit_layer_id("blocks.0.attn.qkv.weight", 3) == 1);
  CHECK(train::vit_layer_id("blocks.2.mlp.fc1.bias", 3) == 3);
  CHECK(train::vit_layer_id("norm.weight", 3) == 4);
  CHECK(train::vit_layer_id("head.weight", 3) == 4);
  CHECK_THROWS_CONTAINING(train::vit_layer_id("blocks.x.mlp", 3), "block index of parameter");
  CHECK_THROWS_CONTAINING(train::vit_layer_id("blocks.3.mlp.w", 3), "num_layers is 3");

  TinyVit model(3);
  models::ParamSet ps(model, 1, DType::f32);
  const auto scales = train::layer_decay_scales(ps, 3, 0.6, is_block1_mlp);
  REQUIRE(scales.size() == ps.entries().size());
  for (size_t i = 0; i < scales.size(); ++i) {
    const std::string& n = ps.entries()[i].name;
    CAPTURE(n);
    double expect;
    if (is_block1_mlp(n)) expect = 1.0;
    else if (n.rfind("patch_embed", 0) == 0 || n == "cls_token" || n == "pos_embed")
      expect = 0.6 * 0.6 * 0.6 * 0.6;
    else if (n.rfind("blocks.0.", 0) == 0) expect = 0.6 * 0.6 * 0.6;
    else if (n.rfind("blocks.1.", 0) == 0) expect = 0.6 * 0.6;
    else if (n.rfind("blocks.2.", 0) == 0) expect = 0.6;
    else expect = 1.0;
    CHECK(scales[i] == doctest::Approx(expect).epsilon(1e-15));
  }
  CHECK_THROWS_CONTAINING(train::layer_decay_scales(ps, 3, 1.5), "decay must be in (0, 1]");
}

TEST_CASE("optimizer/adamw: equals the per-parameter reference with LLRD and clipping") {
  TinyVit model(2);
  models::ParamSet ps(model, 7, DType::f64);
  train::OptimizerConfig cfg;
  cfg.name = "adamw";
  cfg.beta1 = 0.85;
  cfg.beta2 = 0.99;
  cfg.eps = 1e-7;
  cfg.weight_decay = 0.05;
  cfg.max_grad_norm = 1.5;
  const auto scales = train::layer_decay_scales(ps, 2, 0.6, is_block1_mlp);
  train::Optimizer opt(ps, cfg, scales);
  auto ref = ref_state(ps);
  const double lrs[] = {3e-2, 1e-2, 5e-3, 2e-2};
  for (int step = 1; step <= 4; ++step) {
    CAPTURE(step);
    // Large gradients on odd steps (clipping active), small ones on even steps (inactive).
    fill_grads(ps, 100 + step, step % 2 ? 1.0 : 1e-3);
    const double norm = plain_norm(ps);
    const double clip = std::min(1.0, 1.5 / (norm + 1e-6));
    if (step % 2) CHECK(clip < 1.0);
    for (size_t i = 0; i < ref.size(); ++i) {
      kernels::AdamWParams hp;
      hp.lr = lrs[step - 1] * scales[i];
      hp.beta1 = 0.85;
      hp.beta2 = 0.99;
      hp.eps = 1e-7;
      hp.weight_decay = 0.05;
      hp.step = step;
      hp.grad_scale = clip;
      kernels::ref::adamw_step(ref[i].p, ps.entries()[i].var.grad().reshape({-1}), ref[i].m,
                               ref[i].v, ref[i].mask, hp);
    }
    const double got = opt.step(lrs[step - 1]);
    CHECK(got == doctest::Approx(norm).epsilon(1e-12));
    CHECK(opt.last_clip_scale() == doctest::Approx(clip).epsilon(1e-12));
    for (size_t i = 0; i < ref.size(); ++i) {
      CAPTURE(ps.entries()[i].name);
      CHECK_CLOSE(ps.entries()[i].var.data().reshape({-1}), ref[i].p, 1e-12, 1e-15);
    }
  }
  CHECK(opt.steps() == 4);
}

TEST_CASE("optimizer/sgd: nesterov momentum equals the per-parameter reference") {
  TinyVit model(2);
  models::ParamSet ps(model, 3, DType::f64);
  train::OptimizerConfig cfg;
  cfg.name = "sgd";
  cfg.momentum = 0.8;
  cfg.nesterov = true;
  cfg.weight_decay = 0.01;
  cfg.max_grad_norm = 0.7;
  auto scales = train::lr_scales_from(ps, [](const std::string& n) {
    return n.rfind("head.", 0) == 0 ? 1.0 : 0.25;
  });
  train::Optimizer opt(ps, cfg, scales);
  auto ref = ref_state(ps);  // m is used as the momentum buffer
  for (int step = 1; step <= 3; ++step) {
    CAPTURE(step);
    fill_grads(ps, 200 + step, 0.5);
    const double clip = std::min(1.0, 0.7 / (plain_norm(ps) + 1e-6));
    for (size_t i = 0; i < ref.size(); ++i)
      kernels::ref::sgd_momentum_step(ref[i].p, ps.entries()[i].var.grad().reshape({-1}),
                                      ref[i].m, ref[i].mask, 0.1 * scales[i], 0.8, 0.01, true,
                                      clip);
    opt.step(0.1);
    for (size_t i = 0; i < ref.size(); ++i) {
      CAPTURE(ps.entries()[i].name);
      CHECK_CLOSE(ps.entries()[i].var.data().reshape({-1}), ref[i].p, 1e-12, 1e-15);
    }
  }
  // Plain SGD (no momentum) keeps no buffer.
  cfg.momentum = 0;
  cfg.nesterov = false;
  train::Optimizer plain(ps, cfg);
  CHECK(plain.state_tensors().size() == 1);  // just the step
}

// The ranges an optimizer updates with one kernel call each tile the flat buffer, and every entry
// lies inside a range carrying its lr scale and its decay flag; adjacent equal ones are merged.
static void check_ranges(const models::ParamSet& ps, const train::Optimizer& opt,
                  const std::vector<double>& scales) {
  auto scale_of = [&](size_t i) { return scales.empty() ? 1.0 : scales[i]; };
  size_t runs = 0;
  const auto& es = ps.entries();
  for (size_t i = 0; i < es.size(); ++i)
    runs += i == 0 || scale_of(i) != scale_of(i - 1) || es[i].decay != es[i - 1].decay;
  REQUIRE(opt.ranges().size() == runs);
  CHECK(opt.num_kernel_calls_per_step() == int64_t(runs));
  int64_t at = 0;
  for (const auto& r : opt.ranges()) {
    CHECK(r.begin == at);
    at += r.length;
  }
  CHECK(at == ps.data.numel());
  for (size_t i = 0; i < es.size(); ++i) {
    bool found = false;
    for (const auto& r : opt.ranges())
      found = found || (es[i].offset >= r.begin &&
                        es[i].offset + es[i].shape.numel() <= r.begin + r.length &&
                        r.scale == scale_of(i) && r.decay == es[i].decay);
    CAPTURE(es[i].name);
    CHECK(found);
  }
}

TEST_CASE("optimizer/ranges: runs of equal lr scale and decay flag tile the buffer") {
  TinyVit model(3);
  models::ParamSet ps(model, 1, DType::f32);
  train::OptimizerConfig cfg;
  train::Optimizer plain(ps, cfg);
  check_ranges(ps, plain, {});
  const std::vector<double> half(ps.entries().size(), 0.5);
  check_ranges(ps, train::Optimizer(ps, cfg, half), half);

  const auto scales = train::layer_decay_scales(ps, 3, 0.6, is_block1_mlp);
  size_t scale_runs = 0;
  for (size_t i = 0; i < scales.size(); ++i) scale_runs += i == 0 || scales[i] != scales[i - 1];
  CHECK(scale_runs == 6);  // embed, block 0, block 1 norm, block 1 mlp, block 2, norm + head
  train::Optimizer llrd(ps, cfg, scales);
  check_ranges(ps, llrd, scales);
  CHECK(llrd.ranges().size() > plain.ranges().size());
  CHECK_THROWS_CONTAINING(train::Optimizer(ps, cfg, {1.0, 2.0}), "2 lr scales for");
  auto bad = scales;
  bad[3] = -1;
  CHECK_THROWS_CONTAINING(train::Optimizer(ps, cfg, bad), "lr scale of '");
}

TEST_CASE("optimizer/state round trip continues identically") {
  TinyVit model_a(2), model_b(2);
  models::ParamSet a(model_a, 5, DType::f32), b(model_b, 9, DType::f32);
  train::OptimizerConfig cfg;
  cfg.weight_decay = 0.1;
  cfg.max_grad_norm = 1.0;
  const auto scales = train::layer_decay_scales(a, 2, 0.7);
  train::Optimizer oa(a, cfg, scales), ob(b, cfg, scales);
  for (int s = 0; s < 2; ++s) {
    fill_grads(a, 300 + s, 1.0);
    oa.step(1e-2);
  }
  // Copy parameters and optimizer state (as a checkpoint would, through copies) into b.
  b.data.copy_(a.data);
  std::map<std::string, Tensor> state;
  for (auto& [n, t] : oa.state_tensors()) state[n] = t.clone();
  ob.load_state(state);
  CHECK(ob.steps() == 2);
  for (int s = 0; s < 2; ++s) {
    fill_grads(a, 400 + s, 1.0);
    b.grad.copy_(a.grad);
    oa.step(1e-2);
    ob.step(1e-2);
  }
  CHECK(a.data.to_vector<float>() == b.data.to_vector<float>());
  auto sa = oa.state_tensors(), sb = ob.state_tensors();
  for (size_t i = 0; i < sa.size(); ++i)
    CHECK(sa[i].second.to_vector<double>() == sb[i].second.to_vector<double>());
}

TEST_CASE("optimizer/state load errors leave the state untouched") {
  TinyVit model(1), other_model(2);
  models::ParamSet ps(model, 1, DType::f32), other(other_model, 1, DType::f32);
  train::OptimizerConfig cfg;
  train::Optimizer opt(ps, cfg), big(other, cfg);
  fill_grads(ps, 7, 1.0);
  opt.step(1e-2);
  const auto before = opt.state_tensors()[0].second.to_vector<float>();
  std::map<std::string, Tensor> st;
  for (auto& [n, t] : big.state_tensors()) st[n] = t.clone();
  CHECK_THROWS_CONTAINING(opt.load_state(st), "'exp_avg' is f32[");
  CHECK(opt.state_tensors()[0].second.to_vector<float>() == before);
  CHECK(opt.steps() == 1);
  st.clear();
  for (auto& [n, t] : opt.state_tensors()) st[n] = t.clone();
  auto missing = st;
  missing.erase("exp_avg_sq");
  CHECK_THROWS_CONTAINING(opt.load_state(missing), "missing tensor 'exp_avg_sq'");
  auto extra = st;
  extra["momentum_buffer"] = st["exp_avg"];
  CHECK_THROWS_CONTAINING(opt.load_state(extra), "unexpected tensor 'momentum_buffer'");
  auto bad_step = st;
  bad_step["step"] = Tensor::from_vector(std::vector<float>{1.0f}, {1});
  CHECK_THROWS_CONTAINING(opt.load_state(bad_step), "'step' must be an integer tensor");
}

TEST_CASE("optimizer/non-finite gradients skip the update; config errors") {
  TinyVit model(1);
  models::ParamSet ps(model, 1, DType::f32);
  train::OptimizerConfig cfg;
  cfg.max_grad_norm = 1.0;
  train::Optimizer opt(ps, cfg);
  const auto before = ps.data.to_vector<float>();
  fill_grads(ps, 9, 1.0);
  Tensor g = ps.entries()[0].var.grad();
  g.reshape({-1}).narrow(0, 2, 1).fill_(NAN);
  CHECK(std::isnan(opt.step(1e-2)));
  CHECK(opt.last_step_skipped());
  CHECK(opt.steps() == 0);
  CHECK(opt.skipped_steps() == 1);
  CHECK(ps.data.to_vector<float>() == before);
  fill_grads(ps, 9, 1.0);
  CHECK(std::isfinite(opt.step(1e-2)));
  CHECK(!opt.last_step_skipped());
  CHECK(opt.steps() == 1);
  CHECK(ps.data.to_vector<float>() != before);

  auto bad = cfg;
  bad.name = "adam";
  CHECK_THROWS_CONTAINING(train::Optimizer(ps, bad), "unknown name 'adam'");
  bad = cfg;
  bad.beta2 = 1.0;
  CHECK_THROWS_CONTAINING(train::Optimizer(ps, bad), "beta2 must be in [0, 1)");
  bad = cfg;
  bad.max_grad_norm = -1;
  CHECK_THROWS_CONTAINING(train::Optimizer(ps, bad), "max_grad_norm");
  bad = cfg;
  bad.name = "sgd";
  bad.momentum = 0;
  bad.nesterov = true;
  CHECK_THROWS_CONTAINING(train::Optimizer(ps, bad), "nesterov needs momentum");
  CHECK_THROWS_CONTAINING(opt.step(-1.0), "lr must be finite and >= 0");
}

// ---------------------------------------------------------------------------------------------
namespace {

std::vector<train::AgdTask> imp_mixture() {
  // The released IMP config's intervals; weights for the random mode.
  return {{"image_text", 4, 1}, {"image_cls", 3, 1}, {"video_text", 0.5, 12},
          {"video_cls", 1, 5},  {"vat", 0, 12},      {"audio_cls", 1.5, 8}};
}

// The reference code's loop, written out: passes, and in each the tasks whose interval divides it.
std::vector<int> simulate_round_robin(const std::vector<train::AgdTask>& tasks, size_t steps) {
  std::vector<int> order;
  for (int64_t pass = 0; order.size() < steps; ++pass)
    for (size_t i = 0; i < tasks.size() && order.size() < steps; ++i)
      if (pass % tasks[i].interval == 0) order.push_back(int(i));
  return order;
}

}  // namespace

TEST_CASE("agd/random: frequencies match the weights") {
  train::AgdSampler s(imp_mixture(), train::AgdMode::random, 1234);
  const int64_t n = 20000;
  std::vector<int64_t> count(6, 0);
  for (int64_t i = 0; i < n; ++i) ++count[size_t(s.task_at(i))];
  const double total = 4 + 3 + 0.5 + 0 + 1 + 1.5;
  double chi2 = 0;
  int df = -1;
  for (size_t i = 0; i < 6; ++i) {
    const double p = imp_mixture()[i].weight / total;
    CAPTURE(i);
    if (p == 0) {
      CHECK(count[i] == 0);  // weight 0: never drawn
      continue;
    }
    const double mean = n * p, sd = std::sqrt(n * p * (1 - p));
    CHECK(std::abs(double(count[i]) - mean) < 4 * sd);
    chi2 += (count[i] - mean) * (count[i] - mean) / mean;
    ++df;
  }
  CHECK(df == 4);
  CHECK(chi2 < 18.47);  // chi-square, 4 degrees of freedom, p = 0.001
}

TEST_CASE("agd/random: a pure function of (seed, step)") {
  train::AgdSampler s(imp_mixture(), train::AgdMode::random, 99);
  std::vector<int> seq;
  for (int i = 0; i < 2000; ++i) seq.push_back(s.next());
  CHECK(s.cursor() == 2000);
  // Out of order, from another instance.
  train::AgdSampler t(imp_mixture(), train::AgdMode::random, 99);
  for (int64_t i = 1999; i >= 0; i -= 7) CHECK(t.task_at(i) == seq[size_t(i)]);
  // counts() equals plain counting.
  std::vector<int64_t> plain(6, 0);
  for (int i = 0; i < 1234; ++i) ++plain[size_t(seq[size_t(i)])];
  CHECK(t.counts(1234) == plain);
  // Another seed gives another sequence.
  train::AgdSampler u(imp_mixture(), train::AgdMode::random, 100);
  int same = 0;
  for (int i = 0; i < 2000; ++i) same += u.task_at(i) == seq[size_t(i)];
  CHECK(same < 1200);
}

TEST_CASE("agd/round robin: the order of the reference loop") {
  const auto tasks = imp_mixture();
  train::AgdSampler s(tasks, train::AgdMode::round_robin, 0);
  const auto order = simulate_round_robin(tasks, 500);
  for (size_t i = 0; i < 500; ++i) {
    CAPTURE(i);
    CHECK(s.task_at(int64_t(i)) == order[i]);
  }
  for (int64_t i = 499; i >= 0; i -= 13) CHECK(s.task_at(i) == order[size_t(i)]);  // any order
  // No interval 1: passes 1, 5, 7, ... run nothing and are skipped.
  const std::vector<train::AgdTask> sparse = {{"a", 1, 3}, {"b", 1, 4}, {"c", 1, 6}};
  train::AgdSampler sp(sparse, train::AgdMode::round_robin, 0);
  const auto sorder = simulate_round_robin(sparse, 300);
  for (size_t i = 0; i < 300; ++i) CHECK(sp.task_at(int64_t(i)) == sorder[i]);
}

TEST_CASE("agd/round robin: counts equal plain counting, also far into the run") {
  const auto tasks = imp_mixture();
  train::AgdSampler s(tasks, train::AgdMode::round_robin, 0);
  const auto order = simulate_round_robin(tasks, 600);
  std::vector<int64_t> plain(6, 0);
  for (size_t n = 0; n <= 600; ++n) {
    CAPTURE(n);
    CHECK(s.counts(int64_t(n)) == plain);
    if (n < 600) ++plain[size_t(order[n])];
  }
  // Far away: consecutive counts differ by exactly the task of the step, and one full cycle
  // (lcm 120 passes = 120 + 120 + 10 + 24 + 10 + 15 = 299 runs) repeats the pattern.
  const int64_t far = 987654321;
  for (int64_t st = far; st < far + 40; ++st) {
    auto c0 = s.counts(st), c1 = s.counts(st + 1);
    c1[size_t(s.task_at(st))] -= 1;
    CHECK(c0 == c1);
    CHECK(s.task_at(st) == s.task_at(st - 299 * 1000));
  }
  const auto c = s.counts(299 * 3);
  CHECK(c == std::vector<int64_t>{360, 360, 30, 72, 30, 45});
}

TEST_CASE("agd/state round trip and mismatches") {
  train::AgdSampler s(imp_mixture(), train::AgdMode::round_robin, 5);
  for (int i = 0; i < 17; ++i) s.next();
  const auto st = s.state();
  train::AgdSampler t(imp_mixture(), train::AgdMode::round_robin, 5);
  t.load_state(nlohmann::json::parse(st.dump()));
  CHECK(t.cursor() == 17);
  CHECK(t.next() == s.next());
  train::AgdSampler other_mode(imp_mixture(), train::AgdMode::random, 5);
  CHECK_THROWS_CONTAINING(other_mode.load_state(st), "saved with mode round_robin");
  train::AgdSampler other_seed(imp_mixture(), train::AgdMode::round_robin, 6);
  CHECK_THROWS_CONTAINING(other_seed.load_state(st), "saved with seed 5");
  auto tasks = imp_mixture();
  tasks[3].interval = 4;
  train::AgdSampler other_tasks(tasks, train::AgdMode::round_robin, 5);
  CHECK_THROWS_CONTAINING(other_tasks.load_state(st), "task 'video_cls' was saved with weight");
  CHECK_THROWS_CONTAINING(t.load_state(nlohmann::json{{"mode", "round_robin"}}), "missing 'seed'");
}

TEST_CASE("agd/errors") {
  using train::AgdMode;
  using train::AgdSampler;
  CHECK_THROWS_CONTAINING(AgdSampler({}, AgdMode::random, 0), "no tasks");
  CHECK_THROWS_CONTAINING(AgdSampler({{"a", 1, 1}, {"a", 1, 1}}, AgdMode::random, 0),
                          "duplicate task name 'a'");
  CHECK_THROWS_CONTAINING(AgdSampler({{"a", -1, 1}}, AgdMode::random, 0),
                          "task 'a': weight must be finite");
  CHECK_THROWS_CONTAINING(AgdSampler({{"a", 0, 1}}, AgdMode::random, 0), "positive, finite sum");
  CHECK_THROWS_CONTAINING(AgdSampler({{"a", 1, 0}}, AgdMode::round_robin, 0),
                          "task 'a': interval must be in");
  CHECK_THROWS_CONTAINING(train::agd_mode_from_string("rr"), "unknown mode 'rr'");
  AgdSampler s({{"a", 1, 1}}, AgdMode::round_robin, 0);
  CHECK_THROWS_CONTAINING(s.task_at(-1), "step must be in");
}

// ---------------------------------------------------------------------------------------------
namespace {

// A fresh run folder under /tmp, removed at the end of the test.
struct TempRun {
  std::string path;
  explicit TempRun(const char* tag) {
    path = (fs::temp_directory_path() /
            ("trainer_parts_" + std::string(tag) + "_" + std::to_string(::getpid())))
               .string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempRun() { fs::remove_all(path); }
  std::string ck(const std::string& name) const { return path + "/checkpoints/" + name; }
};

// A model + AdamW optimizer that has taken two steps.
struct Trained {
  TinyVit model;
  models::ParamSet ps;
  train::Optimizer opt;
  explicit Trained(uint64_t seed, int layers = 2)
      : model(layers), ps(model, seed, DType::f32), opt(ps, train::OptimizerConfig{}) {
    for (int s = 0; s < 2; ++s) {
      fill_grads(ps, 500 + seed * 10 + uint64_t(s), 1.0);
      opt.step(1e-2);
    }
  }
};

train::TrainerState state_at(int64_t step) {
  train::TrainerState st;
  st.step = step;
  st.seed = 77;
  train::AgdSampler s(imp_mixture(), train::AgdMode::round_robin, 77);
  s.seek(step);
  st.sampler = s.state();
  const auto c = s.counts(step);
  for (size_t i = 0; i < c.size(); ++i) st.data_cursors[imp_mixture()[i].name] = c[i];
  st.extra = {{"note", "hello"}, {"best_acc", 0.25}};
  return st;
}

std::string read_all(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

TEST_CASE("checkpoint/save and load round trip is bit-exact") {
  TempRun run("roundtrip");
  Trained a(1);
  const std::string dir = train::save_checkpoint(run.path, a.ps, &a.opt, state_at(1200), 3);
  CHECK(dir == run.ck("step_00001200"));
  CHECK(read_all(run.ck("latest")) == "step_00001200\n");
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "state.json"})
    CHECK(fs::is_regular_file(dir + "/" + f));
  // PyTorch-style names in the model file.
  const auto file = engine::load_safetensors(dir + "/model.safetensors");
  CHECK(file.contains("blocks.1.mlp.weight"));
  CHECK(file.metadata.at("format") == "pt");

  Trained b(2);
  CHECK(a.ps.data.to_vector<float>() != b.ps.data.to_vector<float>());
  const auto st = train::load_checkpoint(dir, b.ps, &b.opt);
  CHECK(a.ps.data.to_vector<float>() == b.ps.data.to_vector<float>());
  const auto sa = a.opt.state_tensors(), sb = b.opt.state_tensors();
  REQUIRE(sa.size() == sb.size());
  for (size_t i = 0; i < sa.size(); ++i)
    CHECK(sa[i].second.to_vector<double>() == sb[i].second.to_vector<double>());
  CHECK(b.opt.steps() == 2);
  const auto want = state_at(1200);
  CHECK(st.step == 1200);
  CHECK(st.seed == 77);
  CHECK(st.sampler == want.sampler);
  CHECK(st.data_cursors == want.data_cursors);
  CHECK(st.extra == want.extra);
  // The resumed sampler continues where it stopped.
  train::AgdSampler s(imp_mixture(), train::AgdMode::round_robin, 77);
  s.load_state(st.sampler);
  CHECK(s.cursor() == 1200);
  // A run folder resolves to its latest checkpoint; a checkpoint folder to itself.
  CHECK(train::resolve_checkpoint(run.path) == dir);
  CHECK(train::resolve_checkpoint(dir) == dir);
}

TEST_CASE("checkpoint/keep-last-N deletes old ones; re-saving a step replaces it") {
  TempRun run("keep");
  Trained a(1);
  for (int64_t step : {10, 20, 30, 40, 50})
    train::save_checkpoint(run.path, a.ps, &a.opt, state_at(step), 2);
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(run.path + "/checkpoints"))
    names.insert(e.path().filename().string());
  CHECK(names == std::set<std::string>{"latest", "step_00000040", "step_00000050"});
  CHECK(train::find_latest(run.path) == run.ck("step_00000050"));
  // Saving step 50 again (after a resume) replaces it in place.
  Trained b(3);
  train::save_checkpoint(run.path, b.ps, &b.opt, state_at(50), 2);
  Trained c(4);
  train::load_checkpoint(run.ck("step_00000050"), c.ps, &c.opt);
  CHECK(c.ps.data.to_vector<float>() == b.ps.data.to_vector<float>());
  CHECK(fs::exists(run.ck("step_00000040")));
}

TEST_CASE("checkpoint/find_latest ignores .tmp folders and scans without a valid latest") {
  TempRun run("latest");
  CHECK(!train::find_latest(run.path).has_value());
  CHECK_THROWS_CONTAINING(train::resolve_checkpoint(run.path), "neither a checkpoint folder");
  Trained a(1);
  train::save_checkpoint(run.path, a.ps, &a.opt, state_at(5), 0);
  train::save_checkpoint(run.path, a.ps, &a.opt, state_at(7), 0);
  // A crashed save of a later step: a complete-looking .tmp folder.
  fs::copy(run.ck("step_00000007"), run.ck("step_00000009.tmp.4194999"));
  CHECK(train::find_latest(run.path) == run.ck("step_00000007"));
  // latest missing, corrupt, or naming a deleted folder: the highest complete step.
  fs::remove(run.ck("latest"));
  CHECK(train::find_latest(run.path) == run.ck("step_00000007"));
  std::ofstream(run.ck("latest")) << "\x01garbage";
  CHECK(train::find_latest(run.path) == run.ck("step_00000007"));
  std::ofstream(run.ck("latest")) << "step_00000006\n";
  CHECK(train::find_latest(run.path) == run.ck("step_00000007"));
  // An incomplete folder (no state.json) is not a checkpoint.
  fs::create_directories(run.ck("step_00000008"));
  fs::copy(run.ck("step_00000007/model.safetensors"), run.ck("step_00000008/model.safetensors"));
  CHECK(train::find_latest(run.path) == run.ck("step_00000007"));
  // A valid latest wins over a higher step (a run resumed from an older checkpoint).
  std::ofstream(run.ck("latest")) << "step_00000005\n";
  CHECK(train::find_latest(run.path) == run.ck("step_00000005"));
}

TEST_CASE("checkpoint/corrupt or mismatched files give one-line errors and change nothing") {
  TempRun run("corrupt");
  Trained a(1);
  const std::string dir = train::save_checkpoint(run.path, a.ps, &a.opt, state_at(3), 0);
  Trained b(2);
  const auto before = b.ps.data.to_vector<float>();
  const auto opt_before = b.opt.state_tensors()[0].second.to_vector<float>();
  auto unchanged = [&] {
    CHECK(b.ps.data.to_vector<float>() == before);
    CHECK(b.opt.state_tensors()[0].second.to_vector<float>() == opt_before);
  };

  // Mismatched shapes: a model of another width with the same names.
  TinyVit wide(2, 6);
  models::ParamSet wps(wide, 1, DType::f32);
  CHECK_THROWS_CONTAINING(train::load_checkpoint(dir, wps, nullptr),
                          "model.safetensors: parameter 'cls_token' has shape [1, 1, 4] in the "
                          "file but [1, 1, 6] in the model");
  // Names: a deeper model misses its third block in the file.
  Trained deep(1, 3);
  CHECK_THROWS_CONTAINING(train::load_checkpoint(dir, deep.ps, &deep.opt),
                          "parameters of the model are missing (blocks.2.norm1.weight");
  // The optimizer state of another model size is caught before the parameters are touched.
  {
    TempRun run2("corrupt_small");
    Trained small(1, 1);
    const std::string d2 = train::save_checkpoint(run2.path, small.ps, &small.opt, state_at(3), 0);
    fs::copy_file(dir + "/model.safetensors", d2 + "/model.safetensors",
                  fs::copy_options::overwrite_existing);
    CHECK_THROWS_CONTAINING(train::load_checkpoint(d2, b.ps, &b.opt),
                            "optimizer.safetensors: optimizer state: 'exp_avg'");
    unchanged();
  }
  // Another optimizer kind.
  train::OptimizerConfig sgd;
  sgd.name = "sgd";
  train::Optimizer sgd_opt(b.ps, sgd);
  CHECK_THROWS_CONTAINING(train::load_checkpoint(dir, b.ps, &sgd_opt),
                          "state of a adamw optimizer, but the optimizer is sgd");
  // Bad JSON.
  const std::string good_state = read_all(dir + "/state.json");
  std::ofstream(dir + "/state.json") << "{\"step\": 3,";
  CHECK_THROWS_CONTAINING(train::load_checkpoint(dir, b.ps, &b.opt), "state.json: bad JSON");
  std::ofstream(dir + "/state.json") << "{\"format\": \"moe-engine checkpoint\", \"version\": 1}";
  CHECK_THROWS_CONTAINING(train::load_checkpoint(dir, b.ps, &b.opt), "state.json: missing 'step'");
  std::ofstream(dir + "/state.json") << good_state;
  // Truncated model file.
  const std::string model = dir + "/model.safetensors";
  fs::resize_file(model, fs::file_size(model) - 10);
  CHECK_THROWS_CONTAINING(train::load_checkpoint(dir, b.ps, &b.opt), model);
  // Missing files.
  fs::remove(model);
  CHECK_THROWS_CONTAINING(train::load_checkpoint(dir, b.ps, &b.opt),
                          "model.safetensors: missing file");
  fs::remove(dir + "/state.json");
  CHECK_THROWS_CONTAINING(train::load_checkpoint(dir, b.ps, &b.opt), "state.json: missing file");
  CHECK_THROWS_CONTAINING(train::load_checkpoint(run.path + "/nope", b.ps, &b.opt),
                          "no such folder");
  unchanged();
}

TEST_CASE("checkpoint/without optimizer state") {
  TempRun run("noopt");
  Trained a(1), b(2);
  const std::string dir = train::save_checkpoint(run.path, a.ps, nullptr, state_at(4), 0);
  CHECK(!fs::exists(dir + "/optimizer.safetensors"));
  CHECK_THROWS_CONTAINING(train::load_checkpoint(dir, b.ps, &b.opt),
                          "saved without optimizer state");
  train::load_checkpoint(dir, b.ps, nullptr);
  CHECK(a.ps.data.to_vector<float>() == b.ps.data.to_vector<float>());
}
