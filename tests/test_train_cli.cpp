// End-to-end tests of ./train (the binary the Makefile builds next to the tests; $TRAIN_BIN names
// it): learning on real data, exact resume after SIGKILL, NaN handling, and one-line errors.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/helpers.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string train_bin() {
  const char* b = std::getenv("TRAIN_BIN");
  return b ? b : "./train";
}

std::string fresh_dir(const std::string& name) {
  const std::string d = "/tmp/moe-engine-test-" + std::to_string(getpid()) + "-" + name;
  fs::remove_all(d);
  return d;
}

struct Result {
  int code = -1;
  std::string out;  // stdout + stderr
};

// Runs ./train with args (single-quoted for the shell), output captured.
Result run_train(const std::string& args) {
  const std::string log = fresh_dir("log") + ".txt";
  const std::string cmd = train_bin() + " " + args + " > " + log + " 2>&1";
  Result r;
  const int st = std::system(cmd.c_str());
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream f(log);
  std::stringstream s;
  s << f.rdbuf();
  r.out = s.str();
  fs::remove(log);
  return r;
}

std::vector<json> read_metrics(const std::string& dir) {
  std::vector<json> v;
  std::ifstream f(dir + "/metrics.jsonl");
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) {
      json j = json::parse(line);
      if (j.contains("loss")) v.push_back(j);
    }
  return v;
}

double eval_value(const std::string& dir, const std::string& task, const std::string& metric) {
  std::ifstream f(dir + "/eval.json");
  json j = json::parse(f);
  for (const auto& r : j.at("results"))
    if (r.at("task") == task && r.at("metric") == metric) return r.at("value");
  FAIL("no ", task, " ", metric, " in ", dir, "/eval.json");
  return 0;
}

}  // namespace

TEST_CASE("train/learn: a tiny ViT reaches at least 80% on Fashion-MNIST test in its default run") {
  const std::string out = fresh_dir("vit");
  Result r = run_train("--model vit_tiny --out " + out);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const double top1 = eval_value(out, "fashion_mnist test", "top1");
  MESSAGE("vit_tiny Fashion-MNIST top-1: ", top1);
  CHECK(top1 >= 0.80);
  fs::remove_all(out);
}

TEST_CASE("train/learn: tiny IMP-MoE AGD lowers every task's loss; zero-shot well above chance") {
  const std::string out = fresh_dir("imp");
  Result r = run_train(
      "--model imp_moe_tiny --steps 300 --out " + out +
      " --config_overrides '{\"model\":{\"dim\":64,\"mlp_hidden\":128,\"heads\":2,\"depth\":2,"
      "\"moe\":{\"layers\":[1]},\"cross_head\":{\"hidden\":64,\"out\":64},\"temperature_init\":0.07},"
      "\"run\":{\"eval_examples\":300,\"log_every\":100},"
      "\"optimization\":{\"optimizer\":{\"learning_rate\":0.002}}}'");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  // Per task: mean loss of its first fifth of steps vs its last fifth.
  std::map<std::string, std::vector<double>> by_task;
  for (const auto& m : read_metrics(out)) by_task[m.at("task")].push_back(m.at("loss"));
  CHECK(by_task.size() == 6);
  for (const auto& [task, l] : by_task) {
    const size_t k = std::max<size_t>(1, l.size() / 5);
    double first = 0, last = 0;
    for (size_t i = 0; i < k; ++i) first += l[i] / k, last += l[l.size() - 1 - i] / k;
    CAPTURE(task);
    CHECK(last < first);
  }
  // Buffers are reused across steps: the round-robin cycle is 22 steps; after two cycles the
  // remaining 256 steps together take less than 1% of the first cycle's bytes from the system
  // (a few small blocks when the loader threads hold more batches in flight than before).
  double first_cycle = 0, steady = 0;
  for (const auto& m : read_metrics(out)) {
    const int64_t step = m.at("step");
    const double bytes = m.at("host_memory").at("system_bytes");
    if (step < 22) first_cycle += bytes;
    if (step >= 44) steady += bytes;
  }
  MESSAGE("host bytes from the system: first cycle ", first_cycle, ", steps 44-299 ", steady);
  CHECK(first_cycle > 1e6);
  CHECK(steady < 0.01 * first_cycle);
  const double zs = eval_value(out, "zero-shot image (prompts)", "top1");
  MESSAGE("zero-shot image top-1: ", zs, " (chance 0.10)");
  CHECK(zs >= 0.20);  // chance is 0.10 ± 0.017 on 300 examples
  CHECK(eval_value(out, "image classification", "top1") >= 0.3);
  fs::remove_all(out);
}

