// The AGD task sampler (specs/imp.md "AGD"): which task the optimizer step s trains on.
//
//   random       the paper: task i with probability weight_i / sum(weights), drawn from Philox
//                keyed by (seed, step), so the task of a step is a pure function of the step.
//   round_robin  the released code: passes p = 0, 1, 2, ...; pass p runs, in task order, every
//                task i with p % interval_i == 0 (pass 0 runs all of them); the steps enumerate
//                these runs one after another (passes with no task are skipped).
//
// Both modes answer task_at(step) for any step in any order without state (round-robin in
// O(tasks * log step) by counting runs per pass), and counts(steps): how many of the first
// `steps` steps each task got, which is each task's data cursor (batches consumed) on resume.
// The sampler's only state is its cursor (the next step), serialised with the task list so a
// resume with another mixture is caught.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace train {

struct AgdTask {
  std::string name;
  double weight = 1.0;    // random mode
  int64_t interval = 1;   // round-robin mode: runs on every interval-th pass
};

enum class AgdMode { random, round_robin };
AgdMode agd_mode_from_string(const std::string& s);  // "random" | "round_robin"
const char* agd_mode_name(AgdMode m);

class AgdSampler {
 public:
  // Throws naming the task and field for an empty list, duplicate or empty names, weights that
  // are negative / not finite / all zero (random), intervals < 1 (round-robin).
  AgdSampler(std::vector<AgdTask> tasks, AgdMode mode, uint64_t seed);

  int num_tasks() const { return int(tasks_.size()); }
  const std::vector<AgdTask>& tasks() const { return tasks_; }
  AgdMode mode() const { return mode_; }
  uint64_t seed() const { return seed_; }

  // The task (index into tasks()) of 0-based step `step`. Pure: any order, any thread.
  int task_at(int64_t step) const;
  // counts(steps)[i]: the steps among [0, steps) that ran task i.
  std::vector<int64_t> counts(int64_t steps) const;

  // Incremental use: next() returns task_at(cursor) and advances the cursor.
  int next() { return task_at(cursor_++); }
  int64_t cursor() const { return cursor_; }
  void seek(int64_t step);

  // {"mode", "seed", "cursor", "tasks": [{"name", "weight", "interval"}, ...]}.
  nlohmann::json state() const;
  // Restores the cursor; the mode, seed and task list must equal this sampler's (else an error
  // naming what differs: the schedule, hence every task's data cursor, would not continue).
  void load_state(const nlohmann::json& state);

 private:
  // Round-robin: runs in passes [0, p) = sum_i ceil(p / interval_i).
  int64_t runs_before_pass(int64_t p) const;
  // Round-robin: the pass that holds run `step`, and the runs before it.
  void locate(int64_t step, int64_t& pass, int64_t& before) const;

  std::vector<AgdTask> tasks_;
  AgdMode mode_;
  uint64_t seed_;
  std::vector<double> cumulative_;  // random: prefix sums of the weights
  int64_t cursor_ = 0;
};

}  // namespace train
