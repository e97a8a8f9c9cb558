#include "trainer/image_data.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/error.h"

namespace train {
namespace fs = std::filesystem;
namespace {

const char* const kFashionNames[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                       "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

const char* const kCifar10Names[10] = {"airplane", "automobile", "bird",  "cat",  "deer",
                                       "dog",      "frog",       "horse", "ship", "truck"};

// The fine labels of CIFAR-100 in label order (as in fine_label_names.txt).
const char* const kCifar100Names[100] = {
    "apple",       "aquarium_fish", "baby",      "bear",       "beaver",       "bed",
    "bee",         "beetle",        "bicycle",   "bottle",     "bowl",         "boy",
    "bridge",      "bus",           "butterfly", "camel",      "can",          "castle",
    "caterpillar", "cattle",        "chair",     "chimpanzee", "clock",        "cloud",
    "cockroach",   "couch",         "crab",      "crocodile",  "cup",          "dinosaur",
    "dolphin",     "elephant",      "flatfish",  "forest",     "fox",          "girl",
    "hamster",     "house",         "kangaroo",  "keyboard",   "lamp",         "lawn_mower",
    "leopard",     "lion",          "lizard",    "lobster",    "man",          "maple_tree",
    "motorcycle",  "mountain",      "mouse",     "mushroom",   "oak_tree",     "orange",
    "orchid",      "otter",         "palm_tree", "pear",       "pickup_truck", "pine_tree",
    "plain",       "plate",         "poppy",     "porcupine",  "possum",       "rabbit",
    "raccoon",     "ray",           "road",      "rocket",     "rose",         "sea",
    "seal",        "shark",         "shrew",     "skunk",      "skyscraper",   "snail",
    "snake",       "spider",        "squirrel",  "streetcar",  "sunflower",    "sweet_pepper",
    "table",       "tank",          "telephone", "television", "tiger",        "tractor",
    "train",       "trout",         "tulip",     "turtle",     "wardrobe",     "whale",
    "willow_tree", "wolf",          "woman",     "worm"};

// ---- Fashion-MNIST (IDX) ---------------------------------------------------------------------

constexpr const char* kFashionOp = "load_fashion_mnist";

uint32_t be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

// Reads up to `len` bytes; fewer only at the end of the data (or on a gzip error).
int64_t gz_read(gzFile f, uint8_t* dst, int64_t len) {
  int64_t got = 0;
  while (got < len) {
    const unsigned chunk = unsigned(std::min<int64_t>(len - got, int64_t(1) << 30));
    const int r = gzread(f, dst + got, chunk);
    if (r <= 0) break;
    got += r;
  }
  return got;
}

// " (gzip: unexpected end of file)" when zlib reported an error, else "".
std::string gz_problem(gzFile f) {
  int err = Z_OK;
  const char* msg = gzerror(f, &err);
  if (err == Z_OK || err == Z_STREAM_END) return "";
  return engine::detail::concat(" (gzip: ", msg ? msg : "error", ")");
}

struct Idx {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};

// One IDX file of unsigned bytes with `ndim` dimensions, read through zlib (gzread passes
// uncompressed files through unchanged). The decompressed length must be exactly header + data.
Idx read_idx(const std::string& path, uint32_t magic, int ndim, const char* what) {
  gzFile f = gzopen(path.c_str(), "rb");
  ENGINE_CHECK(f != nullptr, kFashionOp, ": cannot open ", path, ": ", std::strerror(errno));
  struct Closer {
    gzFile f;
    ~Closer() { gzclose(f); }
  } closer{f};
  gzbuffer(f, 1 << 18);

  uint8_t header[4 + 4 * 3];
  const int64_t header_len = 4 + 4 * int64_t(ndim);
  const int64_t hgot = gz_read(f, header, header_len);
  ENGINE_CHECK(hgot == header_len, kFashionOp, ": ", path, " is truncated: the IDX header needs ",
               header_len, " bytes, the file holds ", hgot, gz_problem(f));
  const uint32_t m = be32(header);
  ENGINE_CHECK(m == magic, kFashionOp, ": ", path, " has magic number ", m, " (0x", std::hex, m,
               std::dec, "), expected ", magic, " for an IDX ", what,
               " file (unsigned bytes, big-endian)");
  Idx idx;
  int64_t body = 1;
  for (int d = 0; d < ndim; ++d) {
    const int64_t v = be32(header + 4 + 4 * d);
    // Image sides are bounded so that the product below cannot overflow.
    ENGINE_CHECK(d == 0 || (v >= 1 && v <= 4096), kFashionOp, ": ", path, " declares dimension ", d,
                 " = ", v, ", expected 1..4096");
    idx.dims.push_back(v);
    body *= v;
  }
  idx.data.resize(size_t(body));
  const int64_t got = gz_read(f, idx.data.data(), body);
  if (got < body) {
    std::string shape = std::to_string(idx.dims[0]) + " " + what + "s";
    if (ndim == 3)
      shape += " of " + std::to_string(idx.dims[1]) + "x" + std::to_string(idx.dims[2]);
    ENGINE_FAIL(kFashionOp, ": ", path, " is truncated: the header declares ", shape, " = ", body,
                " bytes after the header, the file holds ", got, " (", body - got,
                " bytes missing)", gz_problem(f));
  }
  uint8_t extra[64];
  const int64_t more = gz_read(f, extra, sizeof extra);
  ENGINE_CHECK(more == 0, kFashionOp, ": ", path, " has ",
               more == int64_t(sizeof extra) ? "at least " : "", more, " bytes after the ",
               idx.dims[0], " ", what, "s its header declares");
  const std::string problem = gz_problem(f);
  ENGINE_CHECK(problem.empty(), kFashionOp, ": ", path, " is corrupt", problem);
  return idx;
}

// dir/name.gz, else dir/name; "" when neither exists.
std::string find_idx(const std::string& dir, const std::string& name) {
  for (const std::string& p : {dir + "/" + name + ".gz", dir + "/" + name}) {
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return p;
  }
  return "";
}

// ---- CIFAR ------------------------------------------------------------------------------------

std::vector<std::string> read_names(const std::string& path, int expected) {
  std::ifstream in(path);
  ENGINE_CHECK(in.good(), "load_cifar: cannot open ", path, ": ", std::strerror(errno));
  std::vector<std::string> names;
  std::string line;
  while (std::getline(in, line)) {
    const auto b = line.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) continue;
    const auto e = line.find_last_not_of(" \t\r\n");
    names.push_back(line.substr(b, e - b + 1));
  }
  ENGINE_CHECK(int(names.size()) == expected, "load_cifar: ", path, " lists ", names.size(),
               " class names, expected ", expected);
  return names;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ENGINE_CHECK(in.good(), "load_cifar: cannot open ", path, ": ", std::strerror(errno));
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  ENGINE_CHECK(!ec, "load_cifar: cannot read the size of ", path, ": ", ec.message());
  std::vector<uint8_t> bytes(size);
  in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(size));
  ENGINE_CHECK(in.gcount() == std::streamsize(size), "load_cifar: read ", in.gcount(), " of ", size,
               " bytes from ", path);
  return bytes;
}

}  // namespace

