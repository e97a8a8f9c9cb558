// Modules: named trees of parameters and sub-modules, PyTorch-style (`blocks.3.attn.qkv.weight`).
//
// A module declares its parameters in its constructor (name, shape, initialiser, whether weight
// decay applies); no memory is allocated then, so a 464M-parameter preset can be built, counted
// and summarised instantly. `ParamSet` (models/params.h) later allocates one flat buffer for all
// parameters of a model (and one for their gradients), initialises it, and turns every parameter
// into a view of it: one optimizer launch, one checkpoint write.
//
// Forward functions are ordinary methods with their own signatures; they take a `Context` that
// carries the training flag, the random key of this step, and what MoE layers report (auxiliary
// losses, routing statistics).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/var.h"
#include "models/init.h"

namespace models {
using autograd::Var;
using engine::DType;
using engine::Shape;
using engine::Tensor;

// Routing statistics of one MoE layer in one forward pass (plain numbers, for logs).
struct MoEStats {
  std::vector<double> load;   // fraction of assignments per expert (sums to 1)
  double drop_rate = 0;       // fraction of tokens that no expert processed
  double aux_loss = 0;        // load-balance loss value (unweighted), 0 if not computed
  double z_loss = 0;          // router z-loss value (unweighted), 0 if not computed
};

// What a forward pass needs besides its inputs, and what it reports back.
struct Context {
  bool training = false;
  uint64_t seed = 0;   // run seed
  uint64_t step = 0;   // optimizer step: every random draw of a step is keyed by (seed, step)
  // Auxiliary losses (already multiplied by their weights) to add to the task loss.
  std::vector<std::pair<std::string, Var>> aux_losses;
  std::map<std::string, MoEStats> moe_stats;  // by layer name

  Context() = default;
  Context(bool training_, uint64_t seed_, uint64_t step_)
      : training(training_), seed(seed_), step(step_) {}
  // The Philox key of this step and a fresh stream per random op, in forward order, so a step
  // is reproducible from (seed, step) alone (resume, and the backward's regenerated masks).
  uint64_t rng_seed() const;
  uint64_t next_stream() { return next_stream_++; }
  // Sum of the auxiliary losses (an undefined Var when there are none).
  Var aux_loss_sum() const;

 private:
  uint64_t next_stream_ = 1;
};

struct ParamInfo {
  std::string name;   // full dotted name
  Var var;            // data is a view of the flat buffer once materialised
  Shape shape;
  Init init;
  bool decay = true;  // weight decay applies (weight matrices), not norms/biases/positions/temps
};

class Module {
 public:
  explicit Module(std::string type) : type_(std::move(type)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const std::string& type() const { return type_; }

  // Every parameter below this module, in registration order (depth-first), names prefixed.
  std::vector<ParamInfo> parameters(const std::string& prefix = "") const;
  int64_t num_parameters() const;
  // Direct children, in registration order.
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const {
    return children_;
  }
  // Finds a parameter by its name relative to this module (throws naming it if absent).
  Var& parameter(const std::string& name);
  // Registers a sub-module under `name` (its parameters become `name.<...>`).
  template <class M>
  std::shared_ptr<M> child(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

 protected:
  // Declares a parameter; its Var has no data until the model's ParamSet is built.
  Var param(const std::string& name, const Shape& shape, Init init, bool decay);

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  void collect(const std::string& prefix, std::vector<ParamInfo>& out) const;

  std::string type_;
  std::vector<ParamInfo> params_;  // local names
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// A container of numbered children (blocks.0, blocks.1, ...), like torch.nn.ModuleList.
class ModuleList : public Module {
 public:
  ModuleList() : Module("ModuleList") {}
};

// "a" + "." + "b", without a leading dot for an empty prefix.
std::string join_name(const std::string& prefix, const std::string& name);

}  // namespace models
