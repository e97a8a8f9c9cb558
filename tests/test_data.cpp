// Datasets (Fashion-MNIST IDX, CIFAR-10/100 binary), batch assembly with augmentation, the
// epoch sampler and the prefetching loader.
#include <omp.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <set>
#include <thread>

#include "engine/philox.h"
#include "tests/helpers.h"
#include "trainer/augment.h"
#include "trainer/image_data.h"
#include "trainer/loader.h"

using namespace train;
namespace fs = std::filesystem;

namespace {

// A fresh directory under /tmp, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("test_data_" + std::to_string(getpid()) + "_" + tag);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const engine::Error& e) {
    return e.what();
  }
  return "<no exception>";
}

#define CHECK_ERROR_HAS(msg, text)                \
  do {                                            \
    INFO("message: " << (msg));                   \
    CHECK((msg).find(text) != std::string::npos); \
  } while (0)

void put_be32(std::vector<uint8_t>& v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(uint8_t(x >> s));
}

void write_raw(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!bytes.empty())
    REQUIRE(gzwrite(f, bytes.data(), unsigned(bytes.size())) == int(bytes.size()));
  gzclose(f);
}

std::vector<uint8_t> idx_images(uint32_t magic, int64_t n, int64_t h, int64_t w,
                                const std::vector<uint8_t>& pixels) {
  std::vector<uint8_t> v;
  put_be32(v, magic);
  put_be32(v, uint32_t(n));
  put_be32(v, uint32_t(h));
  put_be32(v, uint32_t(w));
  v.insert(v.end(), pixels.begin(), pixels.end());
  return v;
}

std::vector<uint8_t> idx_labels(uint32_t magic, int64_t n, const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> v;
  put_be32(v, magic);
  put_be32(v, uint32_t(n));
  v.insert(v.end(), labels.begin(), labels.end());
  return v;
}

// A tiny Fashion-MNIST split: 5 images of 3x4 with distinct bytes.
struct TinyIdx {
  int64_t n = 5, h = 3, w = 4;
  std::vector<uint8_t> pixels, labels;
  TinyIdx() {
    for (int64_t i = 0; i < n * h * w; ++i) pixels.push_back(uint8_t((i * 37 + 11) % 256));
    labels = {3, 0, 9, 9, 5};
  }
  void write(const TempDir& d, const std::string& prefix, bool gz) const {
    auto put = gz ? write_gz : write_raw;
    const std::string ext = gz ? ".gz" : "";
    put(d / (prefix + "-images-idx3-ubyte" + ext), idx_images(2051, n, h, w, pixels));
    put(d / (prefix + "-labels-idx1-ubyte" + ext), idx_labels(2049, n, labels));
  }
};

// CIFAR record r of a test file: label bytes then R, G, B planes; byte (c, y, x) is a hash.
uint8_t cifar_byte(int file, int r, int c, int y, int x) {
  return uint8_t((file * 131 + r * 71 + c * 29 + y * 7 + x * 3 + (x * y) % 5) % 256);
}

std::vector<uint8_t> cifar_file(int file, const std::vector<std::vector<uint8_t>>& label_bytes) {
  std::vector<uint8_t> v;
  for (int r = 0; r < int(label_bytes.size()); ++r) {
    v.insert(v.end(), label_bytes[size_t(r)].begin(), label_bytes[size_t(r)].end());
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 32; ++x) v.push_back(cifar_byte(file, r, c, y, x));
  }
  return v;
}

// Checks example `i` of ds against record r of file `file`, channels-last.
void check_cifar_example(const ImageDataset& ds, int64_t i, int file, int r) {
  const uint8_t* p = ds.image(i);
  int bad = 0;
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 32; ++x)
      for (int c = 0; c < 3; ++c) bad += p[(y * 32 + x) * 3 + c] != cifar_byte(file, r, c, y, x);
  CHECK(bad == 0);
}

// A small in-memory dataset whose every pixel byte differs from example to example.
ImageDataset synthetic(int64_t n, int64_t h, int64_t w, int64_t c, int64_t classes) {
  ImageDataset ds;
  ds.name = "synthetic";
  ds.n = n;
  ds.height = h;
  ds.width = w;
  ds.channels = c;
  for (int64_t k = 0; k < classes; ++k) ds.class_names.push_back("class" + std::to_string(k));
  const int64_t isz = h * w * c;
  for (int64_t i = 0; i < n; ++i) {
    ds.labels.push_back((i * 7 + 1) % classes);
    for (int64_t j = 0; j < isz; ++j) ds.pixels.push_back(uint8_t(1 + (i * 53 + j * 11) % 251));
  }
  return ds;
}

double norm_value(uint8_t v, double mean, double std) { return (v / 255.0 - mean) / std; }

// Independent Marsaglia-Tsang Gamma and Beta from the documented streams.
struct RefCursor {
  uint64_t seed, ns, us, n = 0, u = 0;
  double normal() { return engine::philox_normal(seed, ns, n++); }
  double uniform() { return 1.0 - double(engine::philox_uniform(seed, us, u++)); }
};
double ref_gamma(RefCursor& c, double a) {
  if (a < 1) {
    const double g = ref_gamma(c, a + 1);
    return g * std::pow(c.uniform(), 1 / a);
  }
  const double d = a - 1.0 / 3, k = 1 / std::sqrt(9 * d);
  while (true) {
    const double x = c.normal();
    const double t = 1 + k * x;
    if (t <= 0) continue;
    const double v = t * t * t;
    if (std::log(c.uniform()) < x * x / 2 + d - d * v + d * std::log(v)) return d * v;
  }
}
double ref_lambda(uint64_t seed, int64_t key, double alpha) {
  const uint64_t base = uint64_t(0xA6) << 56 | uint64_t(key) << 4;
  RefCursor c{seed, base | 3, base | 4};
  const double x = ref_gamma(c, alpha), y = ref_gamma(c, alpha);
  return x / (x + y);
}

