// ./train: the command-line front end (Boost.Program_options). See README.md and `./train --help`.
#include <cstdio>
#include <iostream>
#include <string>

#include <boost/program_options.hpp>

#include "engine/error.h"
#include "models/presets.h"

namespace po = boost::program_options;
using models::Json;

namespace {

const char* kExamples = R"(Examples:
  ./train --list-models
  ./train --model imp_moe_base --summary
  ./train --model switch_vit --experts 64 --summary        (the reference CLI's --experts 64)
  ./train --model vit --config_overrides '{"model":{"dim":384,"heads":12}}' --summary
)";

int run(int argc, char** argv) {
  po::options_description opts("Options");
  opts.add_options()
      ("help,h", "this help")
      ("model", po::value<std::string>()->default_value("imp_moe_base"), "model preset (--list-models)")
      ("list-models", "list the model presets, one line each")
      ("summary", "print the architecture (parameters per block, active per token, FLOPs) and exit")
      ("config_overrides", po::value<std::string>()->default_value("{}"),
       "JSON merged into the configuration, nested keys as printed in the run folder's config.json")
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
  Json config = {{"model", models::preset_config(name)}};
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
  models::merge_strict(config, overrides);
  auto model = models::build_model(config["model"]);
  if (vm.count("summary")) {
    std::cout << models::format_summary(name + " (" + model->family() + ")", model->summary());
    return 0;
  }
  ENGINE_FAIL("training is not built yet: use --summary or --list-models");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const po::error& e) {
    std::fprintf(stderr, "train: %s (see ./train --help)\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train: %s\n", e.what());
  }
  return 1;
}
