// Device-side copies (kernels/cuda/copy.cu, the copy_strided and fill_strided hooks behind
// Tensor::copy_, contiguous(), clone(), to(dtype) and fill_ on the device), run under the sim and
// compared bit for bit with the same operation on the CPU: transposed, sliced, stepped, selected
// and expanded views, every dtype pair, bf16 rounding ties and NaN, fills of strided views. Fresh
// device memory is NaN-poisoned and guarded under the sim, so a missed or stray element shows
// up; each copy runs again with the threads in reverse and shuffled order. These tests verify our
// kernels and the engine's plumbing, not NVIDIA libraries (none are called).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cuda/compat.h"
#include "kernels/cuda/device.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;

namespace {

engine::Device dev() { return kernels::cuda::device(); }
Tensor on_cpu(const Tensor& t) { return t.to(engine::Device::cpu()); }

const DType kAll[] = {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64};

// The row-major bytes of t (any device, any layout).
std::vector<unsigned char> bytes_of(const Tensor& t) {
  Tensor c = on_cpu(t).contiguous();
  const unsigned char* p = static_cast<const unsigned char*>(c.raw_data());
  return std::vector<unsigned char>(p, p + c.nbytes());
}

// Same shape, dtype and bits.
void check_same(const Tensor& got, const Tensor& want, const char* what) {
  INFO(std::string(what) << ": got " << got.describe() << ", want " << want.describe());
  REQUIRE(got.shape() == want.shape());
  REQUIRE(got.dtype() == want.dtype());
  CHECK(bytes_of(got) == bytes_of(want));
}

// Values every dtype holds exactly, distinct per element (so a permuted or repeated element is
// caught), with negatives; for float dtypes also fractions.
Tensor values(const Shape& s, DType dt, uint64_t stream) {
  Tensor u = testing::randu(s, stream, -1000.0, 1000.0, DType::f64);
  std::vector<double> v = u.to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = std::floor(v[i]);
    if (engine::is_floating(dt)) v[i] += 0.25 * double(i % 4);
  }
  return Tensor::from_vector(v, s, DType::f64).to(dt);
}

void in_orders(const std::function<void()>& f) {
  f();
  {
    INFO("thread order: reverse");
    sim::ScopedThreadOrder o(sim::ThreadOrder::reverse);
    f();
  }
  {
    INFO("thread order: shuffled");
    sim::ScopedThreadOrder o(sim::ThreadOrder::shuffled, 777);
    f();
  }
}

// The views the tests copy from, built the same way from a CPU and a device base tensor.
struct ViewCase {
  const char* name;
  Shape base;
  std::function<Tensor(const Tensor&)> make;
};
const std::vector<ViewCase>& view_cases() {
  static const std::vector<ViewCase> cases = {
      {"contiguous", {7, 5}, [](const Tensor& t) { return t; }},
      {"transposed", {7, 5}, [](const Tensor& t) { return t.transpose(0, 1); }},
      {"permuted 4-d", {3, 4, 5, 6}, [](const Tensor& t) { return t.permute({2, 0, 3, 1}); }},
      {"sliced with a step", {9, 11}, [](const Tensor& t) { return t.slice(0, 1, 8, 3).slice(1, 2, 11, 2); }},
      {"narrowed last dim", {6, 13}, [](const Tensor& t) { return t.narrow(1, 3, 7); }},
      {"selected", {4, 5, 6}, [](const Tensor& t) { return t.select(1, 3); }},
      {"expanded", {1, 5}, [](const Tensor& t) { return t.expand({6, 5}); }},
      {"expanded middle", {3, 1, 4}, [](const Tensor& t) { return t.expand({3, 7, 4}); }},
      {"unsqueezed + transposed", {5, 3}, [](const Tensor& t) { return t.unsqueeze(1).transpose(0, 2); }},
      {"0-d", {}, [](const Tensor& t) { return t; }},
      {"one element of a 3-d", {2, 3, 4}, [](const Tensor& t) { return t.slice(0, 1, 2).slice(1, 2, 3).slice(2, 3, 4); }},
      {"long odd run", {1031}, [](const Tensor& t) { return t.slice(0, 1, 1031, 2); }},
  };
  return cases;
}

}  // namespace

TEST_CASE("cuda copy/contiguous and clone of strided views, every dtype, bit-identical to the CPU") {
  for (DType dt : kAll) {
    for (const ViewCase& c : view_cases()) {
      INFO(c.name << " " << engine::dtype_name(dt));
      const Tensor base = values(c.base, dt, 1);
      const Tensor vc = c.make(base), vd = c.make(base.to(dev()));
      in_orders([&] {
        Tensor got = vd.contiguous();
        CHECK(got.device() == dev());
        CHECK(got.is_contiguous());
        check_same(got, vc.contiguous(), "contiguous");
        Tensor cl = vd.clone();
        CHECK(cl.device() == dev());
        CHECK(!cl.shares_storage(vd));
        check_same(cl, vc, "clone");
      });
      // reshape of a view that needs a copy, and the way back to the host.
      check_same(vd.reshape({vd.numel()}), vc.reshape({vc.numel()}), "reshape");
      check_same(vd.to(engine::Device::cpu()), vc, "to(cpu)");
    }
  }
}