uint64_t mix_stream(int64_t key) { return uint64_t(0xA6) << 56 | uint64_t(key) << 4 | 2; }

}  // namespace

// ---- Fashion-MNIST ----------------------------------------------------------------------------

TEST_CASE("data/fashion-mnist: the installed files") {
  if (!fs::exists(std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz")) {
    // Without the package the loader must say how to get it.
    const std::string msg = error_of([] { load_fashion_mnist(); });
    CHECK_ERROR_HAS(msg, "sudo apt-get install dataset-fashion-mnist");
    MESSAGE("dataset-fashion-mnist is not installed: only its error message was checked");
    return;
  }
  const ImageDataset train = load_fashion_mnist(kFashionMnistDir, "train");
  const ImageDataset test = load_fashion_mnist(kFashionMnistDir, "test");
  CHECK(train.n == 60000);
  CHECK(test.n == 10000);
  for (const ImageDataset* ds : {&train, &test}) {
    CHECK(ds->height == 28);
    CHECK(ds->width == 28);
    CHECK(ds->channels == 1);
    CHECK(int64_t(ds->pixels.size()) == ds->n * 784);
    CHECK(int64_t(ds->labels.size()) == ds->n);
    REQUIRE(ds->class_names.size() == 10);
    CHECK(ds->class_names[0] == "T-shirt/top");
    CHECK(ds->class_names[9] == "Ankle boot");
    std::vector<int64_t> hist(10, 0);
    for (int64_t l : ds->labels) hist[size_t(l)]++;
    for (int k = 0; k < 10; ++k) CHECK(hist[size_t(k)] == ds->n / 10);
  }
  CHECK(train.name == "fashion-mnist/train");
  // The published pixel mean of the training set is 0.2860 (of 255).
  uint64_t sum = 0;
  for (uint8_t v : train.pixels) sum += v;
  CHECK(double(sum) / double(train.pixels.size()) / 255.0 ==
        doctest::Approx(0.2860).epsilon(0.003));
}

TEST_CASE("data/fashion-mnist: gzip and uncompressed IDX files parse") {
  const TinyIdx tiny;
  for (bool gz : {true, false}) {
    CAPTURE(gz);
    TempDir d(gz ? "idx_gz" : "idx_raw");
    tiny.write(d, "t10k", gz);
    const ImageDataset ds = load_fashion_mnist(d.path.string(), "test");
    CHECK(ds.name == "fashion-mnist/test");
    CHECK(ds.n == 5);
    CHECK(ds.height == 3);
    CHECK(ds.width == 4);
    CHECK(ds.channels == 1);
    CHECK(ds.pixels == tiny.pixels);
    CHECK(ds.labels == std::vector<int64_t>{3, 0, 9, 9, 5});
    CHECK(ds.class_names.size() == 10);
  }
}

TEST_CASE("data/fashion-mnist: truncated and oversized files are rejected") {
  const TinyIdx tiny;
  TempDir d("idx_trunc");
  const std::string images = d / "train-images-idx3-ubyte", labels = d / "train-labels-idx1-ubyte";
  write_raw(labels, idx_labels(2049, 5, tiny.labels));
  auto full = idx_images(2051, 5, 3, 4, tiny.pixels);

  // Raw file missing 7 bytes of pixels.
  write_raw(images, std::vector<uint8_t>(full.begin(), full.end() - 7));
  std::string msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, images);
  CHECK_ERROR_HAS(msg, "is truncated");
  CHECK_ERROR_HAS(msg, "5 images of 3x4 = 60 bytes");
  CHECK_ERROR_HAS(msg, "7 bytes missing");

  // The same as a (complete) gzip stream of a short payload.
  fs::remove(images);
  write_gz(images + ".gz", std::vector<uint8_t>(full.begin(), full.end() - 7));
  msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, images + ".gz");
  CHECK_ERROR_HAS(msg, "7 bytes missing");

  // A gzip file cut short: the stream itself ends early.
  write_gz(images + ".gz", full);
  {
    std::ifstream in(images + ".gz", std::ios::binary);
    std::vector<char> gzbytes((std::istreambuf_iterator<char>(in)), {});
    in.close();
    write_raw(images + ".gz",
              std::vector<uint8_t>(gzbytes.begin(), gzbytes.begin() + gzbytes.size() / 2));
  }
  msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, images + ".gz");
  CHECK_ERROR_HAS(msg, "truncated");

  // Header cut short.
  fs::remove(images + ".gz");
  write_raw(images, std::vector<uint8_t>(full.begin(), full.begin() + 10));
  msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, "the IDX header needs 16 bytes, the file holds 10");

  // Trailing bytes.
  auto longer = full;
  longer.push_back(0);
  longer.push_back(1);
  write_raw(images, longer);
  msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, "has 2 bytes after the 5 images");

  // Labels truncated.
  write_raw(images, full);
  write_raw(labels, idx_labels(2049, 5, {1, 2, 3}));
  msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, labels);
  CHECK_ERROR_HAS(msg, "2 bytes missing");
}

