// safetensors IO: round trips, the exact bytes other readers expect, atomic writes, and a suite
// of hand-made corrupt files that must each give one clear error (never a crash).
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "tests/helpers.h"

using engine::DType;
using engine::Shape;
using engine::Tensor;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test case, removed afterwards.
struct TempDir {
  fs::path dir;
  TempDir() {
    static int counter = 0;
    dir = fs::temp_directory_path() /
          ("engine_safetensors_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() { fs::remove_all(dir); }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

// Replaces the file (removing it first: ext4 flushes a truncated-and-rewritten file on close,
// which made the many rewrites below slow).
void write_bytes(const std::string& path, const std::string& bytes) {
  fs::remove(path);
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char(uint8_t(v >> (8 * i)));
  return s;
}

// A file made by hand: length prefix (the header's size unless overridden), header, data.
std::string file_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

std::string zeros(size_t n) { return std::string(n, '\0'); }

// Same shape, dtype and bit pattern.
void check_identical(const Tensor& got, const Tensor& want) {
  REQUIRE(got.dtype() == want.dtype());
  REQUIRE(got.shape() == want.shape());
  CHECK(got.is_contiguous());
  Tensor w = want.contiguous();
  CHECK(std::memcmp(got.raw_data(), w.raw_data(), w.nbytes()) == 0);
}

// ---- round trip

// Every dtype, 0-d, empty and odd-sized tensors and a non-contiguous view (written contiguous),
// saved with metadata that needs escaping, then loaded back.
struct RoundTrip {
  TempDir tmp;
  const std::string path = tmp.file("model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors = {
      {"encoder.w", testing::non_contiguous(testing::randn({3, 5}, 1))},  // written contiguous
      {"encoder.b", testing::randn({7}, 2, DType::f64)},
      {"bf", testing::randn({2, 3, 1}, 3, DType::bf16)},
      {"ids", Tensor::from_vector(std::vector<int32_t>{-1, 0, 7, 2147483647}, {4})},
      {"steps", Tensor::from_vector(std::vector<int64_t>{int64_t(1) << 40, -3, 0, 5}, {2, 2})},
      {"temperature", Tensor::scalar(0.07)},  // 0-d
      {"empty", Tensor::empty({0, 3})},
      {"odd.bf16", testing::randn({5}, 4, DType::bf16)},  // 10 bytes: later data not 4-aligned
      {"last", testing::randn({1, 1, 13}, 5)},
      {"empty_i64", Tensor::empty({0}, DType::i64)},
  };
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note \"quoted\"", "héllo\n"}};
  engine::SafetensorsFile f;
  RoundTrip() {
    engine::save_safetensors(path, tensors, meta);
    f = engine::load_safetensors(path);
  }
};

// ---- exact bytes

// a = [1, -2] (F32) and b = 1 (0-d BF16) with metadata format = pt, saved by the writer.
struct TinyFile {
  TempDir tmp;
  const std::string path = tmp.file("tiny.safetensors");
  TinyFile() {
    engine::save_safetensors(path,
                             {{"a", Tensor::from_vector(std::vector<float>{1.0f, -2.0f}, {2})},
                              {"b", Tensor::scalar(1.0, DType::bf16)}},
                             {{"format", "pt"}});
  }
};

// ---- atomic writes

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().filename().string());
  return files;
}

// An older file at `path`, overwritten by {w} and then by {w2} (f64).
struct Overwritten {
  TempDir tmp;
  const std::string path = tmp.file("ckpt.safetensors");
  Tensor t = testing::randn({11}, 1);
  Overwritten() {
    write_bytes(path, "an older, different file");
    engine::save_safetensors(path, {{"w", t}});
  }
  void overwrite_again() { engine::save_safetensors(path, {{"w2", t.to(DType::f64)}}); }
};

// ---- F16, U8, BOOL

