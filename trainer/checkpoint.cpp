#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "moe-engine checkpoint";
constexpr int kVersion = 1;
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";

// fsync of a file or folder; folders make renames and new entries in them durable.
void fsync_path(const std::string& path, bool must) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  const int ok = fd >= 0 && ::fsync(fd) == 0;
  const int err = errno;
  if (fd >= 0) ::close(fd);
  ENGINE_CHECK(ok || !must, "checkpoint: ", path, ": fsync failed: ", std::strerror(err));
}

void write_file_synced(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ENGINE_CHECK(f, "checkpoint: ", path, ": cannot create: ", std::strerror(errno));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() &&
                  std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  const int err = errno;
  std::fclose(f);
  ENGINE_CHECK(ok, "checkpoint: ", path, ": write failed: ", std::strerror(err));
}

void rename_or_throw(const std::string& from, const std::string& to) {
  ENGINE_CHECK(::rename(from.c_str(), to.c_str()) == 0, "checkpoint: cannot rename ", from,
               " to ", to, ": ", std::strerror(errno));
}

// The step of a folder named exactly step_<8 or more digits>, else -1 (.tmp and .old folders).
int64_t step_of(const std::string& name) {
  if (name.size() < 13 || name.rfind("step_", 0) != 0) return -1;
  const std::string digits = name.substr(5);
  if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

bool is_complete(const fs::path& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) && fs::is_regular_file(dir / kModelFile, ec) &&
         fs::is_regular_file(dir / kStateFile, ec);
}

// Complete checkpoints of a checkpoints folder, ascending by step.
std::vector<std::pair<int64_t, fs::path>> list_complete(const fs::path& ckdir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(ckdir, ec)) return out;
  for (const auto& e : fs::directory_iterator(ckdir, ec)) {
    const int64_t step = step_of(e.path().filename().string());
    if (step >= 0 && is_complete(e.path())) out.emplace_back(step, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Removes <name>.tmp.<pid> folders left by this process or by processes that no longer exist.
void remove_stale_tmp(const fs::path& ckdir) {
  std::error_code ec;
  std::vector<fs::path> stale;  // removed after the listing, not while iterating
  for (const auto& e : fs::directory_iterator(ckdir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t at = name.find(".tmp.");
    if (name.rfind("step_", 0) != 0 || at == std::string::npos) continue;
    const std::string pid_text = name.substr(at + 5);
    if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) continue;
    const long pid = std::stol(pid_text);
    const bool alive = pid != ::getpid() && (::kill(pid_t(pid), 0) == 0 || errno == EPERM);
    if (!alive) stale.push_back(e.path());
  }
  for (const auto& p : stale) fs::remove_all(p, ec);
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  ENGINE_CHECK(f.good(), "checkpoint: ", path, ": missing file");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string list5(const std::vector<std::string>& v) {
  std::ostringstream s;
  for (size_t i = 0; i < v.size() && i < 5; ++i) s << (i ? ", " : "") << v[i];
  if (v.size() > 5) s << " and " << v.size() - 5 << " more";
  return s.str();
}

TrainerState parse_state(const std::string& path, bool& has_optimizer) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(path));
  } catch (const nlohmann::json::exception& e) {
    ENGINE_FAIL("checkpoint: ", path, ": bad JSON (", e.what(), ")");
  }
  TrainerState st;
  try {
    ENGINE_CHECK(j.is_object(), "checkpoint: ", path, ": expected a JSON object");
    ENGINE_CHECK(j.value("format", "") == kFormat, "checkpoint: ", path,
                 ": not a checkpoint state (format is not '", kFormat, "')");
    ENGINE_CHECK(j.value("version", 0) == kVersion, "checkpoint: ", path, ": version ",
                 j.value("version", 0), " is not supported (expected ", kVersion, ")");
    for (const char* key : {"step", "seed", "data_cursors", "has_optimizer"})
      ENGINE_CHECK(j.contains(key), "checkpoint: ", path, ": missing '", key, "'");
    ENGINE_CHECK(j.at("step").is_number_integer() && j.at("step").get<int64_t>() >= 0,
                 "checkpoint: ", path, ": 'step' must be an integer >= 0");
    ENGINE_CHECK(j.at("seed").is_number_unsigned() || (j.at("seed").is_number_integer() &&
                                                       j.at("seed").get<int64_t>() >= 0),
                 "checkpoint: ", path, ": 'seed' must be an integer >= 0");
    st.step = j.at("step").get<int64_t>();
    st.seed = j.at("seed").get<uint64_t>();
    st.sampler = j.value("sampler", nlohmann::json());
    st.extra = j.value("extra", nlohmann::json());
    const auto& cur = j.at("data_cursors");
    ENGINE_CHECK(cur.is_object(), "checkpoint: ", path, ": 'data_cursors' must be an object");
    for (const auto& [task, v] : cur.items()) {
      ENGINE_CHECK(v.is_number_integer(), "checkpoint: ", path, ": data cursor of '", task,
                   "' must be an integer");
      st.data_cursors[task] = v.get<int64_t>();
    }
    has_optimizer = j.at("has_optimizer").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    ENGINE_FAIL("checkpoint: ", path, ": bad field (", e.what(), ")");
  }
  return st;
}

}  // namespace