TEST_CASE("data/fashion-mnist: wrong magic, mismatched counts, bad labels, missing files") {
  const TinyIdx tiny;
  TempDir d("idx_bad");
  const std::string images = d / "train-images-idx3-ubyte", labels = d / "train-labels-idx1-ubyte";
  write_raw(images, idx_images(2049, 5, 3, 4, tiny.pixels));  // label magic on an image file
  write_raw(labels, idx_labels(2049, 5, tiny.labels));
  std::string msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, images);
  CHECK_ERROR_HAS(msg, "magic number 2049");
  CHECK_ERROR_HAS(msg, "expected 2051");

  write_raw(images, idx_images(2051, 5, 3, 4, tiny.pixels));
  write_raw(labels, idx_labels(2051, 5, tiny.labels));
  msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, "magic number 2051");
  CHECK_ERROR_HAS(msg, "expected 2049");

  write_raw(labels, idx_labels(2049, 4, {1, 2, 3, 4}));
  msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, "holds 5 images but");
  CHECK_ERROR_HAS(msg, "holds 4 labels");

  write_raw(labels, idx_labels(2049, 5, {1, 2, 10, 4, 5}));
  msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, "label 10 of example 2 is out of range [0, 10)");

  fs::remove(labels);
  msg = error_of([&] { load_fashion_mnist(d.path.string(), "train"); });
  CHECK_ERROR_HAS(msg, "no train-labels-idx1-ubyte.gz");
  CHECK_ERROR_HAS(msg,
                  "install it with: sudo apt-get install dataset-fashion-mnist (or run "
                  "scripts/setup.sh)");
  msg = error_of([&] { load_fashion_mnist(d.path.string(), "val"); });
  CHECK_ERROR_HAS(msg, "split must be \"train\" or \"test\"");
}

// ---- CIFAR ------------------------------------------------------------------------------------

TEST_CASE("data/cifar10: tiny binary batches parse to channels-last pixels") {
  TempDir d("cifar10");
  const fs::path root = d.path / "cifar-10-batches-bin";
  fs::create_directories(root);
  // 5 training batches of 3 records, labels 3 * file + r (mod 10); a test batch of 2.
  for (int f = 1; f <= 5; ++f) {
    std::vector<std::vector<uint8_t>> labs;
    for (int r = 0; r < 3; ++r) labs.push_back({uint8_t((3 * f + r) % 10)});
    write_raw((root / ("data_batch_" + std::to_string(f) + ".bin")).string(), cifar_file(f, labs));
  }
  write_raw((root / "test_batch.bin").string(), cifar_file(0, {{7}, {2}}));

  // Through the parent folder, default names.
  const ImageDataset train = load_cifar(d.path.string(), 10, "train");
  CHECK(train.name == "cifar10/train");
  CHECK(train.n == 15);
  CHECK(train.height == 32);
  CHECK(train.width == 32);
  CHECK(train.channels == 3);
  for (int f = 1; f <= 5; ++f)
    for (int r = 0; r < 3; ++r) {
      CAPTURE(f);
      CAPTURE(r);
      const int64_t i = (f - 1) * 3 + r;
      CHECK(train.labels[size_t(i)] == (3 * f + r) % 10);
      check_cifar_example(train, i, f, r);
    }
  REQUIRE(train.class_names.size() == 10);
  CHECK(train.class_names[0] == "airplane");
  CHECK(train.class_names[9] == "truck");

  // The folder itself, names from batches.meta.txt (blank lines and \r ignored).
  std::ofstream((root / "batches.meta.txt").string())
      << "a0\r\na1\na2\na3\na4\na5\na6\na7\na8\n  a9  \n\n\n";
  const ImageDataset test = load_cifar(root.string(), 10, "test");
  CHECK(test.n == 2);
  CHECK(test.labels == std::vector<int64_t>{7, 2});
  check_cifar_example(test, 0, 0, 0);
  check_cifar_example(test, 1, 0, 1);
  REQUIRE(test.class_names.size() == 10);
  CHECK(test.class_names[0] == "a0");
  CHECK(test.class_names[9] == "a9");
}

TEST_CASE("data/cifar100: fine labels and names") {
  TempDir d("cifar100");
  const fs::path root = d.path / "cifar-100-binary";
  fs::create_directories(root);
  write_raw((root / "train.bin").string(), cifar_file(1, {{19, 99}, {0, 0}, {7, 42}}));
  write_raw((root / "test.bin").string(), cifar_file(2, {{3, 57}}));
  const ImageDataset train = load_cifar(d.path.string(), 100, "train");
  CHECK(train.name == "cifar100/train");
  CHECK(train.n == 3);
  CHECK(train.labels == std::vector<int64_t>{99, 0, 42});
  for (int r = 0; r < 3; ++r) check_cifar_example(train, r, 1, r);
  REQUIRE(train.class_names.size() == 100);
  CHECK(train.class_names[0] == "apple");
  CHECK(train.class_names[99] == "worm");
  {
    std::ofstream names((root / "fine_label_names.txt").string());
    for (int k = 0; k < 100; ++k) names << "fine" << k << "\n";
  }
  const ImageDataset test = load_cifar(root.string(), 100, "test");
  CHECK(test.labels == std::vector<int64_t>{57});
  check_cifar_example(test, 0, 2, 0);
  CHECK(test.class_names[57] == "fine57");
}

