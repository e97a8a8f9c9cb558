#include "trainer/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <cblas.h>
#include <omp.h>

#include "autograd/ops.h"
#include "engine/allocator.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "models/params.h"
#include "models/presets.h"
#include "models/vit.h"
#include "trainer/agd.h"
#include "trainer/checkpoint.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"
#include "trainer/workload.h"

namespace train {

namespace fs = std::filesystem;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string format_duration(double s) {
  char b[32];
  if (s < 60) std::snprintf(b, sizeof b, "%.0fs", s);
  else if (s < 3600) std::snprintf(b, sizeof b, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(b, sizeof b, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return b;
}

// Writes text to path atomically (temp file + rename).
void write_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    ENGINE_CHECK(f.good(), "cannot write ", tmp);
    f << text;
    f.flush();
    ENGINE_CHECK(f.good(), "writing ", tmp, " failed");
  }
  fs::rename(tmp, path);
}

std::string format_table(const std::vector<EvalRow>& rows) {
  size_t w = 4;
  for (const auto& r : rows) w = std::max(w, r.task.size());
  std::ostringstream s;
  char line[256];
  std::snprintf(line, sizeof line, "  %-*s  %-6s %8s %9s\n", int(w), "evaluation", "metric", "value",
                "examples");
  s << line;
  for (const auto& r : rows) {
    std::snprintf(line, sizeof line, "  %-*s  %-6s %7.2f%% %9lld\n", int(w), r.task.c_str(),
                  r.metric.c_str(), 100 * r.value, (long long)r.examples);
    s << line;
  }
  return s.str();
}

Json rows_json(const std::vector<EvalRow>& rows, int64_t step) {
  Json j = {{"step", step}, {"results", Json::array()}};
  for (const auto& r : rows)
    j["results"].push_back(
        {{"task", r.task}, {"metric", r.metric}, {"value", r.value}, {"examples", r.examples}});
  return j;
}

OptimizerConfig optimizer_config(const Json& o) {
  const Json& op = o.at("optimizer");
  OptimizerConfig c;
  c.name = op.at("name");
  c.beta1 = op.at("beta1");
  c.beta2 = op.at("beta2");
  c.eps = op.at("eps");
  c.weight_decay = op.at("weight_decay");
  c.momentum = op.at("momentum");
  c.nesterov = op.at("nesterov");
  c.max_grad_norm = o.at("max_grad_norm");
  c.skip_nonfinite = false;  // a non-finite loss stops the run before the update
  validate(c);
  return c;
}

ScheduleConfig schedule_config(const Json& o, int64_t steps) {
  const Json& s = o.at("schedule");
  ScheduleConfig c;
  c.name = s.at("name");
  c.peak_lr = o.at("optimizer").at("learning_rate");
  c.end_lr = s.at("end_lr");
  c.warmup_steps = s.at("warmup_steps");
  c.total_steps = steps;
  c.pre_warmup_steps = s.at("pre_warmup_steps");
  c.pre_warmup_start = s.at("pre_warmup_start");
  c.pre_warmup_end = s.at("pre_warmup_end");
  // A run shorter than its warmup (e.g. --steps 20 on a preset with 50) warms up over all of it.
  c.pre_warmup_steps = std::min(c.pre_warmup_steps, steps);
  c.warmup_steps = std::min(c.warmup_steps, steps - c.pre_warmup_steps);
  validate(c);
  return c;
}

// Layer-wise lr decay for the ViT family (MoE layers and the head at full rate).
std::vector<double> lr_scales(const models::Model& model, const models::ParamSet& ps,
                              double decay) {
  if (decay == 1.0) return {};
  const auto* vit = dynamic_cast<const models::ViT*>(&model);
  ENGINE_CHECK(vit != nullptr, "config: optimization.layer_decay applies to ViT models only");
  std::vector<bool> moe(vit->blocks.size());
  for (size_t i = 0; i < moe.size(); ++i) moe[i] = vit->blocks[i]->mlp->type() != "MLP";
  return layer_decay_scales(ps, int(vit->blocks.size()), decay, [moe](const std::string& n) {
    for (size_t i = 0; i < moe.size(); ++i)
      if (moe[i] && n.rfind("blocks." + std::to_string(i) + ".mlp.", 0) == 0) return true;
    return false;
  });
}

bool stderr_is_tty() { return isatty(fileno(stderr)); }

}  // namespace

