#include "engine/tensor.h"

#include <cmath>
#include <cstring>
#include <numeric>
#include <sstream>

#include "engine/philox.h"
#include "engine/strided.h"

namespace engine {

Tensor::Tensor(std::shared_ptr<Storage> storage, const Shape& shape, const Shape& strides,
               int64_t offset, DType dtype)
    : storage_(std::move(storage)), shape_(shape), strides_(strides), offset_(offset), dtype_(dtype) {
  ENGINE_CHECK(shape.size() == strides.size(), "Tensor: shape ", shape, " and strides ", strides,
               " differ in rank");
  for (int64_t d : shape) ENGINE_CHECK(d >= 0, "Tensor: negative dimension in shape ", shape);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) ENGINE_CHECK(d >= 0, "Tensor::empty: negative dimension in shape ", shape);
  auto st = std::make_shared<Storage>(size_t(shape.numel()) * dtype_size(dtype), device);
  return Tensor(std::move(st), shape, contiguous_strides(shape), 0, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype) { return full(Shape{}, value, dtype); }

Tensor Tensor::arange(int64_t n, DType dtype) {
  Tensor t = empty({n}, DType::i64);
  int64_t* p = t.data<int64_t>();
  std::iota(p, p + n, int64_t(0));
  return t.to(dtype);
}

Tensor Tensor::uniform(const Shape& shape, uint64_t seed, uint64_t stream, double lo, double hi,
                       DType dtype) {
  Tensor t = empty(shape, DType::f64);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i)
    p[i] = lo + (hi - lo) * double(philox_uniform(seed, stream, uint64_t(i)));
  return t.to(dtype);
}

Tensor Tensor::normal(const Shape& shape, uint64_t seed, uint64_t stream, double mean,
                      double stddev, DType dtype) {
  Tensor t = empty(shape, DType::f64);
  double* p = t.data<double>();
  for (int64_t i = 0; i + 1 < t.numel(); i += 2) {
    float z0, z1;
    philox_normal2(seed, stream, uint64_t(i / 2), z0, z1);
    p[i] = mean + stddev * z0;
    p[i + 1] = mean + stddev * z1;
  }
  if (t.numel() % 2) p[t.numel() - 1] = mean + stddev * philox_normal(seed, stream, t.numel() - 1);
  return t.to(dtype);
}

int64_t Tensor::size(int d) const { return shape_[normalize_axis(d, dim(), "Tensor::size")]; }
int64_t Tensor::stride(int d) const { return strides_[normalize_axis(d, dim(), "Tensor::stride")]; }

bool Tensor::is_contiguous() const {
  int64_t expect = 1;
  for (int d = dim() - 1; d >= 0; --d) {
    if (shape_[d] != 1 && strides_[d] != expect) return false;
    expect *= shape_[d];
  }
  return true;
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  std::ostringstream os;
  os << dtype_name(dtype_) << shape_;
  if (!device().is_cpu()) os << " (" << device() << ")";
  return os.str();
}

void* Tensor::raw_data() const {
  ENGINE_CHECK(defined(), "data access on an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * int64_t(element_size());
}

// What a backend's copy / fill hook sees of a device tensor.
static TensorView view_of(const Tensor& t) {
  TensorView v;
  v.data = t.storage()->data();
  v.dtype = t.dtype();
  v.dims = t.dim();
  for (int d = 0; d < t.dim(); ++d) {
    v.shape[d] = t.size(d);
    v.strides[d] = t.stride(d);
  }
  v.offset = t.offset();
  return v;
}

// Resolves a -1 in `shape_in` against numel; throws for malformed shapes.
static Shape infer_shape(const Shape& shape_in, int64_t numel, const std::string& who) {
  Shape shape = shape_in;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      ENGINE_CHECK(infer < 0, "view: more than one -1 in ", shape_in);
      infer = i;
    } else {
      ENGINE_CHECK(shape[i] >= 0, "view: invalid shape ", shape_in);
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    ENGINE_CHECK(known > 0 && numel % known == 0, "view: cannot view ", who, " as ", shape_in);
    shape[infer] = numel / known;
  }
  ENGINE_CHECK(shape.numel() == numel, "view: cannot view ", who, " (", numel, " elements) as ",
               shape_in);
  return shape;
}