TEST_CASE("data/cifar: truncated records, bad labels, missing files") {
  TempDir d("cifar_bad");
  std::string msg = error_of([&] { load_cifar(d.path.string(), 10, "test"); });
  CHECK_ERROR_HAS(msg, "no test_batch.bin in " + d.path.string());
  CHECK_ERROR_HAS(msg,
                  "download the CIFAR-10 binary version from "
                  "https://www.cs.toronto.edu/~kriz/cifar.html and pass --data-dir");
  msg = error_of([&] { load_cifar(d.path.string(), 100, "train"); });
  CHECK_ERROR_HAS(msg, "no train.bin");
  CHECK_ERROR_HAS(msg, "download the CIFAR-100 binary version");

  // Only some of the training batches.
  write_raw(d / "data_batch_1.bin", cifar_file(1, {{1}}));
  write_raw(d / "data_batch_2.bin", cifar_file(2, {{1}}));
  msg = error_of([&] { load_cifar(d.path.string(), 10, "train"); });
  CHECK_ERROR_HAS(msg, "no data_batch_3.bin");

  auto rec = cifar_file(0, {{1}, {2}});
  rec.resize(rec.size() - 100);
  write_raw(d / "test_batch.bin", rec);
  msg = error_of([&] { load_cifar(d.path.string(), 10, "test"); });
  CHECK_ERROR_HAS(msg, d / "test_batch.bin");
  CHECK_ERROR_HAS(msg, "is truncated");
  CHECK_ERROR_HAS(msg, "not a multiple of the 3073-byte record");
  CHECK_ERROR_HAS(msg, "then 2973 of 3073 bytes");

  write_raw(d / "test_batch.bin", cifar_file(0, {{1}, {10}}));
  msg = error_of([&] { load_cifar(d.path.string(), 10, "test"); });
  CHECK_ERROR_HAS(msg, "label 10 of record 1 is out of range [0, 10)");

  write_raw(d / "test.bin", cifar_file(0, {{1, 100}}));
  msg = error_of([&] { load_cifar(d.path.string(), 100, "test"); });
  CHECK_ERROR_HAS(msg, "label 100 of record 0 is out of range [0, 100)");

  std::ofstream(d / "batches.meta.txt") << "only\nthree\nnames\n";
  write_raw(d / "test_batch.bin", cifar_file(0, {{1}}));
  msg = error_of([&] { load_cifar(d.path.string(), 10, "test"); });
  CHECK_ERROR_HAS(msg, "lists 3 class names, expected 10");
  msg = error_of([&] { load_cifar(d.path.string(), 20, "test"); });
  CHECK_ERROR_HAS(msg, "classes must be 10 or 100");
}

// ---- batch assembly and augmentation ----------------------------------------------------------

TEST_CASE("data/augment: per-channel normalisation and one-hot targets") {
  const ImageDataset ds = synthetic(4, 3, 5, 3, 6);
  AugmentConfig cfg;
  cfg.mean = {0.1f, 0.5f, 0.9f};
  cfg.std = {0.2f, 0.5f, 1.5f};
  const std::vector<int64_t> idx = {2, 0, 3};
  const ImageBatch b = make_batch(ds, idx, cfg, 7, 11);
  CHECK(b.images.shape() == engine::Shape({3, 3, 5, 3}));
  CHECK(b.targets.shape() == engine::Shape({3, 6}));
  CHECK(b.mix == MixKind::none);
  CHECK(b.indices == idx);
  const auto img = b.images.to_vector<float>();
  const int64_t isz = 45;
  double worst = 0;
  for (int64_t s = 0; s < 3; ++s)
    for (int64_t j = 0; j < isz; ++j) {
      const int c = int(j % 3);
      const double want =
          norm_value(ds.image(idx[size_t(s)])[j], cfg.mean[size_t(c)], cfg.std[size_t(c)]);
      worst = std::max(worst, std::abs(img[size_t(s * isz + j)] - want));
    }
  CHECK(worst < 1e-6);
  const auto t = b.targets.to_vector<float>();
  const auto lab = b.labels.to_vector<int64_t>();
  for (int64_t s = 0; s < 3; ++s) {
    CHECK(lab[size_t(s)] == ds.labels[size_t(idx[size_t(s)])]);
    for (int64_t k = 0; k < 6; ++k)
      CHECK(t[size_t(s * 6 + k)] == (k == lab[size_t(s)] ? 1.f : 0.f));
  }
  // The switch-ViT default maps bytes to [-1, 1]; smoothing spreads eps over the classes.
  AugmentConfig dflt;
  dflt.label_smoothing = 0.3f;
  const ImageBatch d = make_batch(ds, {1}, dflt, 7, 11);
  const auto dv = d.images.to_vector<float>();
  for (int64_t j = 0; j < isz; ++j)
    CHECK(dv[size_t(j)] == doctest::Approx(ds.image(1)[j] / 127.5 - 1.0).epsilon(1e-6));
  const auto dt = d.targets.to_vector<float>();
  for (int64_t k = 0; k < 6; ++k)
    CHECK(dt[size_t(k)] ==
          doctest::Approx((k == ds.labels[1] ? 0.7 : 0.0) + 0.3 / 6).epsilon(1e-6));
}

