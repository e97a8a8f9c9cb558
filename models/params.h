// The flat parameter buffer of a model (DESIGN.md §1): every parameter is a view of one
// contiguous 1-D `data` tensor and its gradient a view of one `grad` tensor, so the optimizer is
// one fused pass, zeroing gradients is one fill, and a checkpoint is one list of views.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "engine/device.h"
#include "models/module.h"

namespace models {

class ParamSet {
 public:
  struct Entry {
    std::string name;
    Var var;
    Shape shape;
    int64_t offset = 0;  // in elements, into data / grad (multiples of 16: 64-byte aligned f32)
    bool decay = true;
  };

  ParamSet() = default;
  // Allocates data and grad for every parameter of `root` (dtype f32 or f64, on the CPU; the
  // buffers move to `device` after initialisation), initialises each parameter from (seed, its
  // name), and points the module's Vars at views of the buffers with gradient views preset.
  ParamSet(Module& root, uint64_t seed, DType dtype = DType::f32,
           engine::Device device = engine::Device::cpu());

  Tensor data;        // 1-D
  Tensor grad;        // 1-D, zero-initialised; backward accumulates into it
  // 1-D, data's dtype and device: 1 where weight decay applies, 0 elsewhere. Built on demand (the
  // optimizer works from the entries' decay flags instead of a model-sized mask).
  Tensor decay_mask() const;

  const std::vector<Entry>& entries() const { return entries_; }
  int64_t num_parameters() const;  // sum of the parameters' sizes (without alignment padding)
  const Entry& at(const std::string& name) const;  // throws naming the parameter
  bool contains(const std::string& name) const { return index_.count(name) != 0; }

  void zero_grad();
  // The parameters as (name, view) pairs in registration order, e.g. for save_safetensors.
  std::vector<std::pair<std::string, Tensor>> named_tensors() const;
  // Copies tensors into the parameters by name (converting dtype). strict: every parameter must
  // be given and every given name must be a parameter; else only matching names are copied
  // (returns the names that were copied). A shape mismatch is always an error naming both shapes.
  std::vector<std::string> load(const std::map<std::string, Tensor>& tensors, bool strict = true);

 private:
  std::vector<Entry> entries_;
  std::map<std::string, size_t> index_;
};

}  // namespace models
