// Named model presets. A preset is a complete configuration tree (models/config.h) whose keys are
// exactly the settings a user may override; `build_model` turns a (possibly overridden) tree into
// a model. `./train --list-models` prints `presets()`, `--summary` the built model's summary().
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/config.h"
#include "models/model.h"

namespace models {

struct Preset {
  std::string name;
  std::string description;  // one line
  Json config;              // the full tree; config["family"] selects the builder
};

const std::vector<Preset>& presets();
// The configuration of a preset; an unknown name is an error listing the valid ones.
Json preset_config(const std::string& name);
// Builds the model a configuration describes (parameters declared, not yet allocated: build a
// ParamSet to materialise them).
std::shared_ptr<Model> build_model(const Json& config);

// switch-ViT's reference CLI: `--experts N` gives N experts of hidden width 1024 - N/2 + 2 in every
// block, `--noswitch` the dense model, `--dmodel D` the width, `--cifar100` 100 classes.
// Returns the overrides those flags mean for the switch_vit / vit presets.
Json switch_vit_flags(int64_t experts, bool noswitch, int64_t dmodel, bool cifar100);

}  // namespace models