TEST_CASE("data/augment: crop and flip follow the documented draws") {
  const int64_t H = 5, W = 6, C = 2, pad = 2;
  const ImageDataset ds = synthetic(3, H, W, C, 4);
  AugmentConfig cfg;
  cfg.mean = {0.f};
  cfg.std = {1.f};
  cfg.random_crop = true;
  cfg.crop_padding = int(pad);
  cfg.horizontal_flip = true;
  const uint64_t seed = 99;
  std::set<std::pair<int64_t, int64_t>> offsets;
  std::set<bool> flips;
  for (int64_t key : {0, 1, 5, 1234567}) {
    std::vector<int64_t> idx = {0, 1, 2, 2, 1, 0, 1};
    const ImageBatch b = make_batch(ds, idx, cfg, seed, key);
    const auto img = b.images.to_vector<float>();
    const uint64_t stream = uint64_t(0xA6) << 56 | uint64_t(key) << 4 | 1;
    for (int64_t s = 0; s < int64_t(idx.size()); ++s) {
      const uint32_t w0 = engine::philox_u32(seed, stream, uint64_t(4 * s));
      const uint32_t w1 = engine::philox_u32(seed, stream, uint64_t(4 * s + 1));
      const uint32_t w2 = engine::philox_u32(seed, stream, uint64_t(4 * s + 2));
      const int64_t oy = int64_t((uint64_t(w0) * (2 * pad + 1)) >> 32);
      const int64_t ox = int64_t((uint64_t(w1) * (2 * pad + 1)) >> 32);
      const bool flip = (w2 >> 31) != 0;
      offsets.insert({oy, ox});
      flips.insert(flip);
      // Build the padded image, crop it, then flip the crop.
      const int64_t PH = H + 2 * pad, PW = W + 2 * pad;
      std::vector<double> padded(size_t(PH * PW * C), 0.0);
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
          for (int64_t c = 0; c < C; ++c)
            padded[size_t(((y + pad) * PW + x + pad) * C + c)] =
                ds.image(idx[size_t(s)])[(y * W + x) * C + c] / 255.0;
      std::vector<double> crop(size_t(H * W * C));
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
          for (int64_t c = 0; c < C; ++c)
            crop[size_t((y * W + x) * C + c)] = padded[size_t(((y + oy) * PW + x + ox) * C + c)];
      int bad = 0;
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
          for (int64_t c = 0; c < C; ++c) {
            const int64_t xs = flip ? W - 1 - x : x;
            const double want = crop[size_t((y * W + xs) * C + c)];
            bad += std::abs(img[size_t(((s * H + y) * W + x) * C + c)] - want) > 1e-6;
          }
      CAPTURE(s);
      CHECK(bad == 0);
    }
  }
  CHECK(flips.size() == 2);
  CHECK(offsets.size() >= 8);  // the draws vary
}

TEST_CASE("data/augment: Mixup mixes images and targets with the Beta draw") {
  const ImageDataset ds = synthetic(9, 4, 3, 2, 5);
  AugmentConfig base;
  base.random_crop = true;
  base.crop_padding = 1;
  base.horizontal_flip = true;
  AugmentConfig cfg = base;
  cfg.mixup_alpha = 0.4f;
  cfg.label_smoothing = 0.1f;
  const std::vector<int64_t> idx = {4, 0, 8, 2, 7};  // odd: the middle slot pairs with itself
  const int64_t B = 5, isz = 24, K = 5;
  for (int64_t key : {3, 17}) {
    const ImageBatch plain = make_batch(ds, idx, base, 5, key);
    const ImageBatch b = make_batch(ds, idx, cfg, 5, key);
    REQUIRE(b.mix == MixKind::mixup);
    const double lam = ref_lambda(5, key, double(0.4f));  // the config holds a float
    INFO(std::setprecision(17) << b.lambda << " vs " << lam);
    CHECK(b.lambda == doctest::Approx(lam).epsilon(1e-12));
    CHECK(lam > 0);
    CHECK(lam < 1);
    const auto a = plain.images.to_vector<float>(), m = b.images.to_vector<float>();
    double worst = 0;
    for (int64_t s = 0; s < B; ++s)
      for (int64_t j = 0; j < isz; ++j) {
        const double want =
            lam * a[size_t(s * isz + j)] + (1 - lam) * a[size_t((B - 1 - s) * isz + j)];
        worst = std::max(worst, std::abs(m[size_t(s * isz + j)] - want));
      }
    CHECK(worst < 1e-5);
    const auto t = b.targets.to_vector<float>();
    for (int64_t s = 0; s < B; ++s) {
      std::vector<double> want(static_cast<size_t>(K), 0.1 / K);
      want[size_t(ds.labels[size_t(idx[size_t(s)])])] += 0.9 * lam;
      want[size_t(ds.labels[size_t(idx[size_t(B - 1 - s)])])] += 0.9 * (1 - lam);
      double sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        CHECK(t[size_t(s * K + k)] == doctest::Approx(want[size_t(k)]).epsilon(1e-6));
        sum += t[size_t(s * K + k)];
      }
      CHECK(sum == doctest::Approx(1.0).epsilon(1e-6));
    }
  }
}

