// Model presets: parameter counts against the papers' figures, summaries, config overrides, and a
// forward/backward pass of every tiny preset.
#include "autograd/ops.h"
#include "models/imp.h"
#include "models/params.h"
#include "models/presets.h"
#include "models/vit.h"
#include "tests/helpers.h"

using namespace models;

namespace {
std::shared_ptr<Model> build(const std::string& name, const Json& overrides = Json::object()) {
  Json c = preset_config(name);
  merge_strict(c, overrides, "model");
  return build_model(c);
}
}  // namespace

TEST_CASE("presets/switch-vit: parameter counts equal the reference exactly (CIFAR-10)") {
  CHECK(build("vit")->num_parameters() == 12798490);
  CHECK(build("switch_vit")->num_parameters() == 238732426);
  CHECK(build("switch_vit", switch_vit_flags(64, false, 0, false))->num_parameters() == 464669962);
  CHECK(build("switch_vit", switch_vit_flags(0, true, 0, false))->num_parameters() == 12798490);
  // The summary's rows add up to the model's parameters.
  auto m = build("switch_vit");
  CHECK(summary_total(m->summary()).params == 238732426);
  // Top-1 routing: one of 32 experts is active per token.
  const int64_t expert = 300 * 1010 + 1010 + 1010 * 300 + 300;
  const auto rows = m->summary();
  CHECK(rows[1].params - rows[1].active == 31 * expert);
}

TEST_CASE("presets/imp: IMP-B encoder is about 85M parameters; MoE-B has 16 experts in 6 blocks") {
  auto base = std::dynamic_pointer_cast<IMP>(build("imp_base"));
  REQUIRE(base);
  int64_t enc = 0;
  for (const auto& b : base->blocks) enc += b->num_parameters();
  CHECK(enc > 84000000);
  CHECK(enc < 86000000);
  auto moe = std::dynamic_pointer_cast<IMP>(build("imp_moe_base"));
  int64_t moe_blocks = 0;
  for (const auto& b : moe->blocks) moe_blocks += b->mlp->type() != "MLP";
  CHECK(moe_blocks == 6);
  CHECK(moe->blocks[11]->mlp->num_parameters() == 16 * 2 * 768 * 3072 + 768 * 16);
}

TEST_CASE("presets: every preset builds; unknown names and keys are clear errors") {
  for (const auto& p : presets()) {
    CAPTURE(p.name);
    auto m = build_model(p.config);
    CHECK(m->num_parameters() > 0);
    CHECK(summary_total(m->summary()).params == m->num_parameters());
  }
  CHECK_THROWS_CONTAINING(preset_config("vit_huge"), "unknown model 'vit_huge'; valid models: vit");
  Json c = preset_config("vit");
  CHECK_THROWS_CONTAINING(merge_strict(c, Json{{"dmodel", 3}}, "model"),
                          "unknown key 'model.dmodel'; valid keys in 'model': family");
  CHECK_THROWS_CONTAINING(merge_strict(c, Json{{"dim", 3.5}}, "model"),
                          "'model.dim' must be an integer");
  Json bad = preset_config("vit");
  merge_strict(bad, Json{{"heads", 7}}, "model");
  CHECK_THROWS_CONTAINING(build_model(bad), "heads = 7: must divide dim");
}

TEST_CASE("presets: tiny presets run forward and backward and give gradients to every used part") {
  for (const char* name : {"vit_tiny", "switch_vit_tiny", "ec_vit_tiny", "spheromoe_tiny"}) {
    CAPTURE(name);
    auto m = std::dynamic_pointer_cast<ViT>(build(name));
    REQUIRE(m);
    ParamSet ps(*m, 1);
    Context ctx(true, 1, 1);
    Var logits = m->forward(Var(testing::randn({3, 28, 28, 1}, 1)), ctx);
    CHECK(logits.shape() == Shape{3, 10});
    Var loss = autograd::cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{1, 2, 3}, {3}));
    Var aux = ctx.aux_loss_sum();
    if (aux.defined()) loss = autograd::add(loss, aux);
    loss.backward();
    double g = 0;
    for (double v : ps.grad.to_vector<double>()) g += std::fabs(v);
    CHECK(std::isfinite(g));
    CHECK(g > 0);
  }
  for (const char* name : {"imp_tiny", "imp_moe_tiny"}) {
    CAPTURE(name);
    auto m = std::dynamic_pointer_cast<IMP>(build(name));
    REQUIRE(m);
    ParamSet ps(*m, 1);
    Context ctx(true, 1, 1);
    auto img = m->encode(Modality::vision, Var(testing::randn({2, 28, 28, 3}, 2)), ctx);
    auto txt = m->encode(Modality::text,
                         Var(Tensor::from_vector(std::vector<int64_t>{72, 105, 256, 256, 65, 66, 67, 256},
                                                 {2, 4})),
                         ctx);
    CHECK(img.pooled.shape() == Shape{2, 128});
    Var a = m->project(Modality::vision, Modality::text, img.pooled);
    Var b = m->project(Modality::text, Modality::vision, txt.pooled);
    Var s = autograd::div(autograd::matmul(a, b, false, true),
                          m->temperature(Modality::text, Modality::vision));
    Var loss = autograd::cross_entropy(s, Tensor::from_vector(std::vector<int64_t>{0, 1}, {2}));
    loss = autograd::add(loss, autograd::cross_entropy(m->classify("image", img.pooled),
                                                       Tensor::from_vector(std::vector<int64_t>{3, 4}, {2})));
    Var aux = ctx.aux_loss_sum();
    if (aux.defined()) loss = autograd::add(loss, aux);
    loss.backward();
    CHECK(std::isfinite(loss.item()));
    CHECK(ps.at("temperature.vision_text.temperature").var.grad().item() != 0.0);
    double eg = 0;
    for (double v : ps.at("stems.text.embed.embedding").var.grad().to_vector<double>()) eg += std::fabs(v);
    CHECK(eg > 0);
  }
}