// Strides that let this tensor's memory be read as `shape` without a copy, if they exist: old
// dims are grouped into chunks that are contiguous among themselves; each chunk must map onto a
// run of new dims with the same element count.
bool Tensor::view_strides(const Shape& shape, Shape& new_strides) const {
  new_strides = contiguous_strides(shape);
  if (numel() == 0 || dim() == 0) return true;
  int view_d = shape.size() - 1;
  int64_t chunk_base = strides_[dim() - 1], tensor_numel = 1, view_numel = 1;
  for (int d = dim() - 1; d >= 0; --d) {
    tensor_numel *= shape_[d];
    if (d == 0 || (shape_[d - 1] != 1 && strides_[d - 1] != tensor_numel * chunk_base)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        new_strides[view_d] = view_numel * chunk_base;
        view_numel *= shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base = strides_[d - 1];
        tensor_numel = view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

Tensor Tensor::view(const Shape& shape_in) const {
  Shape shape = infer_shape(shape_in, numel(), describe());
  Shape new_strides;
  ENGINE_CHECK(view_strides(shape, new_strides), "view: ", describe(), " with strides ", strides_,
               " cannot be viewed as ", shape_in, " without a copy; use reshape()");
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = new_strides;
  return t;
}

Tensor Tensor::reshape(const Shape& shape_in) const {
  Shape shape = infer_shape(shape_in, numel(), describe());
  Shape new_strides;
  if (!view_strides(shape, new_strides)) return contiguous().view(shape);  // copy only when needed
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = new_strides;
  return t;
}

Tensor Tensor::permute(const std::vector<int>& dims) const {
  ENGINE_CHECK(int(dims.size()) == dim(), "permute: ", dims.size(), " axes given for ", describe());
  Tensor t = *this;
  std::vector<bool> seen(dim(), false);
  for (int i = 0; i < dim(); ++i) {
    int d = normalize_axis(dims[i], dim(), "permute");
    ENGINE_CHECK(!seen[d], "permute: axis ", d, " repeated for ", describe());
    seen[d] = true;
    t.shape_[i] = shape_[d];
    t.strides_[i] = strides_[d];
  }
  return t;
}

Tensor Tensor::transpose(int a, int b) const {
  a = normalize_axis(a, dim(), "transpose");
  b = normalize_axis(b, dim(), "transpose");
  Tensor t = *this;
  std::swap(t.shape_[a], t.shape_[b]);
  std::swap(t.strides_[a], t.strides_[b]);
  return t;
}

Tensor Tensor::slice(int d, int64_t start, int64_t end, int64_t step) const {
  d = normalize_axis(d, dim(), "slice");
  ENGINE_CHECK(step > 0, "slice: step must be positive, got ", step);
  int64_t n = shape_[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = (end - start + step - 1) / step;
  t.strides_[d] = strides_[d] * step;
  return t;
}

Tensor Tensor::narrow(int d, int64_t start, int64_t length) const {
  d = normalize_axis(d, dim(), "narrow");
  ENGINE_CHECK(start >= 0 && length >= 0 && start + length <= shape_[d], "narrow: range [", start,
               ", ", start + length, ") out of bounds for dim ", d, " of ", describe());
  return slice(d, start, start + length);
}

Tensor Tensor::select(int d, int64_t index) const {
  d = normalize_axis(d, dim(), "select");
  ENGINE_CHECK(index >= -shape_[d] && index < shape_[d], "select: index ", index,
               " out of range for dim ", d, " of ", describe());
  if (index < 0) index += shape_[d];
  Tensor t = *this;
  t.offset_ += index * strides_[d];
  t.shape_.erase(d);
  t.strides_.erase(d);
  return t;
}

Tensor Tensor::expand(const Shape& shape) const {
  ENGINE_CHECK(shape.size() >= dim(), "expand: cannot expand ", describe(), " to ", shape);
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = shape;
  int lead = shape.size() - dim();
  for (int i = 0; i < shape.size(); ++i) {
    if (i < lead) { t.strides_[i] = 0; continue; }
    int64_t s = shape_[i - lead];
    ENGINE_CHECK(s == shape[i] || s == 1, "expand: cannot expand ", describe(), " to ", shape);
    t.strides_[i] = s == shape[i] ? strides_[i - lead] : 0;
  }
  return t;
}

Tensor Tensor::unsqueeze(int d) const {
  d = normalize_axis(d, dim() + 1, "unsqueeze");
  Tensor t = *this;
  int64_t st = d < dim() ? strides_[d] * shape_[d] : 1;
  t.shape_.insert(d, 1);
  t.strides_.insert(d, st);
  return t;
}

Tensor Tensor::squeeze(int d) const {
  d = normalize_axis(d, dim(), "squeeze");
  ENGINE_CHECK(shape_[d] == 1, "squeeze: dim ", d, " of ", describe(), " is not 1");
  Tensor t = *this;
  t.shape_.erase(d);
  t.strides_.erase(d);
  return t;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor t = empty(shape_, dtype, device());
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor src = contiguous();
  Tensor t = empty(shape_, dtype_, dev);
  if (src.nbytes() == 0) return t;
  if (dev.is_cpu()) {
    device_hooks(src.device().type)
        .copy_to_host(t.raw_data(), src.raw_data(), src.nbytes(), src.device().index);
  } else if (src.device().is_cpu()) {
    device_hooks(dev.type).copy_from_host(t.raw_data(), src.raw_data(), src.nbytes(), dev.index);
  } else {
    return src.to(Device::cpu()).to(dev);
  }
  return t;
}

namespace {

template <class D, class S>
void convert_row(D* dst, const S* src, int64_t n, int64_t ds, int64_t ss) {
  if (ds == 1 && ss == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = D(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * ds] = D(src[i * ss]);
  }
}

// bf16 converts through float (its only arithmetic type).
template <class D, class S>
void convert_row_any(D* dst, const S* src, int64_t n, int64_t ds, int64_t ss) {
  if constexpr (std::is_same_v<D, bf16> && std::is_same_v<S, bf16>) {
    for (int64_t i = 0; i < n; ++i) dst[i * ds] = src[i * ss];
  } else if constexpr (std::is_same_v<D, bf16>) {
    for (int64_t i = 0; i < n; ++i) dst[i * ds] = bf16(float(src[i * ss]));
  } else if constexpr (std::is_same_v<S, bf16>) {
    for (int64_t i = 0; i < n; ++i) dst[i * ds] = D(float(src[i * ss]));
  } else {
    convert_row(dst, src, n, ds, ss);
  }
}

}  // namespace

void Tensor::copy_(const Tensor& src_in) {
  check_defined(*this, "copy_", "destination");
  check_defined(src_in, "copy_", "source");
  Tensor src = src_in;
  if (!(src.device() == device())) src = src.to(device());
  if (!(src.shape() == shape_)) src = src.expand(shape_);
  if (numel() == 0) return;
  if (!device().is_cpu()) {
    const DeviceHooks& h = device_hooks(device().type);
    if (src.dtype_ == dtype_ && is_contiguous() && src.is_contiguous()) {
      if (raw_data() != src.raw_data())
        h.copy_on_device(raw_data(), src.raw_data(), nbytes(), device().index);
      return;
    }
    ENGINE_CHECK(h.copy_strided != nullptr, "copy_: strided or converting copies on ", device(),
                 " need the backend's copy_strided hook, which this build lacks (",
                 src.describe(), " into ", describe(), ")");
    h.copy_strided(view_of(*this), view_of(src), device().index);
    return;
  }
  if (src.dtype_ == dtype_ && is_contiguous() && src.is_contiguous()) {
    std::memmove(raw_data(), src.raw_data(), nbytes());
    return;
  }
  char* dbase = static_cast<char*>(raw_data());
  const char* sbase = static_cast<const char*>(src.raw_data());
  visit_dtype(dtype_, [&](auto d) {
    using D = decltype(d);
    visit_dtype(src.dtype_, [&](auto s) {
      using S = decltype(s);
      for_each_row<2>(shape_, {strides_, src.strides_},
                      [&](const int64_t* off, int64_t n, const int64_t* inner) {
                        convert_row_any(reinterpret_cast<D*>(dbase) + off[0],
                                        reinterpret_cast<const S*>(sbase) + off[1], n, inner[0],
                                        inner[1]);
                      });
    });
  });
}

void Tensor::fill_(double value) {
  check_defined(*this, "fill_", "tensor");
  if (numel() == 0) return;
  if (!device().is_cpu()) {
    const DeviceHooks& h = device_hooks(device().type);
    if (value == 0.0 && !std::signbit(value) && is_contiguous()) {  // all-zero bytes in every dtype
      h.memset_zero(raw_data(), nbytes(), device().index);
      return;
    }
    // One element converted here exactly as the CPU path converts it, then broadcast.
    Tensor one = full(Shape{}, value, dtype_);
    if (h.fill_strided) {
      uint64_t bits = 0;
      std::memcpy(&bits, one.raw_data(), element_size());
      h.fill_strided(view_of(*this), bits, device().index);
      return;
    }
    ENGINE_CHECK(is_contiguous(), "fill_: filling the non-contiguous ", describe(),
                 " needs the backend's fill_strided hook, which this build lacks");
    Tensor host = one.expand(shape_).contiguous();
    h.copy_from_host(raw_data(), host.raw_data(), nbytes(), device().index);
    return;
  }
  char* base = static_cast<char*>(raw_data());
  visit_dtype(dtype_, [&](auto d) {
    using D = decltype(d);
    D v;
    if constexpr (std::is_same_v<D, bf16>) v = bf16(float(value));
    else v = D(value);
    for_each_row<1>(shape_, {strides_}, [&](const int64_t* off, int64_t n, const int64_t* inner) {
      D* p = reinterpret_cast<D*>(base) + off[0];
      for (int64_t i = 0; i < n; ++i) p[i * inner[0]] = v;
    });
  });
}

double Tensor::item() const {
  ENGINE_CHECK(numel() == 1, "item: tensor ", describe(), " has ", numel(), " elements, expected 1");
  return to_vector<double>()[0];
}

double Tensor::at(std::initializer_list<int64_t> index) const {
  ENGINE_CHECK(int(index.size()) == dim(), "at: ", index.size(), " indices for ", describe());
  Tensor t = *this;
  int d = 0;
  for (int64_t i : index) t = t.select(0, i), ++d;
  return t.item();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  os << t.describe();
  if (!t.defined()) return os;
  if (t.numel() <= 64) {
    auto v = t.to_vector<double>();
    os << " {";
    for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
    os << "}";
  }
  return os;
}

void check_defined(const Tensor& t, const char* op, const char* arg) {
  ENGINE_CHECK(t.defined(), op, ": argument '", arg, "' is an undefined tensor");
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* op) {
  ENGINE_CHECK(a.shape() == b.shape(), op, ": shape mismatch, ", a.describe(), " vs ", b.describe());
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  ENGINE_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch, ", a.describe(), " vs ", b.describe());
}

void check_dim(const Tensor& t, int ndim, const char* op, const char* arg) {
  ENGINE_CHECK(t.dim() == ndim, op, ": expected '", arg, "' to have ", ndim, " dimensions, got ",
               t.describe());
}

void check_cpu(const Tensor& t, const char* op) {
  ENGINE_CHECK(t.device().is_cpu(), op, ": CPU kernel called with a tensor on ", t.device());
}

}  // namespace engine
