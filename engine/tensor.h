// Tensor: a strided view (shape, strides, offset, dtype) of reference-counted storage.
// Views (reshape where possible, permute, transpose, slice, expand) share storage and copy
// nothing; contiguous(), clone(), to() copy.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/shape.h"
#include "engine/storage.h"

namespace engine {

class Tensor {
 public:
  Tensor() = default;  // undefined tensor (defined() == false)

  // --- creation -------------------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                     Device device = Device::cpu());
  static Tensor arange(int64_t n, DType dtype = DType::i64);
  // Copies `values` (converted to dtype) into a new CPU tensor of `shape`.
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape,
                            DType dtype = dtype_v<T>);
  static Tensor scalar(double value, DType dtype = DType::f32);
  // Philox-driven random tensors: element i draws from stream `stream` of `seed` at index i,
  // so the same (seed, stream) gives the same tensor on every backend.
  static Tensor uniform(const Shape& shape, uint64_t seed, uint64_t stream = 0, double lo = 0,
                        double hi = 1, DType dtype = DType::f32);
  static Tensor normal(const Shape& shape, uint64_t seed, uint64_t stream = 0, double mean = 0,
                       double stddev = 1, DType dtype = DType::f32);
  // Wraps existing storage.
  Tensor(std::shared_ptr<Storage> storage, const Shape& shape, const Shape& strides,
         int64_t offset, DType dtype);

  // --- metadata -------------------------------------------------------------------------
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return shape_.size(); }
  int64_t size(int d) const;    // negative d counts from the end
  int64_t stride(int d) const;
  int64_t offset() const { return offset_; }
  int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }
  size_t element_size() const { return dtype_size(dtype_); }
  size_t nbytes() const { return size_t(numel()) * element_size(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  bool shares_storage(const Tensor& o) const { return storage_ && storage_ == o.storage_; }
  std::string describe() const;  // e.g. "f32[3, 4]" ("f32[3, 4] (sim:0)" off the CPU), for errors

  // Pointer to the first element (storage base + offset).
  void* raw_data() const;
  // Typed pointer; checks that T matches the dtype.
  template <class T>
  T* data() const {
    ENGINE_CHECK(dtype_v<T> == dtype_, "data<", dtype_name(dtype_v<T>), ">() on a tensor of dtype ",
                 dtype_name(dtype_));
    return static_cast<T*>(raw_data());
  }

  // --- views (no copy) ------------------------------------------------------------------
  Tensor view(const Shape& shape) const;     // one dim may be -1; throws if strides forbid it
  Tensor reshape(const Shape& shape) const;  // view when possible, else a contiguous copy
  Tensor flatten() const { return reshape({numel()}); }
  Tensor permute(const std::vector<int>& dims) const;
  Tensor transpose(int a, int b) const;
  Tensor slice(int dim, int64_t start, int64_t end, int64_t step = 1) const;  // python-like bounds
  Tensor narrow(int dim, int64_t start, int64_t length) const;
  Tensor select(int dim, int64_t index) const;  // removes dim
  Tensor expand(const Shape& shape) const;      // broadcast with stride 0
  Tensor unsqueeze(int dim) const;
  Tensor squeeze(int dim) const;

  // --- copies ---------------------------------------------------------------------------
  Tensor contiguous() const;  // self if already contiguous
  Tensor clone() const;       // always a new contiguous tensor
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  // Copies src into this tensor (src is broadcast to this shape; dtypes are converted).
  void copy_(const Tensor& src);
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // --- element access (tests, small host-side logic) ------------------------------------
  double item() const;  // single-element tensors
  double at(std::initializer_list<int64_t> index) const;
  template <class T>
  std::vector<T> to_vector() const;  // row-major, converted to T

 private:
  bool view_strides(const Shape& shape, Shape& new_strides) const;

  std::shared_ptr<Storage> storage_;
  Shape shape_, strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::f32;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// Checks used at the top of ops; messages name the op and the offending tensor.
void check_defined(const Tensor& t, const char* op, const char* arg);
void check_same_shape(const Tensor& a, const Tensor& b, const char* op);
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op);
void check_dim(const Tensor& t, int ndim, const char* op, const char* arg);
void check_cpu(const Tensor& t, const char* op);

// --- template definitions -------------------------------------------------------------------
template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, DType dtype) {
  ENGINE_CHECK(int64_t(values.size()) == shape.numel(), "Tensor::from_vector: ", values.size(),
               " values for shape ", shape, " (", shape.numel(), " elements)");
  Tensor src(std::make_shared<Storage>(values.size() * sizeof(T), Device::cpu()), shape,
             contiguous_strides(shape), 0, dtype_v<T>);
  if (!values.empty()) std::memcpy(src.raw_data(), values.data(), values.size() * sizeof(T));
  return dtype == dtype_v<T> ? src : src.to(dtype);
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = to(Device::cpu()).to(dtype_v<T>).contiguous();
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}

}  // namespace engine