// --device cuda runs every op through kernels::cuda: in this (sim) build the CUDA kernels emulated
// on the CPU, so the whole GPU training path (parameters, AdamW state, batches, losses, checkpoint,
// evaluation on the device) is exercised here and must track the CPU run step for step.
void check_device_run_matches_cpu(const std::string& args, double tol) {
  const std::string c = fresh_dir("dev-cpu"), g = fresh_dir("dev-cuda");
  Result rc = run_train(args + " --device cpu --out " + c);
  REQUIRE_MESSAGE(rc.code == 0, rc.out);
  Result rg = run_train(args + " --device cuda --out " + g);
  REQUIRE_MESSAGE(rg.code == 0, rg.out);
  CHECK(rg.out.find("on the sim") != std::string::npos);
  auto mc = read_metrics(c), mg = read_metrics(g);
  REQUIRE(mc.size() == mg.size());
  REQUIRE(!mc.empty());
  for (size_t i = 0; i < mc.size(); ++i) {
    CAPTURE(i);
    CHECK(mg[i].at("task") == mc[i].at("task"));
    const double a = mc[i].at("loss"), b = mg[i].at("loss");
    CHECK(std::abs(a - b) <= tol * std::max(1.0, std::abs(a)));
    const double ga = mc[i].at("grad_norm"), gb = mg[i].at("grad_norm");
    CHECK(std::abs(ga - gb) <= 10 * tol * std::max(1.0, std::abs(ga)));
  }
  CHECK(fs::exists(g + "/checkpoints/latest"));
  CHECK(fs::exists(g + "/eval.json"));
  fs::remove_all(c);
  fs::remove_all(g);
}

TEST_CASE("train/device: --device cuda (the sim here) trains a ViT like --device cpu") {
  // Head dim 32 (2 heads of d 64): the GPU attention kernel takes 32, 64 or 128.
  check_device_run_matches_cpu(
      "--model vit_tiny --steps 4 --batch 8 --config_overrides "
      "'{\"model\":{\"heads\":2},\"run\":{\"eval_examples\":16,\"eval_batch\":8}}'",
      1e-4);
}

TEST_CASE("train/device: --device cuda (the sim here) runs every IMP-MoE task like --device cpu") {
  check_device_run_matches_cpu(
      "--model imp_moe_tiny --steps 6 --batch 4 --config_overrides "
      "'{\"model\":{\"dim\":64,\"mlp_hidden\":128,\"heads\":2,\"depth\":2,"
      "\"moe\":{\"layers\":[1]},\"cross_head\":{\"hidden\":32,\"out\":32}},"
      "\"run\":{\"eval_examples\":8,\"eval_batch\":8}}'",
      1e-3);
}

TEST_CASE("train/device: a head dim the GPU attention does not take is a one-line error") {
  const std::string out = fresh_dir("dev-err");
  Result r = run_train("--model vit_tiny --steps 1 --batch 4 --device cuda --out " + out);
  CHECK(r.code != 0);
  CHECK(r.out.find("head dim 16") != std::string::npos);
  CHECK(r.out.find("32, 64 or 128") != std::string::npos);
  fs::remove_all(out);
}