TEST_CASE("data/augment: CutMix pastes a box and weights labels by the pasted area") {
  const int64_t H = 7, W = 8, C = 3, K = 4, B = 6, isz = H * W * C;
  const ImageDataset ds = synthetic(6, H, W, C, K);
  AugmentConfig cfg;
  cfg.cutmix_alpha = 1.0f;
  const std::vector<int64_t> idx = {0, 1, 2, 3, 4, 5};
  const ImageBatch plain = make_batch(ds, idx, cfg.eval(), 8, 0);
  const auto a = plain.images.to_vector<float>();
  int clipped = 0;
  for (int64_t key = 0; key < 24; ++key) {
    CAPTURE(key);
    const ImageBatch b = make_batch(ds, idx, cfg, 8, key);
    REQUIRE(b.mix == MixKind::cutmix);
    // The documented box.
    const double lam = ref_lambda(8, key, 1.0);
    const double r = std::sqrt(1 - lam);
    const int64_t ch = int64_t(H * r), cw = int64_t(W * r);
    const int64_t cy = int64_t((uint64_t(engine::philox_u32(8, mix_stream(key), 2)) * H) >> 32);
    const int64_t cx = int64_t((uint64_t(engine::philox_u32(8, mix_stream(key), 3)) * W) >> 32);
    auto clampi = [](int64_t v, int64_t hi) { return std::min(std::max(v, int64_t(0)), hi); };
    const int64_t y0 = clampi(cy - ch / 2, H), y1 = clampi(cy + ch / 2, H);
    const int64_t x0 = clampi(cx - cw / 2, W), x1 = clampi(cx + cw / 2, W);
    CHECK(b.box_y0 == y0);
    CHECK(b.box_y1 == y1);
    CHECK(b.box_x0 == x0);
    CHECK(b.box_x1 == x1);
    clipped += (cy - ch / 2 < 0 || cy + ch / 2 > H || cx - cw / 2 < 0 || cx + cw / 2 > W);
    // Pixels: the partner's inside the box, the own image outside; count the pasted positions.
    const auto m = b.images.to_vector<float>();
    int64_t pasted = 0;
    int bad = 0;
    for (int64_t s = 0; s < B; ++s)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const bool in = y >= y0 && y < y1 && x >= x0 && x < x1;
          const int64_t from = in ? B - 1 - s : s;
          bool differs = false;
          for (int64_t c = 0; c < C; ++c) {
            const size_t o = size_t(s * isz + (y * W + x) * C + c);
            bad += m[o] != a[size_t(from * isz + (y * W + x) * C + c)];
            differs |= m[o] != a[o];
          }
          if (s == 0) pasted += differs;
        }
    CHECK(bad == 0);
    const double kept = 1.0 - double(pasted) / double(H * W);
    CHECK(b.lambda == doctest::Approx(kept).epsilon(1e-12));
    const auto t = b.targets.to_vector<float>();
    for (int64_t s = 0; s < B; ++s) {
      std::vector<double> want(static_cast<size_t>(K), 0.0);
      want[size_t(ds.labels[size_t(s)])] += kept;
      want[size_t(ds.labels[size_t(B - 1 - s)])] += 1 - kept;
      double sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        CHECK(t[size_t(s * K + k)] == doctest::Approx(want[size_t(k)]).epsilon(1e-6));
        sum += t[size_t(s * K + k)];
      }
      CHECK(sum == doctest::Approx(1.0).epsilon(1e-6));
    }
  }
  CHECK(clipped > 0);  // some boxes crossed the border and were cut to the image
}

TEST_CASE("data/augment: mix_prob and cutmix_prob choose as documented") {
  const ImageDataset ds = synthetic(4, 2, 2, 1, 3);
  AugmentConfig cfg;
  cfg.mixup_alpha = 0.8f;
  cfg.cutmix_alpha = 1.0f;
  cfg.mix_prob = 0.7f;
  cfg.cutmix_prob = 0.4f;
  int counts[3] = {0, 0, 0};
  for (int64_t key = 0; key < 60; ++key) {
    const ImageBatch b = make_batch(ds, {0, 1, 2, 3}, cfg, 21, key);
    MixKind want = MixKind::none;
    if (engine::philox_uniform(21, mix_stream(key), 0) < 0.7f)
      want =
          engine::philox_uniform(21, mix_stream(key), 1) < 0.4f ? MixKind::cutmix : MixKind::mixup;
    CHECK(b.mix == want);
    counts[int(b.mix)]++;
    if (b.mix == MixKind::none) CHECK(b.lambda == 1.0);
  }
  CHECK(counts[0] > 0);
  CHECK(counts[1] > 0);
  CHECK(counts[2] > 0);
}

TEST_CASE("data/augment: Gamma and Beta samplers have the right moments") {
  for (double alpha : {0.2, 1.0, 3.0}) {
    CAPTURE(alpha);
    PhiloxCursor cur{123, 1, 2};
    const int n = 4000;
    double s = 0, s2 = 0;
    for (int i = 0; i < n; ++i) {
      const double x = sample_beta(cur, alpha, alpha);
      CHECK((x >= 0 && x <= 1));
      s += x;
      s2 += x * x;
    }
    const double mean = s / n, var = s2 / n - mean * mean;
    const double want_var = 1.0 / (4 * (2 * alpha + 1));
    CHECK(std::abs(mean - 0.5) < 4 * std::sqrt(want_var / n));
    CHECK(var == doctest::Approx(want_var).epsilon(0.08));
  }
  for (double alpha : {0.5, 2.5}) {
    CAPTURE(alpha);
    PhiloxCursor cur{7, 3, 4};
    const int n = 4000;
    double s = 0, s2 = 0;
    for (int i = 0; i < n; ++i) {
      const double x = sample_gamma(cur, alpha);
      s += x;
      s2 += x * x;
    }
    const double mean = s / n, var = s2 / n - mean * mean;
    CHECK(std::abs(mean - alpha) < 4 * std::sqrt(alpha / n));
    CHECK(var == doctest::Approx(alpha).epsilon(0.12));
  }
  // The sampler consumes the documented streams: same as the reference implementation.
  for (double alpha : {0.3, 1.7}) {
    PhiloxCursor cur{5, 10, 11};
    RefCursor ref{5, 10, 11};
    for (int i = 0; i < 20; ++i) CHECK(sample_gamma(cur, alpha) == ref_gamma(ref, alpha));
  }
}

