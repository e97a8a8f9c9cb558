// Checkpoints of a run (DESIGN.md §7), one folder per saved step:
//
//   <out>/checkpoints/step_00001200/model.safetensors      the parameters, PyTorch-style names
//                                  /optimizer.safetensors  the optimizer state (flat buffers)
//                                  /state.json             trainer state (step, seed, sampler,
//                                                          data cursors, caller's JSON)
//   <out>/checkpoints/latest                               "step_00001200\n"
//
// Writing is atomic: everything goes into step_<n>.tmp.<pid>/, each file is fsync'ed, the folder
// is renamed into place (the commit point) and only then is `latest` replaced (temp file +
// rename) and are checkpoints beyond the newest keep_last deleted. A crash leaves at worst a
// .tmp folder, which readers ignore and a later save by a live run removes.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "models/params.h"
#include "trainer/optimizer.h"

namespace train {

struct TrainerState {
  int64_t step = 0;        // optimizer steps done (the next step's index)
  uint64_t seed = 0;       // run seed (every random draw is keyed by it)
  nlohmann::json sampler;  // AgdSampler::state(), or null
  std::map<std::string, int64_t> data_cursors;  // per task: batches consumed
  nlohmann::json extra;    // anything else the caller wants back, or null
};

// "<out>/checkpoints" and "step_%08d".
std::string checkpoints_dir(const std::string& out);
std::string checkpoint_name(int64_t step);

// Saves a checkpoint of state.step into <out>/checkpoints/ and returns its folder. keep_last > 0
// keeps the newest keep_last checkpoints with steps up to state.step (this one included) and
// deletes the older ones; checkpoints of later steps (an abandoned branch after resuming from an
// older one) are left alone. 0 keeps all. Saving a step that already exists replaces it.
// `optimizer` may be null (no optimizer.safetensors then; loading with an optimizer says so).
std::string save_checkpoint(const std::string& out, const models::ParamSet& ps,
                            const Optimizer* optimizer, const TrainerState& state,
                            int keep_last = 3);

// The checkpoint to resume <out> from, or nullopt when there is none: the one `latest` names when
// that is a complete checkpoint (model.safetensors and state.json present), else (no `latest`,
// garbage in it, or it names a missing folder) the complete checkpoint with the highest step.
// .tmp folders are never considered. `latest` wins over a higher step so that a run resumed from
// an older checkpoint into the same folder keeps following its own branch.
std::optional<std::string> find_latest(const std::string& out);

// A checkpoint folder itself, or a run folder (then its newest checkpoint; an error if none).
std::string resolve_checkpoint(const std::string& path);

// Loads a checkpoint folder into the parameters (and the optimizer, when given) and returns the
// trainer state. Everything is read and validated before anything is changed; errors are one
// line naming the file and the problem: a missing file, a truncated or malformed safetensors
// file, parameter names or shapes that do not match the model, an optimizer state of another
// kind or size, bad JSON.
TrainerState load_checkpoint(const std::string& dir, models::ParamSet& ps, Optimizer* optimizer);

}  // namespace train