TEST_CASE("train/resume: a run killed with SIGKILL and resumed gives bit-identical losses") {
  const std::string common =
      " --model vit_tiny --steps 40 --batch 32 --config_overrides "
      "'{\"run\":{\"checkpoint_every\":5,\"eval_examples\":10},"
      "\"optimization\":{\"augment\":{\"random_crop\":true,\"flip\":true,\"mixup_alpha\":0.2}}}'";
  const std::string a = fresh_dir("resume-a"), b = fresh_dir("resume-b");
  REQUIRE(run_train("--out " + a + common).code == 0);

  // Start run b, kill it hard once its step-10 checkpoint exists (mid-run).
  const std::string cmd = "exec " + train_bin() + " --out " + b + common + " > /dev/null 2>&1";
  pid_t pid;
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  REQUIRE(posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) == 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(b + "/checkpoints/step_00000010") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  REQUIRE(WIFSIGNALED(st));  // it was still running: the kill interrupted it
  const size_t done_before = read_metrics(b).size();
  MESSAGE("killed after ", done_before, " logged steps");
  Result r = run_train("--out " + b + common + " --resume");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("resumed from") != std::string::npos);
  auto ma = read_metrics(a), mb = read_metrics(b);
  REQUIRE(ma.size() == 40);
  REQUIRE(mb.size() == 40);
  for (size_t i = 0; i < ma.size(); ++i) {
    CAPTURE(i);
    CHECK(mb[i].at("step") == ma[i].at("step"));
    CHECK(mb[i].at("loss").get<double>() == ma[i].at("loss").get<double>());  // bit for bit
  }
  fs::remove_all(a);
  fs::remove_all(b);
}

TEST_CASE("train/errors: NaN loss stops naming step and task and keeps the last checkpoint") {
  const std::string out = fresh_dir("nan");
  Result r = run_train("--model vit_tiny --steps 20 --batch 16 --lr 1e30 --out " + out +
                       " --config_overrides '{\"run\":{\"checkpoint_every\":1},"
                       "\"optimization\":{\"max_grad_norm\":0.0,\"schedule\":{\"warmup_steps\":0}}}'");
  CHECK(r.code == 1);
  CHECK_MESSAGE(r.out.find(", task classify: the loss is ") != std::string::npos, r.out);
  CHECK_MESSAGE(r.out.find("The last good checkpoint is " + out + "/checkpoints/step_") !=
                    std::string::npos,
                r.out);
  // The checkpoint it names is complete and loads (evaluation runs on it).
  CHECK(run_train("--model vit_tiny --eval-only --out " + out +
                  " --config_overrides '{\"run\":{\"eval_examples\":10}}'")
            .code == 0);
  fs::remove_all(out);
}

TEST_CASE("train/errors: bad configuration and missing data are one-line errors") {
  Result r = run_train("--model vit_tiny --config_overrides '{\"optimization\":{\"optimzer\":{}}}'");
  CHECK(r.code == 1);
  CHECK_MESSAGE(r.out.find("unknown key 'optimization.optimzer'; valid keys in 'optimization': "
                           "optimizer, schedule") != std::string::npos,
                r.out);
  r = run_train("--model vit_tiny --config_overrides '{\"run\":{\"steps\":\"ten\"}}'");
  CHECK(r.out.find("'run.steps' must be an integer") != std::string::npos);
  r = run_train("--model vit_tiny --steps 1 --out " + fresh_dir("nodata") +
                " --config_overrides '{\"data\":{\"fashion_mnist_dir\":\"/nonexistent\"}}'");
  CHECK(r.code == 1);
  CHECK_MESSAGE(r.out.find("dataset-fashion-mnist") != std::string::npos, r.out);
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  r = run_train("--model imp_moe_tiny --agd sometimes");
  CHECK(r.out.find("--agd must be on or off") != std::string::npos);
  r = run_train("--model vit_tiny --config_overrides '{\"tasks\":[{\"name\":\"x\",\"kind\":\"contrastive\"}]}' --steps 1 --out " + fresh_dir("badtask"));
  CHECK(r.out.find("ViT models train one image classification task") != std::string::npos);
}

TEST_CASE("train/cli: --summary and --list-models") {
  Result r = run_train("--model switch_vit --noswitch --summary");
  CHECK(r.code == 0);
  CHECK(r.out.find("12,798,490") != std::string::npos);
  r = run_train("--list-models");
  CHECK(r.out.find("imp_moe_base") != std::string::npos);
  CHECK(r.out.find("spheromoe_vit_t") != std::string::npos);
}
