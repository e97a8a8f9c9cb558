// The complete configuration of a run: the model preset (models/presets.h) plus the run, data,
// optimisation, AGD and task settings, with defaults per model family chosen so that a preset's
// default run finishes in minutes on a 2-core CPU and still learns something measurable. Every
// key may be overridden (`--config_overrides`, strict: unknown keys and wrong types are errors);
// the resolved tree is written to the run folder as config.json.
//
// Tasks (AGD, specs/imp.md): each entry of "tasks" is
//   {"name", "kind": "classify" | "contrastive", "data": which examples, "head": classifier (classify),
//    "pairs": [[a, b], ...] (contrastive), "batch", "drop_token", "weight" (random AGD),
//    "interval" (round-robin AGD)}
// ViT family: data "images" (the image dataset of data.dataset).
// IMP: data "image" | "video" | "audio" | "triplet" (video + audio + caption) of the multimodal set;
// classify "label": "class" | "direction".
#pragma once
#include <string>

#include "engine/device.h"
#include "models/config.h"

namespace train {
using models::Json;

// The default run configuration for a model preset.
Json default_run_config(const std::string& model);

// The device of run.device: "cpu", or "cuda" = the CUDA backend this binary links (a GPU in the
// `make cuda` build; the sim, CUDA kernels emulated on the CPU, in the default build). A one-line
// error when no device is present.
engine::Device run_device(const std::string& name);

// A task entry with every key present (defaults filled in), validated.
Json normalize_task(const Json& task, const std::string& family);

}  // namespace train