ImageDataset load_fashion_mnist(const std::string& dir, const std::string& split) {
  ENGINE_CHECK(split == "train" || split == "test", kFashionOp, ": split must be \"train\" or ",
               "\"test\", got \"", split, "\"");
  const std::string prefix = split == "train" ? "train" : "t10k";
  const std::string image_name = prefix + "-images-idx3-ubyte";
  const std::string label_name = prefix + "-labels-idx1-ubyte";
  const std::string image_path = find_idx(dir, image_name);
  const std::string label_path = find_idx(dir, label_name);
  if (image_path.empty() || label_path.empty()) {
    const std::string& missing = image_path.empty() ? image_name : label_name;
    ENGINE_FAIL(kFashionOp, ": Fashion-MNIST is missing: no ", missing, ".gz (or uncompressed ",
                missing, ") in ", dir,
                "; install it with: sudo apt-get install dataset-fashion-mnist (or run "
                "scripts/setup.sh)");
  }
  Idx images = read_idx(image_path, 2051, 3, "image");
  Idx labels = read_idx(label_path, 2049, 1, "label");
  ENGINE_CHECK(images.dims[0] == labels.dims[0], kFashionOp, ": ", image_path, " holds ",
               images.dims[0], " images but ", label_path, " holds ", labels.dims[0], " labels");

  ImageDataset ds;
  ds.name = "fashion-mnist/" + split;
  ds.n = images.dims[0];
  ds.height = images.dims[1];
  ds.width = images.dims[2];
  ds.channels = 1;
  ds.pixels = std::move(images.data);
  ds.class_names.assign(std::begin(kFashionNames), std::end(kFashionNames));
  ds.labels.resize(size_t(ds.n));
  for (int64_t i = 0; i < ds.n; ++i) {
    const uint8_t l = labels.data[size_t(i)];
    ENGINE_CHECK(l < 10, kFashionOp, ": ", label_path, ": label ", int(l), " of example ", i,
                 " is out of range [0, 10)");
    ds.labels[size_t(i)] = l;
  }
  return ds;
}

