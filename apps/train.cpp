// ./train: the command-line front end (Boost.Program_options). See README.md and `./train --help`.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include <boost/program_options.hpp>

#include "engine/omp_env.h"
#include "engine/error.h"
#include "engine/safetensors.h"
#include "models/params.h"
#include "models/presets.h"
#include "models/recycle.h"
#include "models/vit.h"
#include "trainer/checkpoint.h"
#include "trainer/run_config.h"
#include "trainer/trainer.h"
#include "trainer/workload.h"

namespace po = boost::program_options;
using models::Json;

namespace {

const char* kExamples = R"(Examples:
  ./train --model imp_moe_base                 IMP-MoE-B, AGD over the multimodal tasks (~25 min on 2 cores)
  ./train --model imp_moe_tiny                 the same mixture at tiny scale (~8-10 min)
  ./train --model vit_tiny                     a tiny ViT on Fashion-MNIST (~1 min, >80% test accuracy)
  ./train --model switch_vit --experts 32 --data-dir ~/cifar10     switch-ViT (reference: --experts 32)
  ./train --model switch_vit --noswitch --summary                  the dense reference ViT, 12,798,490 params
  ./train --model vit_tiny --steps 2000 --config_overrides '{"optimization":{"optimizer":{"learning_rate":0.002}}}'
  ./train --model imp_moe_tiny --resume                 continue the run in runs/imp_moe_tiny exactly
  ./train --model imp_moe_tiny --eval-only              evaluate its latest checkpoint
  ./train --model spheromoe_tiny --recycle-from runs/vit_tiny --recycle importance --recycle-source vit_tiny
  ./train --model spheromoe_tiny --init-from runs/spheromoe_tiny/recycled.safetensors
  ./train --list-models | ./train --model imp_moe_base --summary
Configuration: every preset has a full JSON tree (written to <out>/config.json); --config_overrides merges
nested keys into it (unknown keys and wrong types are errors that list the valid keys). The flags
--steps/--batch/--lr/--seed/--threads/--out/--data-dir/--agd are applied after the overrides.
)";

// --recycle-from: a safetensors file or a run/checkpoint folder (its model.safetensors).
std::string model_file(const std::string& p) {
  namespace fs = std::filesystem;
  if (fs::is_regular_file(p)) return p;
  ENGINE_CHECK(fs::exists(p), "--recycle-from: ", p, " does not exist");
  if (fs::exists(fs::path(p) / "model.safetensors")) return (fs::path(p) / "model.safetensors").string();
  return (fs::path(train::resolve_checkpoint(p)) / "model.safetensors").string();
}

int recycle(const Json& config, const po::variables_map& vm) {
  auto target = std::dynamic_pointer_cast<models::ViT>(models::build_model(config.at("model")));
  ENGINE_CHECK(target != nullptr, "--recycle-from: the target must be a ViT-family model");
  Json src_cfg = config;
  if (vm.count("recycle-source")) {
    src_cfg["model"] = models::preset_config(vm["recycle-source"].as<std::string>());
  } else {
    src_cfg["model"]["moe"]["type"] = "none";  // the dense model of the target's shape
  }
  auto source = std::dynamic_pointer_cast<models::ViT>(models::build_model(src_cfg.at("model")));
  ENGINE_CHECK(source != nullptr, "--recycle-source must be a dense ViT-family preset");
  const uint64_t seed = config.at("run").at("seed");
  models::ParamSet tps(*target, seed), sps(*source, seed);
  const std::string file = model_file(vm["recycle-from"].as<std::string>());
  auto st = engine::load_safetensors(file);
  bool timm = false;
  for (const auto& [name, t] : st.tensors) timm |= name == "patch_embed.proj.weight" && t.dim() == 4;
  sps.load(timm ? models::map_timm_vit(st.tensors) : st.tensors, true);
  models::RecycleOptions ro;
  ro.method = models::parse_recycle_method(vm["recycle"].as<std::string>());
  ro.seed = seed;
  ro.source_name = file;
  const int64_t n = vm["recycle-images"].as<int64_t>();
  auto images = train::sample_images(config, n);
  auto result = models::recycle(*source, *target, images, ro);
  const std::string out = config.at("run").at("out").get<std::string>();
  std::filesystem::create_directories(out);
  const std::string path = out + "/recycled.safetensors";
  models::save_recycled(path, result, *target);
  std::cout << result.report << "\nwrote " << path << "\ntrain from it with: ./train --model "
            << vm["model"].as<std::string>() << " --init-from " << path << "\n";
  return 0;
}