// A hand-made file with every F16 bit pattern (h), three U8 (u) and two BOOL (b) values.
struct ConvertedFile {
  TempDir tmp;
  const std::string path = tmp.file("f16.safetensors");
  engine::SafetensorsFile f;
  ConvertedFile() {
    std::string data(65536 * 2, '\0');
    for (uint32_t h = 0; h < 65536; ++h) {
      data[2 * h] = char(h & 0xff);
      data[2 * h + 1] = char(h >> 8);
    }
    data += std::string("\x00\x07\xff", 3) + std::string("\x01\x00", 2);
    const std::string header =
        R"({"h":{"dtype":"F16","shape":[256,256],"data_offsets":[0,131072]},)"
        R"("u":{"dtype":"U8","shape":[3],"data_offsets":[131072,131075]},)"
        R"("b":{"dtype":"BOOL","shape":[2],"data_offsets":[131075,131077]}})";
    write_bytes(path, file_bytes(header, data));
    f = engine::load_safetensors(path);
  }
};

// ---- corrupt files

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

struct Corrupt {
  const char* what;
  std::string bytes;
  std::string error;
};

// Each file must fail to load with an error that names the file and says what is wrong.
void check_corrupt(const std::vector<Corrupt>& cases) {
  TempDir tmp;
  const std::string path = tmp.file("bad.safetensors");
  for (const Corrupt& c : cases) {
    CAPTURE(c.what);
    write_bytes(path, c.bytes);
    CHECK_THROWS_CONTAINING(engine::load_safetensors(path), "safetensors: " + path + ": ");
    CHECK_THROWS_CONTAINING(engine::load_safetensors(path), c.error);
  }
}

// The bytes of a small valid file with metadata, an f32 matrix, a 0-d f64, an empty bf16 and
// an i64 vector.
std::string good_file_bytes(const TempDir& tmp) {
  const std::string good = tmp.file("good.safetensors");
  engine::save_safetensors(good,
                           {{"w", testing::randn({3, 2}, 1)},
                            {"s", Tensor::scalar(2.0, DType::f64)},
                            {"e", Tensor::empty({0, 2}, DType::bf16)},
                            {"i", Tensor::arange(3)}},
                           {{"k", "v"}});
  return read_bytes(good);
}

}  // namespace

// ---- round trip

TEST_CASE("safetensors: round trip keeps names, order, dtypes, shapes and bits") {
  const RoundTrip r;
  REQUIRE(r.f.names.size() == r.tensors.size());
  for (size_t i = 0; i < r.tensors.size(); ++i) {
    CAPTURE(r.tensors[i].first);
    CHECK(r.f.names[i] == r.tensors[i].first);
    REQUIRE(r.f.contains(r.tensors[i].first));
    check_identical(r.f.at(r.tensors[i].first), r.tensors[i].second);
  }
}

TEST_CASE("safetensors: round trip keeps the metadata") {
  const RoundTrip r;
  CHECK(r.f.metadata == r.meta);
}

TEST_CASE("safetensors: round trip keeps a 0-d tensor 0-d") {
  const RoundTrip r;
  CHECK(r.f.at("temperature").dim() == 0);
}

TEST_CASE("safetensors: asking for a missing tensor is an error") {
  const RoundTrip r;
  CHECK_THROWS_CONTAINING(r.f.at("missing"), "no tensor named 'missing'");
}

TEST_CASE("safetensors: a file without tensors and metadata round trips") {
  // A valid (tiny) file too.
  TempDir tmp;
  const std::string path = tmp.file("model.safetensors");
  engine::save_safetensors(path, {});
  engine::SafetensorsFile e = engine::load_safetensors(path);
  CHECK(e.names.empty());
  CHECK(e.metadata.empty());
}

// ---- exact bytes

TEST_CASE("safetensors: the bytes of a tiny file are exactly the format's") {
  const TinyFile t;
  // 139 bytes of JSON padded with 5 spaces to 144 = 0x90, so the data starts 8-byte aligned.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"BF16","shape":[],"data_offsets":[8,10]}})"
      "     ";
  const std::string expected = std::string("\x90\0\0\0\0\0\0\0", 8) + header +
                               std::string(
                                   "\x00\x00\x80\x3f"  // 1.0f
                                   "\x00\x00\x00\xc0"  // -2.0f
                                   "\x80\x3f",         // bf16 1.0
                                   10);
  CHECK(read_bytes(t.path) == expected);
}

TEST_CASE("safetensors: the tiny file loads back") {
  const TinyFile t;
  engine::SafetensorsFile f = engine::load_safetensors(t.path);
  CHECK(f.at("a").to_vector<float>() == std::vector<float>{1.0f, -2.0f});
  CHECK(f.at("b").item() == 1.0);
}