std::string checkpoints_dir(const std::string& out) {
  return (fs::path(out) / "checkpoints").string();
}

std::string checkpoint_name(int64_t step) {
  ENGINE_CHECK(step >= 0, "checkpoint: step must be >= 0, got ", step);
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string save_checkpoint(const std::string& out, const models::ParamSet& ps,
                            const Optimizer* optimizer, const TrainerState& state, int keep_last) {
  ENGINE_CHECK(keep_last >= 0, "checkpoint: keep_last must be >= 0, got ", keep_last);
  const fs::path ckdir = checkpoints_dir(out);
  std::error_code ec;
  fs::create_directories(ckdir, ec);
  ENGINE_CHECK(fs::is_directory(ckdir), "checkpoint: cannot create ", ckdir.string(), ": ",
               ec.message());
  remove_stale_tmp(ckdir);
  const std::string name = checkpoint_name(state.step);
  const fs::path final_dir = ckdir / name;
  const fs::path tmp = ckdir / (name + ".tmp." + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);
  ENGINE_CHECK(fs::create_directory(tmp, ec), "checkpoint: cannot create ", tmp.string(), ": ",
               ec.message());
  try {
    engine::save_safetensors((tmp / kModelFile).string(), ps.named_tensors(), {{"format", "pt"}});
    if (optimizer)
      engine::save_safetensors((tmp / kOptimizerFile).string(), optimizer->state_tensors(),
                               {{"format", "pt"}, {"optimizer", optimizer->config().name}});
    nlohmann::json cursors = nlohmann::json::object();
    for (const auto& [task, c] : state.data_cursors) cursors[task] = c;
    const nlohmann::json j = {{"format", kFormat},
                              {"version", kVersion},
                              {"step", state.step},
                              {"seed", state.seed},
                              {"has_optimizer", optimizer != nullptr},
                              {"sampler", state.sampler},
                              {"data_cursors", cursors},
                              {"extra", state.extra}};
    write_file_synced((tmp / kStateFile).string(), j.dump(2) + "\n");
    fsync_path(tmp.string(), true);
    // Commit: a replaced checkpoint of the same step is moved aside first (rename cannot replace
    // a non-empty folder) and deleted after.
    const fs::path old = ckdir / (name + ".old." + std::to_string(::getpid()));
    const bool replacing = fs::exists(final_dir);
    if (replacing) {
      fs::remove_all(old, ec);
      rename_or_throw(final_dir.string(), old.string());
    }
    rename_or_throw(tmp.string(), final_dir.string());
    fsync_path(ckdir.string(), true);
    if (replacing) fs::remove_all(old, ec);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  const fs::path latest_tmp = ckdir / ("latest.tmp." + std::to_string(::getpid()));
  write_file_synced(latest_tmp.string(), name + "\n");
  rename_or_throw(latest_tmp.string(), (ckdir / "latest").string());
  fsync_path(ckdir.string(), false);
  if (keep_last > 0) {
    std::vector<std::pair<int64_t, fs::path>> older;
    for (auto& c : list_complete(ckdir))
      if (c.first < state.step) older.push_back(c);
    // This checkpoint is one of the keep_last; the newest keep_last - 1 older ones stay.
    const size_t keep_older = size_t(keep_last - 1);
    for (size_t i = 0; i + keep_older < older.size(); ++i) fs::remove_all(older[i].second, ec);
  }
  return final_dir.string();
}

std::optional<std::string> find_latest(const std::string& out) {
  const fs::path ckdir = checkpoints_dir(out);
  std::ifstream f(ckdir / "latest");
  if (f.good()) {
    std::string name;
    std::getline(f, name);
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
    if (step_of(name) >= 0 && is_complete(ckdir / name)) return (ckdir / name).string();
  }
  auto all = list_complete(ckdir);
  if (all.empty()) return std::nullopt;
  return all.back().second.string();
}

std::string resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  ENGINE_CHECK(fs::is_directory(path, ec), "checkpoint: ", path, ": no such folder");
  if (fs::exists(fs::path(path) / kStateFile, ec)) return path;
  auto latest = find_latest(path);
  ENGINE_CHECK(latest.has_value(), "checkpoint: ", path,
               ": neither a checkpoint folder nor a run folder with checkpoints");
  return *latest;
}

TrainerState load_checkpoint(const std::string& dir, models::ParamSet& ps, Optimizer* optimizer) {
  std::error_code ec;
  ENGINE_CHECK(fs::is_directory(dir, ec), "checkpoint: ", dir, ": no such folder");
  const fs::path d(dir);
  bool has_optimizer = false;
  const std::string state_path = (d / kStateFile).string();
  TrainerState st = parse_state(state_path, has_optimizer);
  const int64_t named = step_of(d.filename().string());
  ENGINE_CHECK(named < 0 || named == st.step, "checkpoint: ", state_path, ": step ", st.step,
               " does not match the folder name ", d.filename().string());

  // The model: names and shapes checked here, so ps.load below cannot fail half-way.
  const std::string model_path = (d / kModelFile).string();
  ENGINE_CHECK(fs::is_regular_file(model_path, ec), "checkpoint: ", model_path, ": missing file");
  engine::SafetensorsFile model = engine::load_safetensors(model_path);
  std::vector<std::string> missing, unexpected;
  for (const auto& e : ps.entries())
    if (!model.contains(e.name)) missing.push_back(e.name);
  for (const auto& n : model.names)
    if (!ps.contains(n)) unexpected.push_back(n);
  ENGINE_CHECK(missing.empty(), "checkpoint: ", model_path, ": ", missing.size(),
               " parameters of the model are missing (", list5(missing), ")");
  ENGINE_CHECK(unexpected.empty(), "checkpoint: ", model_path, ": ", unexpected.size(),
               " tensors are not parameters of the model (", list5(unexpected), ")");
  for (const auto& e : ps.entries()) {
    const Tensor& t = model.at(e.name);
    ENGINE_CHECK(t.shape() == e.shape, "checkpoint: ", model_path, ": parameter '", e.name,
                 "' has shape ", t.shape(), " in the file but ", e.shape, " in the model");
    ENGINE_CHECK(t.dtype() == engine::DType::f32 || t.dtype() == engine::DType::f64 ||
                     t.dtype() == engine::DType::bf16,
                 "checkpoint: ", model_path, ": parameter '", e.name, "' has dtype ",
                 engine::dtype_name(t.dtype()), " (expected a floating-point type)");
  }

  if (optimizer) {
    const std::string opt_path = (d / kOptimizerFile).string();
    ENGINE_CHECK(has_optimizer, "checkpoint: ", dir,
                 ": saved without optimizer state, but an optimizer was given to load it into");
    ENGINE_CHECK(fs::is_regular_file(opt_path, ec), "checkpoint: ", opt_path, ": missing file");
    engine::SafetensorsFile opt = engine::load_safetensors(opt_path);
    auto kind = opt.metadata.find("optimizer");
    ENGINE_CHECK(kind != opt.metadata.end() && kind->second == optimizer->config().name,
                 "checkpoint: ", opt_path, ": state of a ",
                 kind == opt.metadata.end() ? std::string("unknown") : kind->second,
                 " optimizer, but the optimizer is ", optimizer->config().name);
    try {
      optimizer->load_state(opt.tensors);  // validates everything before copying
    } catch (const engine::Error& e) {
      ENGINE_FAIL("checkpoint: ", opt_path, ": ", e.what());
    }
  }
  ps.load(model.tensors, /*strict=*/true);
  return st;
}

}  // namespace train