TEST_CASE("data/augment: batches are identical across thread counts and calls") {
  const ImageDataset ds = synthetic(40, 32, 32, 3, 10);
  AugmentConfig cfg;
  cfg.mean = {0.49f, 0.48f, 0.45f};
  cfg.std = {0.25f, 0.24f, 0.26f};
  cfg.random_crop = true;
  cfg.horizontal_flip = true;
  cfg.mixup_alpha = 0.8f;
  cfg.cutmix_alpha = 1.0f;
  cfg.label_smoothing = 0.1f;
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < 33; ++i) idx.push_back((i * 17) % 40);
  const int saved = omp_get_max_threads();
  for (int64_t key : {0, 1, 2, 3}) {
    omp_set_num_threads(1);
    const ImageBatch one = make_batch(ds, idx, cfg, 77, key);
    omp_set_num_threads(2);
    const ImageBatch two = make_batch(ds, idx, cfg, 77, key);
    const ImageBatch again = make_batch(ds, idx, cfg, 77, key);
    for (const ImageBatch* o : {&two, &again}) {
      CHECK(std::memcmp(one.images.raw_data(), o->images.raw_data(), one.images.nbytes()) == 0);
      CHECK(std::memcmp(one.targets.raw_data(), o->targets.raw_data(), one.targets.nbytes()) == 0);
      CHECK(o->mix == one.mix);
    }
    const ImageBatch other = make_batch(ds, idx, cfg, 77, key + 100);
    CHECK(std::memcmp(one.images.raw_data(), other.images.raw_data(), one.images.nbytes()) != 0);
    const ImageBatch other_seed = make_batch(ds, idx, cfg, 78, key);
    CHECK(std::memcmp(one.images.raw_data(), other_seed.images.raw_data(), one.images.nbytes()) !=
          0);
  }
  omp_set_num_threads(saved);
}

TEST_CASE("data/augment: bad configurations and indices are rejected") {
  const ImageDataset ds = synthetic(3, 2, 2, 3, 4);
  AugmentConfig cfg;
  CHECK_THROWS_CONTAINING(make_batch(ds, {}, cfg, 0, 0), "make_batch: empty batch");
  CHECK_THROWS_CONTAINING(make_batch(ds, {0, 3}, cfg, 0, 0),
                          "example index 3 out of range for synthetic (3 examples)");
  cfg.mean = {0.1f, 0.2f};
  CHECK_THROWS_CONTAINING(make_batch(ds, {0}, cfg, 0, 0),
                          "mean has 2 values, expected 1 or one per channel (3)");
  cfg = AugmentConfig();
  cfg.std = {0.f};
  CHECK_THROWS_CONTAINING(make_batch(ds, {0}, cfg, 0, 0), "std must be positive");
  cfg = AugmentConfig();
  cfg.label_smoothing = 1.f;
  CHECK_THROWS_CONTAINING(make_batch(ds, {0}, cfg, 0, 0), "label_smoothing must be in [0, 1)");
  cfg = AugmentConfig();
  cfg.mixup_alpha = -1.f;
  CHECK_THROWS_CONTAINING(make_batch(ds, {0}, cfg, 0, 0), "mixup_alpha must be >= 0");
  CHECK_THROWS_CONTAINING(make_batch(ds, {0}, AugmentConfig(), 0, int64_t(1) << 52),
                          "batch key 4503599627370496 is outside [0, 2^52)");
}

// ---- sampler and loader -----------------------------------------------------------------------