int run(int argc, char** argv) {
  po::options_description opts("Options");
  opts.add_options()
      ("help,h", "this help")
      ("model", po::value<std::string>()->default_value("imp_moe_base"), "model preset (--list-models)")
      ("list-models", "list the model presets, one line each")
      ("summary", "print the architecture (parameters per block, active per token, FLOPs) and exit")
      ("steps", po::value<int64_t>(), "optimizer steps (run.steps)")
      ("batch", po::value<int64_t>(), "batch size of every task")
      ("lr", po::value<double>(), "peak learning rate (optimization.optimizer.learning_rate)")
      ("device", po::value<std::string>(), "cpu | cuda (run.device)")
      ("threads", po::value<int64_t>(), "CPU threads (run.threads, default 2)")
      ("seed", po::value<int64_t>(), "run seed: initialisation, data order, dropout, routing noise")
      ("out", po::value<std::string>(), "run folder (default runs/<model>)")
      ("resume", po::value<std::string>()->implicit_value(""),
       "continue from the latest checkpoint of the run folder (or of DIR) exactly")
      ("eval-only", "evaluate the latest checkpoint (or --resume DIR) and exit")
      ("data-dir", po::value<std::string>(), "dataset folder (e.g. CIFAR-10/100 binary files)")
      ("agd", po::value<std::string>(), "on | off (off: every step sums all tasks' losses)")
      ("config_overrides", po::value<std::string>()->default_value("{}"),
       "JSON merged into the configuration, nested keys as in <out>/config.json")
      ("init-from", po::value<std::string>(), "initialise the model from a safetensors file")
      ("recycle-from", po::value<std::string>(),
       "checkpoint recycling: a dense ViT checkpoint (file or run folder) to initialise the MoE from")
      ("recycle", po::value<std::string>()->default_value("importance"),
       "recycling method: importance | random | uniform | coactivation")
      ("recycle-source", po::value<std::string>(),
       "the preset of the dense source (default: the target with dense MLPs)")
      ("recycle-images", po::value<int64_t>()->default_value(512), "images for the importance statistics")
      ("experts", po::value<int64_t>()->default_value(0),
       "switch-ViT: number of experts in every block (hidden width 1024 - N/2 + 2)")
      ("noswitch", "switch-ViT: the dense model")
      ("dmodel", po::value<int64_t>()->default_value(0), "switch-ViT: model width")
      ("cifar100", "switch-ViT: 100 classes");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, opts), vm);
  po::notify(vm);
  if (vm.count("help")) {
    std::cout << "Usage: ./train --model NAME [options]\n\n" << opts << "\n" << kExamples;
    return 0;
  }
  if (vm.count("list-models")) {
    size_t w = 0;
    for (const auto& p : models::presets()) w = std::max(w, p.name.size());
    for (const auto& p : models::presets())
      std::printf("  %-*s  %s\n", int(w), p.name.c_str(), p.description.c_str());
    return 0;
  }
  const std::string name = vm["model"].as<std::string>();
  Json config = train::default_run_config(name);
  const int64_t experts = vm["experts"].as<int64_t>(), dmodel = vm["dmodel"].as<int64_t>();
  if (experts > 0 || dmodel > 0 || vm.count("noswitch") || vm.count("cifar100")) {
    ENGINE_CHECK(config["model"]["family"] == "vit",
                 "--experts/--noswitch/--dmodel/--cifar100 apply to the vit/switch_vit presets, not ",
                 name);
    models::merge_strict(config["model"],
                         models::switch_vit_flags(experts, vm.count("noswitch") > 0, dmodel,
                                                  vm.count("cifar100") > 0),
                         "model");
  }
  Json overrides;
  try {
    overrides = Json::parse(vm["config_overrides"].as<std::string>());
  } catch (const std::exception& e) {
    ENGINE_FAIL("--config_overrides is not valid JSON: ", e.what());
  }
  // "tasks" is a list: an override replaces it whole (each entry is validated by the workload).
  if (overrides.is_object() && overrides.contains("tasks")) {
    ENGINE_CHECK(overrides["tasks"].is_array(), "config: 'tasks' must be a list");
    config["tasks"] = overrides["tasks"];
    overrides.erase("tasks");
  }
  models::merge_strict(config, overrides);
  if (vm.count("steps")) config["run"]["steps"] = vm["steps"].as<int64_t>();
  if (vm.count("threads")) config["run"]["threads"] = vm["threads"].as<int64_t>();
  if (vm.count("seed")) config["run"]["seed"] = vm["seed"].as<int64_t>();
  if (vm.count("out")) config["run"]["out"] = vm["out"].as<std::string>();
  if (vm.count("device")) config["run"]["device"] = vm["device"].as<std::string>();
  if (vm.count("data-dir")) config["data"]["dir"] = vm["data-dir"].as<std::string>();
  if (vm.count("lr")) config["optimization"]["optimizer"]["learning_rate"] = vm["lr"].as<double>();
  if (vm.count("batch"))
    for (auto& t : config["tasks"]) t["batch"] = vm["batch"].as<int64_t>();
  if (vm.count("agd")) {
    const auto a = vm["agd"].as<std::string>();
    ENGINE_CHECK(a == "on" || a == "off", "--agd must be on or off, got ", a);
    config["agd"]["enabled"] = a == "on";
  }
  if (vm.count("summary")) {
    auto model = models::build_model(config["model"]);
    std::cout << models::format_summary(name + " (" + model->family() + ")", model->summary());
    return 0;
  }
  if (vm.count("recycle-from")) return recycle(config, vm);
  train::RunOptions ro;
  ro.resume = vm.count("resume") > 0;
  if (ro.resume) ro.resume_from = vm["resume"].as<std::string>();
  ro.eval_only = vm.count("eval-only") > 0;
  if (vm.count("init-from")) ro.init_from = vm["init-from"].as<std::string>();
  return train::run(config, ro);
}

}  // namespace

int main(int argc, char** argv) {
  engine::ensure_passive_omp_wait(argc, argv);  // see engine/omp_env.h
  try {
    return run(argc, argv);
  } catch (const po::error& e) {
    std::fprintf(stderr, "train: %s (see ./train --help)\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train: %s\n", e.what());
  }
  return 1;
}
