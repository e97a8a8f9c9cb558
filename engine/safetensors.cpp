#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

// Tensor bytes are copied as they lie in memory; the format is little-endian.
static_assert(std::endian::native == std::endian::little, "safetensors IO assumes a little-endian host");

namespace engine {
namespace {

using json = nlohmann::ordered_json;  // keeps the header's key order when writing

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit

template <class... Args>
[[noreturn]] void fail(const std::string& path, const Args&... args) {
  ENGINE_FAIL("safetensors: ", path, ": ", args...);
}

// A dtype as stored in the file, and what it becomes in memory.
struct FileDType {
  const char* name;
  size_t size;  // bytes per element in the file
  DType dtype;  // dtype of the loaded tensor
};
constexpr FileDType kFileDTypes[] = {
    {"F32", 4, DType::f32},  {"F64", 8, DType::f64}, {"BF16", 2, DType::bf16},
    {"I32", 4, DType::i32},  {"I64", 8, DType::i64}, {"F16", 2, DType::f32},  // read-only
    {"U8", 1, DType::i32},   {"BOOL", 1, DType::i32},                          // read-only
};

const FileDType* find_file_dtype(const std::string& name) {
  for (const FileDType& d : kFileDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const char* file_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
  }
  return "?";
}

// IEEE half -> float, exact (every half is a float), including subnormals, Inf and NaN.
float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // Inf / NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // ±0
  } else {  // subnormal: normalise the mantissa
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while (!(mant & 0x400u));
    bits = sign | uint32_t(112 - e) << 23 | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Closes the descriptor on every path out of a function.
struct FileDescriptor {
  int fd = -1;
  explicit FileDescriptor(int f) : fd(f) {}
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
};

void read_at(int fd, void* dst, size_t n, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, off_t(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(path, "read failed: ", std::strerror(errno));
    if (r == 0) fail(path, "unexpected end of file (was it modified while being read?)");
    p += r;
    n -= size_t(r);
    offset += uint64_t(r);
  }
}

void write_all(int fd, const void* src, size_t n, const std::string& path) {
  auto* p = static_cast<const char*>(src);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) fail(path, "write failed: ", std::strerror(errno));
    p += w;
    n -= size_t(w);
  }
}

// A non-negative JSON integer, or an error naming the field.
uint64_t get_uint(const json& v, const std::string& path, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) fail(path, what, " is negative (", v.dump(), ")");
  fail(path, what, " is not an integer (", v.dump(), ")");
}

struct Entry {
  std::string name;
  const FileDType* fdt;
  Shape shape;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& name, const json& e, uint64_t data_size,
                  const std::string& path) {
  const std::string what = "tensor '" + name + "'";
  if (!e.is_object()) fail(path, what, ": entry is not an object");
  for (auto it = e.begin(); it != e.end(); ++it)
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
      fail(path, what, ": unexpected field '", it.key(), "'");
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!e.contains(field)) fail(path, what, ": missing field '", field, "'");

  Entry out{name, nullptr, {}, 0, 0};
  const json& dt = e["dtype"];
  if (!dt.is_string()) fail(path, what, ": dtype is not a string (", dt.dump(), ")");
  out.fdt = find_file_dtype(dt.get<std::string>());
  if (!out.fdt)
    fail(path, what, ": unsupported dtype '", dt.get<std::string>(),
         "' (supported: F32, F64, BF16, I32, I64; F16, U8, BOOL are read as f32/i32)");

  const json& sh = e["shape"];
  if (!sh.is_array()) fail(path, what, ": shape is not an array (", sh.dump(), ")");
  if (sh.size() > size_t(kMaxDims))
    fail(path, what, ": shape has ", sh.size(), " dimensions, at most ", kMaxDims, " supported");
  // The product of the non-zero dims times the element size must fit in int64, so that neither
  // the byte count nor the strides of the tensor overflow (a zero dim does not excuse huge ones).
  const uint64_t limit = uint64_t(std::numeric_limits<int64_t>::max()) / out.fdt->size;
  uint64_t product = 1;
  bool has_zero = false;
  for (size_t i = 0; i < sh.size(); ++i) {
    uint64_t d = get_uint(sh[i], path, what + ": shape dim " + std::to_string(i));
    if (d == 0) {
      has_zero = true;
    } else {
      if (d > limit / product) fail(path, what, ": shape ", sh.dump(), " is too large (overflow)");
      product *= d;
    }
    out.shape.push_back(int64_t(d));
  }
  const uint64_t nbytes = has_zero ? 0 : product * out.fdt->size;

  const json& off = e["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    fail(path, what, ": data_offsets is not an array of 2 integers (", off.dump(), ")");
  out.begin = get_uint(off[0], path, what + ": data_offsets[0]");
  out.end = get_uint(off[1], path, what + ": data_offsets[1]");
  if (out.end < out.begin)
    fail(path, what, ": data_offsets ", off.dump(), " end before begin");
  if (out.end > data_size)
    fail(path, what, ": data_offsets ", off.dump(), " run past the data section (", data_size,
         " bytes)");
  if (out.end - out.begin != nbytes)
    fail(path, what, ": data_offsets ", off.dump(), " span ", out.end - out.begin,
         " bytes but shape ", out.shape, " of ", out.fdt->name, " needs ", nbytes);
  return out;
}

// Parses the header, rejecting duplicate keys in any object (nlohmann keeps the last silently)
// and nesting deeper than a valid header can be.
json parse_header(const std::string& text, const std::string& path) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (depth > 3) fail(path, "header nests deeper than a safetensors header can");
    if (ev == json::parse_event_t::object_start) keys.emplace_back();
    if (ev == json::parse_event_t::object_end) keys.pop_back();
    if (ev == json::parse_event_t::key && !keys.back().insert(parsed.get<std::string>()).second)
      fail(path, "duplicate key '", parsed.get<std::string>(), "' in the header");
    return true;
  };
  try {
    return json::parse(text, cb);
  } catch (const json::exception& e) {
    fail(path, "header is not valid JSON: ", e.what());
  }
}

