// Learning-rate schedules, as pure functions of the 0-based optimizer step (so a resumed run gets
// the same rates without any schedule state).
//
// Phases, in order (each may be empty):
//   pre-warmup  s in [0, P):        pre_warmup_start + (pre_warmup_end - pre_warmup_start) * s / P
//   warmup      w = s - P in [0, W): base + (peak - base) * (w + 1) / W, base = pre_warmup_end
//                                    with a pre-warmup, else 0 (torch-style: step 0 is not lr 0)
//   decay       d = s - P - W in [0, D), D = total_steps - P - W:
//     "warmup_cosine"  end + (peak - end) * (1 + cos(pi d / D)) / 2
//     "warmup_linear"  end + (peak - end) * (1 - d / D)
//     "constant"       peak (end_lr unused)
//   after total_steps the decayed schedules stay at end_lr.
// IMP's base recipe: P = 2k from 2e-5 to 5e-6, W = 25k to 1e-3, cosine to 1e-6 at 500k.
#pragma once
#include <cstdint>
#include <string>

namespace train {

struct ScheduleConfig {
  std::string name = "warmup_cosine";  // "warmup_cosine" | "constant" | "warmup_linear"
  double peak_lr = 1e-3;
  double end_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;  // every step of the run, pre-warmup and warmup included
  int64_t pre_warmup_steps = 0;
  double pre_warmup_start = 0.0, pre_warmup_end = 0.0;
};

// Throws engine::Error naming the field ("schedule: warmup_steps must be >= 0, got -3").
void validate(const ScheduleConfig& cfg);

// The learning rate of 0-based step `step` (>= 0). Validates cfg.
double learning_rate(const ScheduleConfig& cfg, int64_t step);

}  // namespace train