TEST_CASE("cuda copy/to(dtype) for every pair of dtypes, contiguous and strided") {
  for (DType from : kAll) {
    for (DType to : kAll) {
      INFO(engine::dtype_name(from) << " -> " << engine::dtype_name(to));
      const Tensor base = values({13, 9}, from, 2);
      for (bool strided : {false, true}) {
        const Tensor vc = strided ? base.transpose(0, 1).slice(0, 1, 9, 2) : base;
        const Tensor vd = strided ? base.to(dev()).transpose(0, 1).slice(0, 1, 9, 2) : base.to(dev());
        in_orders([&] {
          Tensor got = vd.to(to);
          CHECK(got.device() == dev());
          check_same(got, vc.to(to), strided ? "strided" : "contiguous");
        });
      }
    }
  }
}

TEST_CASE("cuda copy/bf16 rounding: ties to even, NaN canonical, overflow, f64 and integer sources") {
  // f32 bit patterns around bf16 rounding boundaries, NaNs with sign and payload, infinities,
  // denormals, the largest floats (rounding to inf).
  const std::vector<uint32_t> bits = {
      0x3f800000, 0x3f808000, 0x3f818000, 0x3f808001, 0x3f807fff, 0xbf808000, 0xbf818000,
      0x7fc00000, 0xffc00000, 0x7f800001, 0xff812345, 0x7fbfffff, 0x7f800000, 0xff800000,
      0x00000001, 0x80008000, 0x00018000, 0x007fffff, 0x7f7fffff, 0xff7f8000, 0x7f7f7fff,
      0x00000000, 0x80000000, 0x4b7fffff, 0xcb000001};
  std::vector<float> f(bits.size());
  std::memcpy(f.data(), bits.data(), bits.size() * 4);
  const Tensor xf = Tensor::from_vector(f, {int64_t(f.size())});
  // f64 values whose f32 rounding decides a bf16 tie (the CPU converts through f32).
  const std::vector<double> d = {1.0 + 1.0 / 256, 1.0 + 1.0 / 256 + 1e-12, 1.0 + 3.0 / 256 - 1e-12,
                                 -3.0e38, 3.5e38, 1e-45, -0.0, std::nan(""), 1e300, -1e-300};
  const Tensor xd = Tensor::from_vector(d, {int64_t(d.size())});
  // Integers past bf16's and f32's exact range.
  const std::vector<int64_t> iv = {257, 258, 259, 16777217, -16777219, (int64_t(1) << 40) + 1,
                                   -(int64_t(1) << 62) - 12345, 0, -1, 65535};
  const Tensor xi = Tensor::from_vector(iv, {int64_t(iv.size())});
  for (const Tensor& x : {xf, xd, xi, xi.to(DType::i32)}) {
    INFO("source " << x.describe());
    check_same(x.to(dev()).to(DType::bf16), x.to(DType::bf16), "to bf16");
    // The f32 sources also go to f64 and back without change (a NaN stays a NaN; its payload
    // is the hardware's business: x86 keeps it, a GPU makes it canonical).
    if (x.dtype() == DType::f32) {
      const std::vector<float> back = x.to(dev()).to(DType::f64).to(DType::f32).to_vector<float>();
      for (size_t i = 0; i < f.size(); ++i) {
        INFO("element " << i);
        if (std::isnan(f[i])) CHECK(std::isnan(back[i]));
        else CHECK(std::memcmp(&back[i], &f[i], 4) == 0);
      }
    }
  }
  // Every NaN becomes 0x7fff.
  const std::vector<uint16_t> got = [&] {
    Tensor b = xf.to(dev()).to(DType::bf16).to(engine::Device::cpu());
    const uint16_t* p = static_cast<const uint16_t*>(b.raw_data());
    return std::vector<uint16_t>(p, p + b.numel());
  }();
  for (size_t i = 0; i < bits.size(); ++i)
    if (std::isnan(f[i])) CHECK(got[i] == 0x7fff);
}

