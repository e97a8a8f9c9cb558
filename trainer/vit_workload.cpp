// Image classification for the ViT family (vit, switch_vit, spheromoe_*): Fashion-MNIST by default,
// CIFAR-10/100 from --data-dir, with crop/flip/Mixup/CutMix and label smoothing.
#include <cstdio>
#include <filesystem>

#include <omp.h>

#include "autograd/ops.h"
#include "engine/error.h"
#include "models/vit.h"
#include "trainer/augment.h"
#include "trainer/image_data.h"
#include "trainer/loader.h"
#include "trainer/metrics.h"
#include "trainer/workload.h"

namespace train {

namespace {

bool cifar_present(const std::string& dir, int classes) {
  namespace fs = std::filesystem;
  if (dir.empty()) return false;
  const char* file = classes == 100 ? "train.bin" : "data_batch_1.bin";
  const char* sub = classes == 100 ? "cifar-100-binary" : "cifar-10-batches-bin";
  return fs::exists(fs::path(dir) / file) || fs::exists(fs::path(dir) / sub / file);
}

// Fits a dataset to the model's input: centred zero padding to the model's size and grey images
// replicated over the model's channels (e.g. Fashion-MNIST 28×28×1 for a 32×32×3 CIFAR model).
ImageDataset adapt(ImageDataset ds, int64_t size, int64_t channels) {
  if (ds.height == size && ds.width == size && ds.channels == channels) return ds;
  ENGINE_CHECK(ds.height <= size && ds.width <= size && (ds.channels == channels || ds.channels == 1),
               "data: ", ds.name, " images are ", ds.height, "x", ds.width, "x", ds.channels,
               " and cannot be fitted to the model's ", size, "x", size, "x", channels,
               " (set model.image_size / model.channels or pick another dataset)");
  ImageDataset out = ds;
  out.height = out.width = size;
  out.channels = channels;
  out.pixels.assign(size_t(ds.n * size * size * channels), 0);
  const int64_t oy = (size - ds.height) / 2, ox = (size - ds.width) / 2;
  for (int64_t i = 0; i < ds.n; ++i)
    for (int64_t y = 0; y < ds.height; ++y)
      for (int64_t x = 0; x < ds.width; ++x)
        for (int64_t c = 0; c < channels; ++c)
          out.pixels[size_t(((i * size + y + oy) * size + x + ox) * channels + c)] =
              ds.pixels[size_t(((i * ds.height + y) * ds.width + x) * ds.channels +
                               (ds.channels == 1 ? 0 : c))];
  return out;
}

struct ViTData {
  ImageDataset train, test;
  std::string dataset;
};

// The configured image dataset, fitted to the model's input size.
ViTData load_vit_data(const Json& cfg) {
    const Json& data = cfg.at("data");
    const Json& mc = cfg.at("model");
    const int64_t classes = mc.at("classes"), size = mc.at("image_size"), ch = mc.at("channels");
    std::string dataset = data.at("dataset");
    const std::string dir = data.at("dir");
    if (dataset == "auto") {
      if (classes == 100 && cifar_present(dir, 100))
        dataset = "cifar100";
      else if (cifar_present(dir, 10) && classes == 10 && ch == 3)
        dataset = "cifar10";
      else
        dataset = "fashion_mnist";
    }
    auto load = [&](const std::string& split) {
      if (dataset == "fashion_mnist")
        return load_fashion_mnist(data.at("fashion_mnist_dir").get<std::string>(), split);
      if (dataset == "cifar10" || dataset == "cifar100") {
        ENGINE_CHECK(!dir.empty(), "data: ", dataset, " needs --data-dir (the folder with the ",
                     "binary version from https://www.cs.toronto.edu/~kriz/cifar.html)");
        return load_cifar(dir, dataset == "cifar10" ? 10 : 100, split);
      }
      ENGINE_FAIL("config: data.dataset = \"", dataset,
                  "\": must be auto, fashion_mnist, cifar10 or cifar100 for ViT models");
    };
    ViTData d;
    d.train = adapt(load("train"), size, ch);
    d.test = adapt(load("test"), size, ch);
    d.dataset = dataset;
    ENGINE_CHECK(d.train.num_classes() == classes, "data: ", d.train.name, " has ",
                 d.train.num_classes(), " classes but the model's head has ", classes,
                 " (set model.classes)");
    return d;
}

AugmentConfig eval_augment(int64_t channels) {
  AugmentConfig a;
  a.mean.assign(size_t(channels), 0.5f);  // [-1, 1], as the reference switch-ViT
  a.std.assign(size_t(channels), 0.5f);
  return a;
}

class ViTWorkload : public Workload {
 public:
  ViTWorkload(const Json& cfg, models::ViT& vit) : vit_(vit) {
    ViTData d = load_vit_data(cfg);
    train_ = std::move(d.train);
    test_ = std::move(d.test);
    dataset_ = d.dataset;
    const Json& mc = cfg.at("model");
    const int64_t ch = mc.at("channels");
    tasks_.push_back(normalize_task(cfg.at("tasks").at(0), "vit"));
    ENGINE_CHECK(cfg.at("tasks").size() == 1, "config: ViT models train exactly one task");
    const Json& opt = cfg.at("optimization");
    const Json& a = opt.at("augment");
    aug_.random_crop = a.at("random_crop");
    aug_.crop_padding = int(a.at("crop_padding").get<int64_t>());
    aug_.horizontal_flip = a.at("flip");
    aug_.mixup_alpha = float(a.at("mixup_alpha").get<double>());
    aug_.cutmix_alpha = float(a.at("cutmix_alpha").get<double>());
    aug_.label_smoothing = float(opt.at("label_smoothing").get<double>());
    aug_.mean = eval_augment(ch).mean;
    aug_.std = eval_augment(ch).std;
    seed_ = cfg.at("run").at("seed");
    depth_ = int(cfg.at("run").at("prefetch").get<int64_t>());
    dev_ = run_device(cfg.at("run").at("device"));
    sampler_ = std::make_unique<EpochSampler>(train_.n, tasks_[0].at("batch").get<int64_t>(),
                                              seed_);
    seek(0, 0);
  }