// Copies the file bytes of entry `e` into a new tensor, converting read-only dtypes.
Tensor read_tensor(int fd, uint64_t data_start, const Entry& e, const std::string& path) {
  Tensor t = Tensor::empty(e.shape, e.fdt->dtype);
  const uint64_t n = uint64_t(t.numel());
  const uint64_t at = data_start + e.begin;
  const std::string name = e.fdt->name;
  if (name == "F16") {
    std::vector<uint16_t> h(n);
    read_at(fd, h.data(), n * 2, at, path);
    float* d = t.data<float>();
    for (uint64_t i = 0; i < n; ++i) d[i] = half_to_float(h[i]);
  } else if (name == "U8" || name == "BOOL") {
    std::vector<uint8_t> b(n);
    read_at(fd, b.data(), n, at, path);
    int32_t* d = t.data<int32_t>();
    for (uint64_t i = 0; i < n; ++i) {
      if (name == "BOOL" && b[i] > 1)
        fail(path, "tensor '", e.name, "': BOOL element ", i, " has byte value ", int(b[i]),
             ", expected 0 or 1");
      d[i] = b[i];
    }
  } else {
    read_at(fd, t.raw_data(), t.nbytes(), at, path);
  }
  return t;
}

}  // namespace

const Tensor& SafetensorsFile::at(const std::string& name) const {
  auto it = tensors.find(name);
  ENGINE_CHECK(it != tensors.end(), "safetensors: ", path, ": no tensor named '", name, "' (the file has ",
               tensors.size(), " tensors)");
  return it->second;
}

SafetensorsFile load_safetensors(const std::string& path) {
  FileDescriptor f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) fail(path, "cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail(path, "cannot stat: ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  const uint64_t file_size = uint64_t(st.st_size);
  if (file_size < 8) fail(path, "file is ", file_size, " bytes, shorter than the 8-byte header length");

  unsigned char len_bytes[8];
  read_at(f.fd, len_bytes, 8, 0, path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len == 0) fail(path, "header length is 0");
  if (header_len > kMaxHeaderBytes)
    fail(path, "header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes, " bytes");
  if (header_len > file_size - 8)
    fail(path, "header length ", header_len, " runs past the end of the file (", file_size, " bytes)");

  std::string text(header_len, '\0');
  read_at(f.fd, text.data(), header_len, 8, path);
  // Starting with '{' and parsing as JSON makes the header an object.
  if (text[0] != '{') fail(path, "header is not a JSON object (it does not start with '{')");
  const json header = parse_header(text, path);

  SafetensorsFile out;
  out.path = path;
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) fail(path, "__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          fail(path, "__metadata__ value of '", m.key(), "' is not a string (", m->dump(), ")");
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(it.key(), *it, data_size, path));
  }

  // The tensors must tile the data section exactly: no overlaps, no holes, no trailing bytes.
  // Holes are legal for a reader in principle, but the reference implementation rejects them,
  // and a file with unaccounted bytes is more likely damaged than deliberate.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < cursor)
      fail(path, "tensors '", prev->name, "' and '", e.name, "' overlap in the data section");
    if (e.begin > cursor)
      fail(path, "hole of ", e.begin - cursor, " bytes at data offset ", cursor,
           " not covered by any tensor");
    cursor = e.end;
    prev = &e;
  }
  if (cursor != data_size)
    fail(path, "data section has ", data_size - cursor, " trailing bytes not covered by any tensor");

  for (const Entry& e : entries) {
    out.names.push_back(e.name);
    out.tensors.emplace(e.name, read_tensor(f.fd, data_start, e, path));
  }
  return out;
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) {
    json m = json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::vector<Tensor> data;  // CPU, contiguous
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") fail(path, "'__metadata__' is reserved and cannot name a tensor");
    if (!seen.insert(name).second) fail(path, "duplicate tensor name '", name, "'");
    if (!t.defined()) fail(path, "tensor '", name, "' is undefined");
    Tensor c = t.to(Device::cpu()).contiguous();
    json entry = json::object();
    entry["dtype"] = file_dtype_name(c.dtype());
    entry["shape"] = json::array();
    for (int64_t d : c.shape()) entry["shape"].push_back(d);
    entry["data_offsets"] = {offset, offset + c.nbytes()};
    offset += c.nbytes();
    header[name] = std::move(entry);
    data.push_back(std::move(c));
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    fail(path, "a tensor name or metadata string is not valid UTF-8 (", e.what(), ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  bool renamed = false;
  try {
    FileDescriptor f(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (f.fd < 0) fail(path, "cannot create ", tmp, ": ", std::strerror(errno));
    write_all(f.fd, len_bytes, 8, path);
    write_all(f.fd, text.data(), text.size(), path);
    for (const Tensor& c : data) write_all(f.fd, c.raw_data(), c.nbytes(), path);
    if (::fsync(f.fd) != 0) fail(path, "fsync failed: ", std::strerror(errno));
    const int fd = f.fd;
    f.fd = -1;
    if (::close(fd) != 0) fail(path, "close failed: ", std::strerror(errno));
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      fail(path, "cannot rename ", tmp, " over it: ", std::strerror(errno));
    renamed = true;
  } catch (...) {
    if (!renamed) ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable; failure here leaves a complete file, so it is not an error.
  std::string dir = std::filesystem::path(path).parent_path().string();
  FileDescriptor d(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.fd >= 0) (void)::fsync(d.fd);
}

}  // namespace engine