TEST_CASE("cuda copy/copy_ into strided destinations: broadcast sources, dtype change, cross-device") {
  for (DType dt : {DType::f32, DType::bf16, DType::i64}) {
    INFO(engine::dtype_name(dt));
    // The destination is a transposed, sliced view into a larger tensor; elements outside the
    // view must keep their values.
    const Tensor parent = values({8, 11}, dt, 3);
    Tensor pc = parent.clone(), pd = parent.to(dev());
    Tensor dc = pc.slice(1, 2, 9).transpose(0, 1), dd = pd.slice(1, 2, 9).transpose(0, 1);
    // A [1, 8] f64 row broadcast to [7, 8], converted on the way.
    const Tensor row = values({1, 8}, DType::f64, 4);
    dc.copy_(row);
    dd.copy_(row.to(dev()));
    check_same(pd, pc, "broadcast row into a transposed view");
    // A host source (strided, other dtype) into the device view.
    const Tensor host_src = values({8, 7}, DType::f32, 5).transpose(0, 1);
    dc.copy_(host_src);
    dd.copy_(host_src);
    check_same(pd, pc, "host source into a device view");
    // A device source into a strided host destination.
    Tensor hc = values({7, 16}, dt, 6), hd = hc.clone();
    hc.slice(1, 0, 16, 2).copy_(dc);
    hd.slice(1, 0, 16, 2).copy_(dd);
    check_same(hd, hc, "device view into a host view");
    // A 0-d source fills a view.
    dc.copy_(Tensor::scalar(-7.0, DType::f64));
    dd.copy_(Tensor::scalar(-7.0, DType::f64).to(dev()));
    check_same(pd, pc, "0-d source");
  }
}

TEST_CASE("cuda copy/fill_ and zero_ on device views, every dtype") {
  for (DType dt : kAll) {
    INFO(engine::dtype_name(dt));
    const Tensor parent = values({6, 10}, dt, 7);
    Tensor pc = parent.clone(), pd = parent.to(dev());
    in_orders([&] {
      pc.slice(1, 1, 10, 3).fill_(2.71828);
      pd.slice(1, 1, 10, 3).fill_(2.71828);
      check_same(pd, pc, "fill a stepped view");
      pc.transpose(0, 1).slice(0, 4, 6).zero_();
      pd.transpose(0, 1).slice(0, 4, 6).zero_();
      check_same(pd, pc, "zero a transposed view");
      pc.select(0, 2).fill_(-0.0);
      pd.select(0, 2).fill_(-0.0);
      check_same(pd, pc, "fill a row with -0");
    });
    // Whole tensors: zeros, ones, full (the value rounded as on the CPU: bf16 of 1/3).
    check_same(Tensor::full({5, 3}, 1.0 / 3.0, dt, dev()), Tensor::full({5, 3}, 1.0 / 3.0, dt), "full");
    check_same(Tensor::zeros({17}, dt, dev()), Tensor::zeros({17}, dt), "zeros");
    check_same(Tensor::ones({2, 2, 2}, dt, dev()), Tensor::ones({2, 2, 2}, dt), "ones");
  }
  // NaN and infinity fill float tensors.
  Tensor n = Tensor::empty({4, 3}, DType::bf16, dev()).transpose(0, 1);
  n.fill_(std::numeric_limits<double>::quiet_NaN());
  for (float v : n.to_vector<float>()) CHECK(std::isnan(v));
  Tensor inf = Tensor::full({3}, -INFINITY, DType::f32, dev());
  for (float v : inf.to_vector<float>()) CHECK(v == -INFINITY);
}

TEST_CASE("cuda copy/empty tensors, size-1 dims and self copies") {
  for (DType dt : kAll) {
    Tensor e = Tensor::empty({0, 5}, dt, dev());
    CHECK(e.transpose(0, 1).contiguous().shape() == Shape{5, 0});
    CHECK(e.to(DType::f64).numel() == 0);
    e.fill_(3.0);
    Tensor one = values({1, 1, 1}, dt, 8).to(dev());
    check_same(one.transpose(0, 2).contiguous(), values({1, 1, 1}, dt, 8), "size-1 dims");
    // Copying a tensor into itself leaves it unchanged.
    Tensor s = values({4, 5}, dt, 9).to(dev());
    s.copy_(s);
    check_same(s, values({4, 5}, dt, 9), "self copy");
  }
}

TEST_CASE("cuda copy/an 8-d permuted view larger than one pass of the grid") {
  // 132*16 blocks of 256 threads cover 540672 elements per pass: above that every thread takes
  // several elements of the grid-stride loop.
  const Tensor base = values({2, 3, 2, 5, 7, 9, 11, 15}, DType::f32, 10);  // 623700 elements
  const std::vector<int> perm = {7, 1, 5, 3, 0, 6, 2, 4};
  const Tensor vd = base.to(dev()).permute(perm), vc = base.permute(perm);
  check_same(vd.contiguous(), vc.contiguous(), "permuted copy");
  check_same(vd.to(DType::bf16), vc.to(DType::bf16), "permuted conversion");
}
