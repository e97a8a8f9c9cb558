// Image classification datasets read from the files users have (DESIGN.md §8): Fashion-MNIST as
// IDX files (Debian's dataset-fashion-mnist) and CIFAR-10/100 in their binary versions. The
// images stay as bytes (channels-last), 4x smaller than f32; batches are converted and augmented
// on the fly (train/augment.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace train {

struct ImageDataset {
  std::string name;  // "fashion-mnist/train", "cifar10/test", "cifar100/train", ...
  int64_t n = 0, height = 0, width = 0, channels = 0;
  std::vector<uint8_t> pixels;  // [n, height, width, channels], row-major
  std::vector<int64_t> labels;  // [n], each in [0, num_classes())
  std::vector<std::string> class_names;

  int64_t image_size() const { return height * width * channels; }  // bytes per image
  int64_t num_classes() const { return int64_t(class_names.size()); }
  const uint8_t* image(int64_t i) const { return pixels.data() + i * image_size(); }
};

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// split "train" (60000 images) or "test" (10000): reads {train,t10k}-images-idx3-ubyte and
// -labels-idx1-ubyte from `dir`, gzip-compressed (.gz, as Debian installs them) or not. Checks
// the magic numbers (2051 images, 2049 labels, big-endian), dimensions, that image and label
// counts agree, label range and exact file lengths; errors name the file and what is wrong.
ImageDataset load_fashion_mnist(const std::string& dir = kFashionMnistDir,
                                const std::string& split = "train");

// classes 10 or 100, split "train" or "test". `dir` is the folder holding the binary files or
// the one above it (with cifar-10-batches-bin / cifar-100-binary inside). CIFAR-10:
// data_batch_1..5.bin (train), test_batch.bin; records of 1 label byte + 3072 pixel bytes (R,
// G, B planes of 32x32, row-major); names from batches.meta.txt when present. CIFAR-100:
// train.bin, test.bin; records of 2 label bytes (coarse, fine; the fine label is used) + 3072;
// names from fine_label_names.txt when present. Planes are converted to channels-last.
ImageDataset load_cifar(const std::string& dir, int classes, const std::string& split);

}  // namespace train