// ---- atomic writes

TEST_CASE("safetensors: a write replaces an older file") {
  const Overwritten o;
  check_identical(engine::load_safetensors(o.path).at("w"), o.t);
}

TEST_CASE("safetensors: overwriting again replaces the tensors and leaves no temporary file") {
  Overwritten o;
  o.overwrite_again();
  CHECK(engine::load_safetensors(o.path).names == std::vector<std::string>{"w2"});
  CHECK(files_in(o.tmp.dir) == std::vector<std::string>{"ckpt.safetensors"});
}

TEST_CASE("safetensors: failed writes name the file and leave the old file untouched") {
  Overwritten o;
  o.overwrite_again();
  const Tensor& t = o.t;
  const std::string& path = o.path;
  CHECK_THROWS_CONTAINING(
      engine::save_safetensors(o.tmp.file("no/such/dir/x.safetensors"), {{"w", t}}),
      "cannot create");
  CHECK_THROWS_CONTAINING(engine::save_safetensors(path, {{"w", t}, {"w", t}}),
                          "safetensors: " + path + ": duplicate tensor name 'w'");
  CHECK_THROWS_CONTAINING(engine::save_safetensors(path, {{"__metadata__", t}}), "is reserved");
  CHECK_THROWS_CONTAINING(engine::save_safetensors(path, {{"u", Tensor()}}),
                          "tensor 'u' is undefined");
  CHECK_THROWS_CONTAINING(engine::save_safetensors(path, {{"bad\xff", t}}), "not valid UTF-8");
  // Nothing left behind.
  CHECK(files_in(o.tmp.dir) == std::vector<std::string>{"ckpt.safetensors"});
  CHECK(engine::load_safetensors(path).names == std::vector<std::string>{"w2"});  // untouched
}

// ---- F16, U8, BOOL

TEST_CASE("safetensors: F16 is read as f32 for every bit pattern") {
  const ConvertedFile c;
  const Tensor& h = c.f.at("h");
  REQUIRE(h.dtype() == DType::f32);
  const float* v = h.data<float>();
  int bad = 0;
  uint32_t first_bad = 0;
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    // IEEE binary16 by definition: sign, 5-bit exponent (bias 15), 10-bit fraction.
    const double sign = (bits & 0x8000) ? -1.0 : 1.0;
    const int exp = int(bits >> 10) & 0x1f, frac = int(bits & 0x3ff);
    const float got = v[bits];
    bool ok;
    if (exp == 31 && frac != 0)
      ok = std::isnan(got);
    else if (exp == 31)
      ok = got == float(sign * INFINITY);
    else if (exp == 0)
      ok = got == float(sign * std::ldexp(frac, -24)) && std::signbit(got) == (sign < 0);
    else
      ok = got == float(sign * std::ldexp(1024 + frac, exp - 25));
    if (!ok && bad++ == 0) first_bad = bits;
  }
  CAPTURE(first_bad);
  CHECK(bad == 0);
}

TEST_CASE("safetensors: U8 is read as i32") {
  const ConvertedFile c;
  CHECK(c.f.at("u").dtype() == DType::i32);
  CHECK(c.f.at("u").to_vector<int32_t>() == std::vector<int32_t>{0, 7, 255});
}

TEST_CASE("safetensors: BOOL is read as i32") {
  const ConvertedFile c;
  CHECK(c.f.at("b").to_vector<int32_t>() == std::vector<int32_t>{1, 0});
}

// ---- corrupt files: each kind gives its own clear error

TEST_CASE("safetensors: corrupt length prefix") {
  check_corrupt({
      {"shorter than 8 bytes", std::string("\x05\0\0", 3), "file is 3 bytes, shorter than the 8-byte header length"},
      {"empty file", "", "file is 0 bytes"},
      {"header length 0", le64(0) + zeros(8), "header length is 0"},
      {"header length over 100 MB", le64(200'000'000) + "{}", "exceeds the limit of 100000000 bytes"},
      {"header length huge", le64(~uint64_t(0)) + "{}", "exceeds the limit"},
      {"header past the file end", le64(100) + "{\"a\":1}", "header length 100 runs past the end of the file (15 bytes)"},
  });
}

