#include "trainer/agd.h"

#include <cmath>
#include <set>

#include "engine/error.h"
#include "engine/philox.h"

namespace train {

namespace {
// The Philox stream of the task draws ("AGD" in the top bytes), apart from the data loader's
// (0x5A << 56 | epoch) and the forward passes' streams under the same run seed.
constexpr uint64_t kAgdStream = 0x414744ull << 40;
// Bounds that keep every pass/run count far from int64 overflow: passes searched stay below
// interval * (step + 1) <= 2^60, and each task's runs before them below step + 2.
constexpr int64_t kMaxInterval = int64_t(1) << 20;
constexpr int64_t kMaxStep = int64_t(1) << 40;
}  // namespace

AgdMode agd_mode_from_string(const std::string& s) {
  if (s == "random") return AgdMode::random;
  if (s == "round_robin") return AgdMode::round_robin;
  ENGINE_FAIL("agd: unknown mode '", s, "' (expected random or round_robin)");
}

const char* agd_mode_name(AgdMode m) { return m == AgdMode::random ? "random" : "round_robin"; }

AgdSampler::AgdSampler(std::vector<AgdTask> tasks, AgdMode mode, uint64_t seed)
    : tasks_(std::move(tasks)), mode_(mode), seed_(seed) {
  ENGINE_CHECK(!tasks_.empty(), "agd: no tasks");
  std::set<std::string> names;
  double total = 0;
  for (const auto& t : tasks_) {
    ENGINE_CHECK(!t.name.empty(), "agd: a task has an empty name");
    ENGINE_CHECK(names.insert(t.name).second, "agd: duplicate task name '", t.name, "'");
    ENGINE_CHECK(std::isfinite(t.weight) && t.weight >= 0, "agd: task '", t.name,
                 "': weight must be finite and >= 0, got ", t.weight);
    ENGINE_CHECK(t.interval >= 1 && t.interval <= kMaxInterval, "agd: task '", t.name,
                 "': interval must be in [1, 2^20], got ", t.interval);
    total += t.weight;
    cumulative_.push_back(total);
  }
  if (mode_ == AgdMode::random)
    ENGINE_CHECK(total > 0 && std::isfinite(total),
                 "agd: random mode needs a positive, finite sum of task weights, got ", total);
}

int64_t AgdSampler::runs_before_pass(int64_t p) const {
  int64_t n = 0;
  for (const auto& t : tasks_) n += p / t.interval + (p % t.interval != 0);
  return n;
}

void AgdSampler::locate(int64_t step, int64_t& pass, int64_t& before) const {
  int64_t m = kMaxInterval;
  for (const auto& t : tasks_) m = std::min(m, t.interval);
  // runs_before_pass(p) >= ceil(p / m), so pass m * (step + 1) starts after run `step`.
  int64_t lo = 0, hi = m * (step + 1);  // invariant: runs_before(lo) <= step < runs_before(hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (runs_before_pass(mid) <= step) lo = mid;
    else hi = mid;
  }
  pass = lo;
  before = runs_before_pass(lo);
}

int AgdSampler::task_at(int64_t step) const {
  ENGINE_CHECK(step >= 0 && step <= kMaxStep, "agd: step must be in [0, 2^40], got ", step);
  if (mode_ == AgdMode::random) {
    // 53 random bits from two words of the step's Philox block: u in [0, 1).
    const engine::U32x4 b = engine::philox_block(seed_, kAgdStream, uint64_t(step));
    const uint64_t bits = ((uint64_t(b.v[0]) << 32) | b.v[1]) >> 11;
    const double target = double(bits) * 0x1p-53 * cumulative_.back();
    int last_positive = 0;
    for (int i = 0; i < num_tasks(); ++i) {
      if (tasks_[size_t(i)].weight > 0) last_positive = i;
      if (target < cumulative_[size_t(i)]) return i;
    }
    return last_positive;  // target rounded up to the total
  }
  int64_t pass, before;
  locate(step, pass, before);
  int64_t k = step - before;
  for (int i = 0; i < num_tasks(); ++i)
    if (pass % tasks_[size_t(i)].interval == 0 && k-- == 0) return i;
  ENGINE_FAIL("agd: internal error locating step ", step);
}

std::vector<int64_t> AgdSampler::counts(int64_t steps) const {
  ENGINE_CHECK(steps >= 0 && steps <= kMaxStep, "agd: steps must be in [0, 2^40], got ", steps);
  std::vector<int64_t> c(tasks_.size(), 0);
  if (steps == 0) return c;
  if (mode_ == AgdMode::random) {
    for (int64_t s = 0; s < steps; ++s) ++c[size_t(task_at(s))];
    return c;
  }
  int64_t pass, before;
  locate(steps - 1, pass, before);
  int64_t left = steps - before;  // runs of pass `pass` among the first `steps`
  for (size_t i = 0; i < tasks_.size(); ++i) {
    const int64_t k = tasks_[i].interval;
    c[i] = pass / k + (pass % k != 0);
    if (pass % k == 0 && left > 0) {
      ++c[i];
      --left;
    }
  }
  return c;
}

void AgdSampler::seek(int64_t step) {
  ENGINE_CHECK(step >= 0 && step <= kMaxStep, "agd: cursor must be in [0, 2^40], got ", step);
  cursor_ = step;
}

nlohmann::json AgdSampler::state() const {
  nlohmann::json tasks = nlohmann::json::array();
  for (const auto& t : tasks_)
    tasks.push_back({{"name", t.name}, {"weight", t.weight}, {"interval", t.interval}});
  return {{"mode", agd_mode_name(mode_)}, {"seed", seed_}, {"cursor", cursor_}, {"tasks", tasks}};
}

void AgdSampler::load_state(const nlohmann::json& s) {
  try {
    ENGINE_CHECK(s.is_object(), "agd state: expected an object, got ", s.type_name());
    for (const char* key : {"mode", "seed", "cursor", "tasks"})
      ENGINE_CHECK(s.contains(key), "agd state: missing '", key, "'");
    const std::string mode = s.at("mode").get<std::string>();
    ENGINE_CHECK(mode == agd_mode_name(mode_), "agd state: saved with mode ", mode,
                 ", this run uses ", agd_mode_name(mode_));
    const uint64_t seed = s.at("seed").get<uint64_t>();
    ENGINE_CHECK(seed == seed_, "agd state: saved with seed ", seed, ", this run uses ", seed_);
    const auto& tasks = s.at("tasks");
    ENGINE_CHECK(tasks.is_array() && tasks.size() == tasks_.size(), "agd state: saved with ",
                 tasks.is_array() ? tasks.size() : 0, " tasks, this run has ", tasks_.size());
    for (size_t i = 0; i < tasks_.size(); ++i) {
      const auto& t = tasks[i];
      const std::string name = t.at("name").get<std::string>();
      ENGINE_CHECK(name == tasks_[i].name, "agd state: task ", i, " was '", name, "', now '",
                   tasks_[i].name, "'");
      const double w = t.at("weight").get<double>();
      const int64_t k = t.at("interval").get<int64_t>();
      ENGINE_CHECK(w == tasks_[i].weight && k == tasks_[i].interval, "agd state: task '", name,
                   "' was saved with weight ", w, " and interval ", k, ", now ", tasks_[i].weight,
                   " and ", tasks_[i].interval);
    }
    seek(s.at("cursor").get<int64_t>());
  } catch (const nlohmann::json::exception& e) {
    ENGINE_FAIL("agd state: malformed (", e.what(), ")");
  }
}

}  // namespace train
