// IMP (specs/imp.md): one shared pre-LN transformer encoder for image, video, audio and text, with
// modality stems in front and pooled heads behind. Expert-Choice MoE (or token choice, for the
// ablation) replaces the MLP in the configured blocks; QK LayerNorm in the MoE presets.
//
// Parameter names: stems.<modality>.{embed,pos,pre_proj}.*, blocks.<i>.*, norm.*,
// pool.<modality>.out_proj.*, classifiers.<task>.fc.*, cross.<a>_to_<b>.{fc1,fc2,norm}.*,
// temperature.<a>_<b>.temperature (modalities: vision, audio, text; a, b in that order).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "models/config.h"
#include "models/embed.h"
#include "models/heads.h"
#include "models/model.h"
#include "models/transformer.h"

namespace models {

struct Preset;

class IMP : public Model {
 public:
  explicit IMP(const Json& config);  // the "model" tree of an imp preset (validated here)
  std::string family() const override { return "imp"; }
  std::vector<SummaryRow> summary() const override;

  struct Encoded {
    Var tokens;   // [B, L, D] after the final LayerNorm
    Tensor mask;  // [B, L] padding mask (text) or undefined
    Var pooled;   // [B, D]: per-modality out_proj, then masked mean over tokens
  };
  // input: video [B, T, H, W, C] or image [B, H, W, C] (vision), spectrogram [B, frames, mel]
  // (audio), i64 byte ids [B, L] (text). drop_rate: drop-token rate (training only).
  Encoded encode(Modality m, const Var& input, Context& ctx, double drop_rate = 0.0) const;
  // logits of the classifier named `task` (config "classifiers").
  Var classify(const std::string& task, const Var& pooled) const;
  // The embedding of modality `from` for the pair (from, to): cross-modal head from→to.
  Var project(Modality from, Modality to, const Var& pooled) const;
  // The pair's temperature tau = relu(t) + 1e-6 ([1]); (a, b) and (b, a) share it.
  Var temperature(Modality a, Modality b) const;
  bool has_classifier(const std::string& task) const { return classifiers_.count(task) != 0; }
  std::vector<std::string> classifier_names() const;
  int64_t classifier_classes(const std::string& task) const;
  const std::vector<std::pair<Modality, Modality>>& pairs() const { return pairs_; }

  int64_t dim;
  double summary_drop = 0;
  std::map<Modality, std::shared_ptr<ModalityStem>> stems;
  std::vector<std::shared_ptr<Block>> blocks;
  std::shared_ptr<LayerNorm> norm;
  std::map<Modality, std::shared_ptr<OutputPool>> pools;

 private:
  Json cfg_;
  std::map<std::string, std::shared_ptr<ClassifierHead>> classifiers_;
  std::map<std::string, std::shared_ptr<CrossModalHead>> cross_;
  std::map<std::string, std::shared_ptr<Temperature>> temps_;
  std::vector<std::pair<Modality, Modality>> pairs_;
};

// The imp_* presets and the builder (used by models/presets.cpp).
struct ImpPreset {
  std::string name, description;
  Json config;
};
std::vector<ImpPreset> imp_presets();
std::shared_ptr<Model> build_imp(const Json& config);
Modality modality_from_name(const std::string& name);  // error lists the valid names

}  // namespace models
