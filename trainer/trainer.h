// The training loop (DESIGN.md §7): Alternating Gradient Descent over the configured tasks — each
// step runs ONE task's forward and backward and one shared AdamW/SGD update (or, with agd off,
// the weighted sum of every task's loss) — with the learning-rate schedule, gradient clipping,
// progress lines, metrics as JSON lines, atomic checkpoints, exact resume, NaN detection and a
// final evaluation table.
//
// Run folder (run.out):
//   config.json          the resolved configuration
//   metrics.jsonl        one JSON object per step (loss, task, lr, grad norm, throughput, MoE stats)
//   eval.json            the final (or --eval-only) evaluation
//   checkpoints/step_<n>/{model.safetensors, optimizer.safetensors, state.json}, checkpoints/latest
#pragma once
#include <string>

#include "trainer/run_config.h"

namespace train {

struct RunOptions {
  bool resume = false;
  std::string resume_from;  // a run folder or checkpoint directory; empty: run.out
  bool eval_only = false;
  std::string init_from;    // a safetensors file to initialise the model from (e.g. recycled)
};

// Trains (or evaluates) as the configuration says. Returns the process exit code.
int run(const Json& config, const RunOptions& options);

}  // namespace train