  autograd::Var loss(int t, int64_t use, models::Context& ctx, int64_t& examples) override {
    ENGINE_CHECK(prefetch_->position() == use, "ViTWorkload: batch stream out of order");
    ImageBatch b = prefetch_->next();
    examples = b.images.size(0);
    autograd::Var logits = vit_.forward(autograd::Var(on_device(b.images, dev_)), ctx);
    if (b.mix != MixKind::none || aug_.label_smoothing > 0)
      return autograd::cross_entropy_soft(logits, on_device(b.targets, dev_));
    return autograd::cross_entropy(logits, on_device(b.labels, dev_));
  }

  void seek(int, int64_t use) override {
    prefetch_.reset();
    auto make = image_batch_maker(train_, *sampler_, aug_, seed_);
    // The loader thread assembles batches single-threaded: the cores belong to the step.
    prefetch_ = std::make_unique<Prefetcher<ImageBatch>>(
        [make, threads = depth_ > 0 ? 1 : 0](int64_t i) {
          if (threads) omp_set_num_threads(threads);
          return make(i);
        },
        depth_, use);
  }

  std::vector<EvalRow> evaluate(int64_t max_examples, int64_t batch) override {
    autograd::NoGradGuard ng;
    const int64_t n = max_examples > 0 ? std::min(max_examples, test_.n) : test_.n;
    const AugmentConfig plain = aug_.eval();
    int64_t top1 = 0, top5 = 0;
    for (int64_t i = 0; i < n; i += batch) {
      std::vector<int64_t> idx;
      for (int64_t j = i; j < std::min(n, i + batch); ++j) idx.push_back(j);
      ImageBatch b = make_batch(test_, idx, plain, seed_, 0);
      models::Context ctx;
      engine::Tensor logits = vit_.forward(autograd::Var(on_device(b.images, dev_)), ctx).data();
      top1 += topk_correct(logits, b.labels, 1);
      top5 += topk_correct(logits, b.labels, std::min<int64_t>(5, logits.size(1)));
    }
    const std::string task = dataset_ + " test";
    return {{task, "top1", double(top1) / n, n}, {task, "top5", double(top5) / n, n}};
  }

  std::string describe() const override {
    return train_.name + " (" + std::to_string(train_.n) + " train / " + std::to_string(test_.n) +
           " test, " + std::to_string(train_.height) + "x" + std::to_string(train_.width) + "x" +
           std::to_string(train_.channels) + ")";
  }

 private:
  models::ViT& vit_;
  ImageDataset train_, test_;
  std::string dataset_;
  AugmentConfig aug_;
  uint64_t seed_ = 0;
  int depth_ = 2;
  engine::Device dev_ = engine::Device::cpu();
  std::unique_ptr<EpochSampler> sampler_;
  std::unique_ptr<Prefetcher<ImageBatch>> prefetch_;
};

}  // namespace

engine::Tensor sample_images(const Json& config, int64_t n) {
  ViTData d = load_vit_data(config);
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < std::min(n, d.train.n); ++i) idx.push_back(i);
  return make_batch(d.train, idx, eval_augment(d.train.channels), 0, 0).images;
}

std::unique_ptr<Workload> make_vit_workload(const Json& config, models::Model& model) {
  auto* vit = dynamic_cast<models::ViT*>(&model);
  ENGINE_CHECK(vit != nullptr, "make_vit_workload: the model is not a ViT");
  return std::make_unique<ViTWorkload>(config, *vit);
}

std::unique_ptr<Workload> make_workload(const Json& config, models::Model& model) {
  if (model.family() == "vit") return make_vit_workload(config, model);
  if (model.family() == "imp") return make_imp_workload(config, model);
  ENGINE_FAIL("no workload for model family '", model.family(), "'");
}

}  // namespace train
