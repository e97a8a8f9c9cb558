// safetensors files (the format of Hugging Face `safetensors`, readable by PyTorch and numpy):
//   8 bytes: N, the header length, little-endian u64
//   N bytes: JSON {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//                  "__metadata__": {"<key>": "<value>", ...}}   (padded with spaces)
//   the data: each tensor's bytes, row-major, little-endian, at [begin, end) from the data start.
// dtypes: F32, F64, BF16, I32, I64 map to the engine's dtypes both ways; F16 is read as f32, U8 and
// BOOL as i32. Everything else is rejected with a clear error.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace engine {

struct SafetensorsFile {
  std::string path;
  std::vector<std::string> names;         // in the order of their data in the file
  std::map<std::string, Tensor> tensors;  // CPU, contiguous, owning their memory
  std::map<std::string, std::string> metadata;

  bool contains(const std::string& name) const { return tensors.count(name) != 0; }
  // Throws an error naming the file and the missing tensor.
  const Tensor& at(const std::string& name) const;
};

// Writes the tensors (any device and layout; stored contiguous, in the given order) and the
// metadata. Atomic: the bytes go to `path.tmp.<pid>`, are fsync'ed and renamed over `path`, so
// `path` is always either the old file or the complete new one. Duplicate or reserved names
// ("__metadata__") are errors.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads and strictly validates a file: any malformed header or data layout throws engine::Error
// with one line starting "safetensors: <path>: ". Never reads out of bounds.
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace engine
