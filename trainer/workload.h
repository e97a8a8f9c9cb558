// A workload turns tasks into losses: it owns the datasets and the per-task batch streams
// (prefetched on background threads), runs the model on a task's batch, and evaluates on held-out
// data. One implementation per model family: image classification for the ViT family
// (train/vit_workload.cpp), the multimodal AGD mixture for IMP (train/imp_workload.cpp).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "autograd/var.h"
#include "models/model.h"
#include "models/module.h"
#include "trainer/run_config.h"

namespace train {

struct EvalRow {
  std::string task;    // e.g. "image classification", "zero-shot image", "image->text"
  std::string metric;  // e.g. "top1", "R@5"
  double value = 0;
  int64_t examples = 0;
};

class Workload {
 public:
  virtual ~Workload() = default;
  int num_tasks() const { return int(tasks_.size()); }
  const Json& task(int t) const { return tasks_[size_t(t)]; }
  // The loss of task t on its `use`-th batch (a pure function of (seed, t, use)), computed in
  // ctx. `examples` receives the batch size.
  virtual autograd::Var loss(int t, int64_t use, models::Context& ctx, int64_t& examples) = 0;
  // Positions the batch stream of task t so that the next batch is its `use`-th (resume).
  virtual void seek(int t, int64_t use) = 0;
  // Metrics on held-out data (at most max_examples per evaluation), in eval mode.
  virtual std::vector<EvalRow> evaluate(int64_t max_examples, int64_t batch) = 0;
  // One line describing the data (printed at the start of a run).
  virtual std::string describe() const = 0;

 protected:
  std::vector<Json> tasks_;  // normalised task entries
};

// t on device d (t itself when it is undefined or already there): batches are assembled on the
// host and moved to run.device for the step.
inline engine::Tensor on_device(const engine::Tensor& t, engine::Device d) {
  return !t.defined() || t.device() == d ? t : t.to(d);
}

// Builds the workload for a resolved run configuration and its model.
std::unique_ptr<Workload> make_workload(const Json& config, models::Model& model);

// The first n training images of a ViT configuration's dataset, normalised as for training, [n, H,
// W, C] f32: what checkpoint recycling runs the dense source over.
engine::Tensor sample_images(const Json& config, int64_t n);

std::unique_ptr<Workload> make_vit_workload(const Json& config, models::Model& model);
std::unique_ptr<Workload> make_imp_workload(const Json& config, models::Model& model);

}  // namespace train