TEST_CASE("safetensors: corrupt header JSON") {
  check_corrupt({
      {"not JSON", file_bytes("{\"a\":", ""), "header is not valid JSON"},
      {"not an object", file_bytes("[1, 2]  ", ""), "header is not a JSON object"},
      {"invalid UTF-8", file_bytes("{\"\xff\xfe\":{}}", ""), "header is not valid JSON"},
      {"trailing garbage after the JSON", file_bytes("{} xyz", ""), "header is not valid JSON"},
  });
}

TEST_CASE("safetensors: corrupt tensor entry fields") {
  check_corrupt({
      {"entry not an object", file_bytes("{\"a\":[1]}", ""), "tensor 'a': entry is not an object"},
      {"missing dtype", file_bytes(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", zeros(8)), "tensor 'a': missing field 'dtype'"},
      {"missing shape", file_bytes(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", zeros(8)), "missing field 'shape'"},
      {"missing data_offsets", file_bytes(R"({"a":{"dtype":"F32","shape":[2]}})", zeros(8)), "missing field 'data_offsets'"},
      {"unexpected field", file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", zeros(8)), "unexpected field 'x'"},
      {"dtype not a string", file_bytes(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", zeros(8)), "dtype is not a string (4)"},
      {"unknown dtype", file_bytes("{" + entry("a", "Q7", "[2]", "[0,8]") + "}", zeros(8)), "tensor 'a': unsupported dtype 'Q7'"},
  });
}

TEST_CASE("safetensors: corrupt shapes") {
  check_corrupt({
      {"shape not an array", file_bytes(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", zeros(8)), "shape is not an array (2)"},
      {"fractional dim", file_bytes("{" + entry("a", "F32", "[2.0]", "[0,8]") + "}", zeros(8)), "shape dim 0 is not an integer (2.0)"},
      {"string dim", file_bytes("{" + entry("a", "F32", "[\"2\"]", "[0,8]") + "}", zeros(8)), "shape dim 0 is not an integer"},
      {"negative dim", file_bytes("{" + entry("a", "F32", "[2,-1]", "[0,8]") + "}", zeros(8)), "shape dim 1 is negative (-1)"},
      {"too many dims", file_bytes("{" + entry("a", "F32", "[1,1,1,1,1,1,1,1,2]", "[0,8]") + "}", zeros(8)), "9 dimensions, at most 8"},
      {"numel overflow", file_bytes("{" + entry("a", "F32", "[4294967296,4294967296]", "[0,8]") + "}", zeros(8)), "is too large (overflow)"},
      {"huge dims beside a zero", file_bytes("{" + entry("a", "F32", "[0,4611686018427387904,4611686018427387904]", "[0,0]") + "}", ""), "too large (overflow)"},
      {"dim beyond u64", file_bytes("{" + entry("a", "F32", "[99999999999999999999999]", "[0,8]") + "}", zeros(8)), "not an integer"},
  });
}

TEST_CASE("safetensors: corrupt data_offsets") {
  check_corrupt({
      {"offsets not a pair", file_bytes("{" + entry("a", "F32", "[2]", "[0]") + "}", zeros(8)), "data_offsets is not an array of 2 integers ([0])"},
      {"offsets not integers", file_bytes("{" + entry("a", "F32", "[2]", "[\"0\",8]") + "}", zeros(8)), "data_offsets[0] is not an integer"},
      {"negative offset", file_bytes("{" + entry("a", "F32", "[2]", "[-8,0]") + "}", zeros(8)), "data_offsets[0] is negative"},
      {"end before begin", file_bytes("{" + entry("a", "F32", "[2]", "[8,0]") + "}", zeros(8)), "data_offsets [8,0] end before begin"},
      {"offsets past the data", file_bytes("{" + entry("a", "F32", "[4]", "[0,16]") + "}", zeros(8)), "data_offsets [0,16] run past the data section (8 bytes)"},
      {"huge offsets", file_bytes("{" + entry("a", "F32", "[2]", "[18446744073709551608,18446744073709551615]") + "}", zeros(8)), "run past the data section"},
      {"byte length mismatch", file_bytes("{" + entry("a", "F32", "[3]", "[0,8]") + "}", zeros(8)), "span 8 bytes but shape [3] of F32 needs 12"},
  });
}

TEST_CASE("safetensors: corrupt data layout (overlaps, holes, trailing bytes)") {
  const std::string ok_a = entry("a", "F32", "[2]", "[0,8]");
  check_corrupt({
      {"overlapping tensors", file_bytes("{" + ok_a + "," + entry("b", "F32", "[2]", "[4,12]") + "}", zeros(12)), "tensors 'a' and 'b' overlap"},
      {"empty tensor inside another", file_bytes("{" + ok_a + "," + entry("e", "F32", "[0]", "[4,4]") + "}", zeros(8)), "tensors 'a' and 'e' overlap"},
      {"hole between tensors", file_bytes("{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("b", "F32", "[1]", "[8,12]") + "}", zeros(12)), "hole of 4 bytes at data offset 4"},
      {"hole at the start", file_bytes("{" + entry("a", "F32", "[1]", "[4,8]") + "}", zeros(8)), "hole of 4 bytes at data offset 0"},
      {"trailing bytes", file_bytes("{" + entry("a", "F32", "[1]", "[0,4]") + "}", zeros(8)), "data section has 4 trailing bytes"},
      {"data but no tensors", file_bytes("{}", zeros(3)), "3 trailing bytes"},
  });
}

TEST_CASE("safetensors: duplicate keys") {
  const std::string ok_a = entry("a", "F32", "[2]", "[0,8]");
  check_corrupt({
      {"duplicate tensor name", file_bytes("{" + ok_a + "," + ok_a + "}", zeros(8)), "duplicate key 'a'"},
      {"duplicate field", file_bytes(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", zeros(8)), "duplicate key 'dtype'"},
  });
}

TEST_CASE("safetensors: corrupt metadata") {
  check_corrupt({
      {"metadata not an object", file_bytes(R"({"__metadata__":[]})", ""), "__metadata__ is not an object"},
      {"metadata value not a string", file_bytes(R"({"__metadata__":{"k":1}})", ""), "__metadata__ value of 'k' is not a string (1)"},
  });
}

TEST_CASE("safetensors: JSON nested too deep") {
  check_corrupt({
      {"nested too deep", file_bytes("{" + entry("a", "F32", "[[2]]", "[0,8]") + "}", zeros(8)), "nests deeper"},
      {"deep nesting bomb", file_bytes("{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}", ""), "nests deeper"},
  });
}

TEST_CASE("safetensors: BOOL bytes other than 0 and 1") {
  check_corrupt({
      {"BOOL byte not 0/1", file_bytes("{" + entry("b", "BOOL", "[2]", "[0,2]") + "}", "\x01\x02"), "tensor 'b': BOOL element 1 has byte value 2"},
  });
}

TEST_CASE("safetensors: a missing file and a directory cannot be loaded") {
  TempDir tmp;
  CHECK_THROWS_CONTAINING(engine::load_safetensors(tmp.file("missing.safetensors")), "cannot open");
  CHECK_THROWS_CONTAINING(engine::load_safetensors(tmp.dir.string()), "not a regular file");
}

TEST_CASE("safetensors: every truncation throws engine::Error") {
  TempDir tmp;
  const std::string bytes = good_file_bytes(tmp), bad = tmp.file("bad.safetensors");
  for (size_t len = 0; len < bytes.size(); ++len) {
    CAPTURE(len);
    write_bytes(bad, bytes.substr(0, len));
    CHECK_THROWS_AS(engine::load_safetensors(bad), engine::Error);
  }
}

TEST_CASE("safetensors: single-byte corruptions load or throw engine::Error, never crash") {
  // Overwriting any single byte must either load (data bytes, padding) or throw engine::Error:
  // no other exception type, no crash, no out-of-bounds read (this also runs under ASan).
  TempDir tmp;
  const std::string bytes = good_file_bytes(tmp), bad = tmp.file("bad.safetensors");
  int loaded = 0, rejected = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (char c : {'\0', '"', '}', ']', '9', ',', '\xff'}) {
      std::string b = bytes;
      if (b[i] == c) continue;
      b[i] = c;
      write_bytes(bad, b);
      try {
        engine::load_safetensors(bad);
        ++loaded;
      } catch (const engine::Error&) {
        ++rejected;
      }
    }
  }
  CHECK(loaded > 0);
  CHECK(rejected > 0);
}