int run(const Json& config, const RunOptions& opt) {
  const Json& rc = config.at("run");
  const int64_t steps = rc.at("steps"), threads = rc.at("threads");
  const uint64_t seed = rc.at("seed");
  const std::string out = rc.at("out"), device = rc.at("device");
  models::require(steps >= 0, rc, "run", "steps", "must be >= 0");
  models::require(threads >= 1, rc, "run", "threads", "must be >= 1");
  models::require(device == "cpu" || device == "cuda", rc, "run", "device", "must be cpu or cuda");
  const engine::Device dev = run_device(device);
  omp_set_num_threads(int(threads));
  openblas_set_num_threads(int(threads));
  fs::create_directories(out);

  auto model = models::build_model(config.at("model"));
  models::ParamSet ps(*model, seed, engine::DType::f32, dev);
  if (!opt.init_from.empty()) {
    auto file = engine::load_safetensors(opt.init_from);
    ps.load(file.tensors, false);
    std::fprintf(stderr, "initialised %zu parameter tensors from %s\n", file.tensors.size(),
                 opt.init_from.c_str());
  }
  const Json& oc = config.at("optimization");
  Optimizer optimizer(ps, optimizer_config(oc), lr_scales(*model, ps, oc.at("layer_decay")));
  const ScheduleConfig sched = schedule_config(oc, std::max<int64_t>(steps, 1));

  auto workload = make_workload(config, *model);
  std::vector<AgdTask> agd_tasks;
  for (int t = 0; t < workload->num_tasks(); ++t)
    agd_tasks.push_back({workload->task(t).at("name"), workload->task(t).at("weight"),
                         workload->task(t).at("interval")});
  const bool agd = config.at("agd").at("enabled");
  AgdSampler sampler(agd_tasks, agd_mode_from_string(config.at("agd").at("schedule")), seed);

  TrainerState state;
  state.seed = seed;
  std::string resumed_from;
  if (opt.resume || opt.eval_only) {
    const std::string where = opt.resume_from.empty() ? out : opt.resume_from;
    std::string dir;
    try {
      dir = resolve_checkpoint(where);
    } catch (const engine::Error&) {
      if (!opt.eval_only && opt.resume_from.empty()) dir.clear();  // nothing yet: a fresh start
      else throw;
    }
    if (!dir.empty()) {
      state = load_checkpoint(dir, ps, opt.eval_only ? nullptr : &optimizer);
      ENGINE_CHECK(state.seed == seed, "resume: ", dir, " was trained with seed ", state.seed,
                   " but the configuration says ", seed);
      resumed_from = dir;
    }
  }
  if (opt.eval_only) {
    std::fprintf(stderr, "evaluating %s (step %lld) on %s\n",
                 resumed_from.empty() ? "the initial model" : resumed_from.c_str(),
                 (long long)state.step, workload->describe().c_str());
    auto rows = workload->evaluate(rc.at("eval_examples"), rc.at("eval_batch"));
    std::printf("%s", format_table(rows).c_str());
    write_atomic(out + "/eval.json", rows_json(rows, state.step).dump(2) + "\n");
    return 0;
  }
  write_atomic(out + "/config.json", config.dump(2) + "\n");

  std::vector<int64_t> cursors(size_t(workload->num_tasks()), 0);
  if (!resumed_from.empty()) {
    if (!state.sampler.is_null()) sampler.load_state(state.sampler);
    for (int t = 0; t < workload->num_tasks(); ++t) {
      auto it = state.data_cursors.find(workload->task(t).at("name"));
      cursors[size_t(t)] = it == state.data_cursors.end() ? 0 : it->second;
      workload->seek(t, cursors[size_t(t)]);
    }
  }
  // metrics.jsonl keeps the steps before the resume point, so a resumed run's file reads as one run.
  const std::string metrics_path = out + "/metrics.jsonl";
  {
    std::vector<std::string> keep;
    if (!resumed_from.empty()) {
      std::ifstream in(metrics_path);
      for (std::string line; std::getline(in, line);) {
        try {
          if (Json::parse(line).at("step").get<int64_t>() < state.step) keep.push_back(line);
        } catch (const std::exception&) {
        }
      }
    }
    std::string text;
    for (const auto& l : keep) text += l + "\n";
    write_atomic(metrics_path, text);
  }
  std::ofstream metrics(metrics_path, std::ios::app);

  std::fprintf(stderr, "model %s: %s parameters; data: %s\n", model->type().c_str(),
               std::to_string(ps.num_parameters()).c_str(), workload->describe().c_str());
  const std::string where =
      dev.is_cpu() ? std::to_string(threads) + " CPU threads"
      : dev.type == engine::DeviceType::sim
          ? "the sim (CUDA kernels emulated on the CPU: verification speed, not training speed)"
          : "device " + dev.str();
  std::fprintf(stderr, "training %lld steps (%s AGD over %d task%s) on %s; run folder %s%s\n",
               (long long)steps, agd ? agd_mode_name(sampler.mode()) : "off:", workload->num_tasks(),
               workload->num_tasks() == 1 ? "" : "s", where.c_str(), out.c_str(),
               resumed_from.empty() ? "" : (", resumed from " + resumed_from).c_str());

  const int64_t log_every = std::max<int64_t>(1, rc.at("log_every").get<int64_t>());
  const int64_t ckpt_every = rc.at("checkpoint_every"), eval_every = rc.at("eval_every");
  const int keep = int(rc.at("keep_checkpoints").get<int64_t>());
  const bool tty = stderr_is_tty();
  const double t_start = now_s();
  const int64_t first = state.step;
  int64_t samples = 0;
  std::string last_ckpt = resumed_from;
  auto save = [&](int64_t next_step) {
    state.step = next_step;
    state.sampler = sampler.state();
    for (int t = 0; t < workload->num_tasks(); ++t)
      state.data_cursors[workload->task(t).at("name")] = cursors[size_t(t)];
    last_ckpt = save_checkpoint(out, ps, &optimizer, state, keep);
  };

  // Evaluation runs other shapes (its own batch size, no gradients) than the training steps, whose
  // cached blocks it cannot use: hand the cache back first and after, so the peak resident memory
  // stays that of a training step (with the step's blocks kept, a switch-ViT run's peak RSS was
  // reached in the final evaluation, measured).
  auto evaluate = [&] {
    engine::CpuAllocator::release_cached();
    auto rows = workload->evaluate(rc.at("eval_examples"), rc.at("eval_batch"));
    engine::CpuAllocator::release_cached();
    return rows;
  };
  for (int64_t step = state.step; step < steps; ++step) {
    // Host memory of the step, recorded in metrics.jsonl: once every task (shape) has run, its
    // buffers come from the allocator's cache; what still reaches the system is a few small
    // blocks when the loader threads happen to hold more batches in flight than before.
    const engine::AllocatorStats mem0 = engine::CpuAllocator::stats();
    engine::CpuAllocator::reset_peak();
    models::Context ctx(true, seed, uint64_t(step));
    ps.zero_grad();
    autograd::Var loss;
    std::string task_name;
    int64_t examples = 0;
    if (agd) {
      const int t = sampler.task_at(step);
      sampler.seek(step + 1);
      task_name = workload->task(t).at("name");
      loss = workload->loss(t, cursors[size_t(t)]++, ctx, examples);
    } else {
      task_name = "all";
      for (int t = 0; t < workload->num_tasks(); ++t) {
        int64_t ex = 0;
        autograd::Var l = autograd::mul_scalar(workload->loss(t, cursors[size_t(t)]++, ctx, ex),
                                               workload->task(t).at("weight").get<double>());
        loss = loss.defined() ? autograd::add(loss, l) : l;
        examples += ex;
      }
    }
    const double task_loss = loss.item();
    autograd::Var aux = ctx.aux_loss_sum();
    const double aux_value = aux.defined() ? aux.item() : 0.0;
    if (aux.defined()) loss = autograd::add(loss, aux);
    if (!std::isfinite(task_loss) || !std::isfinite(aux_value))
      ENGINE_FAIL("step ", step, ", task ", task_name, ": the loss is ",
                  std::isnan(task_loss + aux_value) ? "NaN" : "infinite",
                  " (task loss ", task_loss, ", auxiliary ", aux_value, "); stopping. ",
                  last_ckpt.empty() ? std::string("No checkpoint was written yet.")
                                    : "The last good checkpoint is " + last_ckpt +
                                          " (continue from it with --resume).");
    loss.backward();
    const double lr = learning_rate(sched, step);
    const double gnorm = optimizer.step(lr);
    samples += examples;

    const double elapsed = now_s() - t_start;
    const double rate = samples / std::max(elapsed, 1e-9);
    const double eta = (steps - step - 1) * elapsed / double(step + 1 - first);
    Json line = {{"step", step},          {"task", task_name}, {"loss", task_loss},
                 {"aux_loss", aux_value}, {"lr", lr},          {"grad_norm", gnorm},
                 {"examples", examples},  {"samples_per_s", rate}, {"time_s", elapsed}};
    const engine::AllocatorStats mem1 = engine::CpuAllocator::stats();
    line["host_memory"] = {{"system_allocs", mem1.system_allocs - mem0.system_allocs},
                           {"system_bytes", mem1.system_bytes - mem0.system_bytes},
                           {"peak_mb", double(mem1.peak_bytes) / (1 << 20)},
                           {"cached_mb", double(mem1.bytes_cached) / (1 << 20)}};
    if (!ctx.moe_stats.empty()) {
      Json moe = Json::object();
      for (const auto& [name, st] : ctx.moe_stats) {
        double mx = 0;
        for (double l : st.load) mx = std::max(mx, l);
        moe[name] = {{"drop_rate", st.drop_rate}, {"max_load", mx}};
      }
      line["moe"] = moe;
    }
    metrics << line.dump() << "\n";
    if ((step + 1) % log_every == 0) metrics.flush();  // readable while the run goes on
    if (tty || (step + 1) % log_every == 0 || step + 1 == steps || step == first) {
      char msg[512];
      std::snprintf(msg, sizeof msg,
                    "step %6lld/%lld | %-16s | loss %8.4f%s | lr %.2e | %7.1f samples/s | ETA %s",
                    (long long)(step + 1), (long long)steps, task_name.c_str(), task_loss,
                    aux.defined() ? (" (+aux " + std::to_string(aux_value).substr(0, 6) + ")").c_str()
                                  : "",
                    lr, rate, format_duration(eta).c_str());
      if (tty) std::fprintf(stderr, "\r%s\033[K%s", msg, (step + 1) % log_every == 0 ? "\n" : "");
      else std::fprintf(stderr, "%s\n", msg);
    }
    if (ckpt_every > 0 && (step + 1) % ckpt_every == 0 && step + 1 < steps) {
      metrics.flush();
      save(step + 1);
    }
    if (eval_every > 0 && (step + 1) % eval_every == 0 && step + 1 < steps) {
      auto rows = evaluate();
      std::fprintf(stderr, "%s", format_table(rows).c_str());
      metrics << Json{{"step", step}, {"eval", rows_json(rows, step + 1)["results"]}}.dump() << "\n";
    }
  }
  metrics.flush();
  if (steps > first || resumed_from.empty()) save(std::max(steps, first));
  std::fprintf(stderr, "%strained %lld steps in %s; checkpoint %s\n", tty ? "\n" : "",
               (long long)(steps - first), format_duration(now_s() - t_start).c_str(),
               last_ckpt.c_str());
  auto rows = evaluate();
  std::printf("%s", format_table(rows).c_str());
  write_atomic(out + "/eval.json", rows_json(rows, steps).dump(2) + "\n");
  return 0;
}

}  // namespace train
