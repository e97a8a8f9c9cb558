#include "trainer/schedule.h"

#include <cmath>
#include <numbers>

#include "engine/error.h"

namespace train {

namespace {
void check_rate(double v, const char* field) {
  ENGINE_CHECK(std::isfinite(v) && v >= 0, "schedule: ", field, " must be finite and >= 0, got ",
               v);
}
}  // namespace

void validate(const ScheduleConfig& c) {
  ENGINE_CHECK(c.name == "warmup_cosine" || c.name == "constant" || c.name == "warmup_linear",
               "schedule: unknown name '", c.name,
               "' (expected warmup_cosine, constant or warmup_linear)");
  check_rate(c.peak_lr, "peak_lr");
  check_rate(c.end_lr, "end_lr");
  ENGINE_CHECK(c.warmup_steps >= 0, "schedule: warmup_steps must be >= 0, got ", c.warmup_steps);
  ENGINE_CHECK(c.pre_warmup_steps >= 0, "schedule: pre_warmup_steps must be >= 0, got ",
               c.pre_warmup_steps);
  ENGINE_CHECK(c.total_steps >= 1, "schedule: total_steps must be >= 1, got ", c.total_steps);
  if (c.pre_warmup_steps > 0) {
    check_rate(c.pre_warmup_start, "pre_warmup_start");
    check_rate(c.pre_warmup_end, "pre_warmup_end");
  }
  // A constant schedule has no decay phase, so it may end inside its warmup (a short run).
  if (c.name != "constant")
    ENGINE_CHECK(c.total_steps >= c.pre_warmup_steps + c.warmup_steps,
                 "schedule: total_steps (", c.total_steps,
                 ") must be >= pre_warmup_steps + warmup_steps (", c.pre_warmup_steps, " + ",
                 c.warmup_steps, ")");
}

double learning_rate(const ScheduleConfig& c, int64_t step) {
  validate(c);
  ENGINE_CHECK(step >= 0, "schedule: step must be >= 0, got ", step);
  const int64_t P = c.pre_warmup_steps, W = c.warmup_steps;
  if (step < P)
    return c.pre_warmup_start +
           (c.pre_warmup_end - c.pre_warmup_start) * double(step) / double(P);
  const int64_t w = step - P;
  if (w < W) {
    const double base = P > 0 ? c.pre_warmup_end : 0.0;
    return base + (c.peak_lr - base) * double(w + 1) / double(W);
  }
  if (c.name == "constant") return c.peak_lr;
  const int64_t d = w - W, D = c.total_steps - P - W;
  if (d >= D) return c.end_lr;
  const double t = double(d) / double(D);
  if (c.name == "warmup_linear") return c.end_lr + (c.peak_lr - c.end_lr) * (1.0 - t);
  return c.end_lr + (c.peak_lr - c.end_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * t));
}

}  // namespace train