TEST_CASE("data/sampler: epochs are permutations covered by their batches") {
  const int64_t n = 103, B = 10;
  const EpochSampler s(n, B, 4242);
  CHECK(s.batches_per_epoch() == 10);
  std::vector<std::vector<int64_t>> orders;
  for (int64_t e = 0; e < 3; ++e) {
    const auto ord = s.order(e);
    // The documented permutation.
    std::vector<int64_t> want(static_cast<size_t>(n));
    engine::philox_permutation(4242, uint64_t(0x5A) << 56 | uint64_t(e), n, want.data());
    CHECK(ord == want);
    std::vector<int64_t> sorted = ord;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < n; ++i) CHECK(sorted[size_t(i)] == i);
    // Batches of the epoch: consecutive slices, the 3 leftover examples dropped.
    std::vector<int64_t> seen;
    for (int64_t j = 0; j < 10; ++j) {
      const auto item = s.batch(e * 10 + j);
      CHECK(item.epoch == e);
      CHECK(item.batch_in_epoch == j);
      CHECK(item.indices.size() == size_t(B));
      seen.insert(seen.end(), item.indices.begin(), item.indices.end());
    }
    CHECK(seen == std::vector<int64_t>(ord.begin(), ord.begin() + 100));
    orders.push_back(ord);
  }
  CHECK(orders[0] != orders[1]);
  CHECK(orders[1] != orders[2]);
  // A pure function of (seed, index): a fresh sampler, asked out of order, agrees.
  const EpochSampler fresh(n, B, 4242);
  CHECK(fresh.batch(25).indices == s.batch(25).indices);
  CHECK(fresh.batch(3).indices == s.batch(3).indices);
  CHECK(EpochSampler(n, B, 4243).batch(3).indices != s.batch(3).indices);

  // Without drop_last the tail is a last, smaller batch; without shuffling the order is 0..n-1.
  const EpochSampler keep(n, B, 4242, true, false);
  CHECK(keep.batches_per_epoch() == 11);
  CHECK(keep.batch(10).indices.size() == 3);
  std::vector<int64_t> all;
  for (int64_t j = 11; j < 22; ++j) {
    const auto it = keep.batch(j).indices;
    all.insert(all.end(), it.begin(), it.end());
  }
  CHECK(all == s.order(1));
  const EpochSampler seq(n, B, 4242, false, false);
  CHECK(seq.batch(12).indices == std::vector<int64_t>{10, 11, 12, 13, 14, 15, 16, 17, 18, 19});
  CHECK(seq.batch(10).indices == std::vector<int64_t>{100, 101, 102});
  CHECK_THROWS_CONTAINING(EpochSampler(5, 8, 0), "batch size 8 exceeds the 5 examples");
}

TEST_CASE("data/loader: batches arrive in order, also without a thread") {
  for (int depth : {0, 1, 3}) {
    CAPTURE(depth);
    std::atomic<int64_t> calls{0};
    Prefetcher<int64_t> p(
        [&](int64_t i) {
          calls++;
          if (i % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
          return i * 10 + 1;
        },
        depth, 5);
    for (int64_t i = 5; i < 45; ++i) {
      CHECK(p.position() == i);
      CHECK(p.next() == i * 10 + 1);
    }
    CHECK(calls.load() <= 40 + depth + 1);  // never more than depth (+1 in progress) ahead
  }
}

TEST_CASE("data/loader: reset restarts from any index") {
  Prefetcher<int64_t> p([](int64_t i) { return i; }, 4);
  CHECK(p.next() == 0);
  CHECK(p.next() == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));  // let the queue fill
  p.reset(100);
  CHECK(p.position() == 100);
  CHECK(p.next() == 100);
  CHECK(p.next() == 101);
  p.reset(2);
  for (int64_t i = 2; i < 10; ++i) CHECK(p.next() == i);
}

TEST_CASE("data/loader: an exception in the worker is rethrown by next()") {
  for (int depth : {0, 2}) {
    CAPTURE(depth);
    Prefetcher<int64_t> p(
        [](int64_t i) -> int64_t {
          ENGINE_CHECK(i != 3, "bad batch ", i);
          return i;
        },
        depth);
    CHECK(p.next() == 0);
    CHECK(p.next() == 1);
    CHECK(p.next() == 2);
    CHECK_THROWS_CONTAINING(p.next(), "bad batch 3");
    if (depth > 0) CHECK_THROWS_CONTAINING(p.next(), "bad batch 3");  // sticky until reset
    p.reset(4);
    CHECK(p.next() == 4);
    p.reset(1);
    CHECK(p.next() == 1);
  }
}

TEST_CASE("data/loader: destruction does not hang with work pending") {
  const auto t0 = std::chrono::steady_clock::now();
  auto slow = [](int64_t i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return std::vector<int64_t>(100, i);
  };
  { Prefetcher<std::vector<int64_t>> p(slow, 3); }  // destroyed while making the first
  {
    Prefetcher<std::vector<int64_t>> p(slow, 2);
    CHECK(p.next()[0] == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // queue full, worker waiting
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  CHECK(ms < 500);
}

TEST_CASE("data/loader: image batches resume bit-exactly") {
  const ImageDataset ds = synthetic(50, 8, 8, 3, 10);
  AugmentConfig cfg;
  cfg.random_crop = true;
  cfg.horizontal_flip = true;
  cfg.mixup_alpha = 0.5f;
  cfg.cutmix_alpha = 1.0f;
  const EpochSampler sampler(50, 16, 31);  // 3 batches per epoch
  std::vector<ImageBatch> first;
  {
    Prefetcher<ImageBatch> p(image_batch_maker(ds, sampler, cfg, 31), 2);
    for (int i = 0; i < 7; ++i) first.push_back(p.next());
  }
  Prefetcher<ImageBatch> resumed(image_batch_maker(ds, EpochSampler(50, 16, 31), cfg, 31), 2, 4);
  for (int i = 4; i < 7; ++i) {
    const ImageBatch b = resumed.next();
    CHECK(b.key == i);
    CHECK(b.indices == first[size_t(i)].indices);
    CHECK(std::memcmp(b.images.raw_data(), first[size_t(i)].images.raw_data(), b.images.nbytes()) ==
          0);
    CHECK(std::memcmp(b.targets.raw_data(), first[size_t(i)].targets.raw_data(),
                      b.targets.nbytes()) == 0);
  }
  CHECK(first[0].indices != first[3].indices);  // epoch 1 reshuffled
}