ImageDataset load_cifar(const std::string& dir, int classes, const std::string& split) {
  ENGINE_CHECK(classes == 10 || classes == 100, "load_cifar: classes must be 10 or 100, got ",
               classes);
  ENGINE_CHECK(split == "train" || split == "test", "load_cifar: split must be \"train\" or ",
               "\"test\", got \"", split, "\"");
  const bool c10 = classes == 10;
  const std::string set = c10 ? "CIFAR-10" : "CIFAR-100";
  const std::string sub = c10 ? "cifar-10-batches-bin" : "cifar-100-binary";
  std::vector<std::string> files;
  if (!c10)
    files = {split + ".bin"};
  else if (split == "test")
    files = {"test_batch.bin"};
  else
    for (int b = 1; b <= 5; ++b) files.push_back("data_batch_" + std::to_string(b) + ".bin");

  // The folder itself, or its standard subfolder (where the archive extracts to).
  std::string root;
  for (const std::string& cand : {dir, dir + "/" + sub}) {
    std::error_code ec;
    if (fs::is_regular_file(cand + "/" + files[0], ec)) {
      root = cand;
      break;
    }
  }
  const std::string how = "download the " + set + " binary version from " +
                          "https://www.cs.toronto.edu/~kriz/cifar.html and pass --data-dir";
  ENGINE_CHECK(!root.empty(), "load_cifar: ", set, " is missing: no ", files[0], " in ", dir,
               " or ", dir, "/", sub, "; ", how);
  for (const std::string& f : files) {
    std::error_code ec;
    ENGINE_CHECK(fs::is_regular_file(root + "/" + f, ec), "load_cifar: ", set,
                 " is incomplete: no ", f, " in ", root, "; ", how);
  }

  const int64_t label_bytes = c10 ? 1 : 2;
  const int64_t plane = 32 * 32, record = label_bytes + 3 * plane;
  ImageDataset ds;
  ds.name = (c10 ? "cifar10/" : "cifar100/") + split;
  ds.height = ds.width = 32;
  ds.channels = 3;
  for (const std::string& f : files) {
    const std::string path = root + "/" + f;
    const std::vector<uint8_t> bytes = read_bytes(path);
    const int64_t size = int64_t(bytes.size());
    ENGINE_CHECK(size > 0, "load_cifar: ", path, " is empty");
    ENGINE_CHECK(size % record == 0, "load_cifar: ", path, " is truncated: ", size,
                 " bytes is not a multiple of the ", record, "-byte record (", size / record,
                 " whole records, then ", size % record, " of ", record, " bytes)");
    const int64_t count = size / record, base = ds.n;
    ds.n += count;
    ds.labels.resize(size_t(ds.n));
    ds.pixels.resize(size_t(ds.n * ds.image_size()));
    for (int64_t r = 0; r < count; ++r) {
      const uint8_t* rec = bytes.data() + r * record;
      if (!c10)
        ENGINE_CHECK(rec[0] < 20, "load_cifar: ", path, ": coarse label ", int(rec[0]),
                     " of record ", r, " is out of range [0, 20)");
      const int label = rec[label_bytes - 1];
      ENGINE_CHECK(label < classes, "load_cifar: ", path, ": label ", label, " of record ", r,
                   " is out of range [0, ", classes, ")");
      ds.labels[size_t(base + r)] = label;
    }
    // Planes (c, y, x) -> channels-last (y, x, c).
#pragma omp parallel for schedule(static) if (count > 256)
    for (int64_t r = 0; r < count; ++r) {
      const uint8_t* src = bytes.data() + r * record + label_bytes;
      uint8_t* dst = ds.pixels.data() + (base + r) * ds.image_size();
      for (int64_t p = 0; p < plane; ++p)
        for (int64_t c = 0; c < 3; ++c) dst[p * 3 + c] = src[c * plane + p];
    }
  }
  const std::string names_file = root + (c10 ? "/batches.meta.txt" : "/fine_label_names.txt");
  std::error_code ec;
  if (fs::is_regular_file(names_file, ec))
    ds.class_names = read_names(names_file, classes);
  else if (c10)
    ds.class_names.assign(std::begin(kCifar10Names), std::end(kCifar10Names));
  else
    ds.class_names.assign(std::begin(kCifar100Names), std::end(kCifar100Names));
  return ds;
}

}  // namespace train
