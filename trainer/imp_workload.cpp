// IMP's AGD mixture on the embedded multimodal set (DESIGN.md §8, train/multimodal.h): image-text,
// image classification, video-text with drop-token, video (direction) classification,
// video-audio-text over three pairs, audio classification; evaluation with classifier top-k,
// zero-shot classification from class prompts and retrieval in both directions per pair.
#include <algorithm>
#include <map>

#include <omp.h>

#include "autograd/ops.h"
#include "engine/error.h"
#include "models/imp.h"
#include "kernels/elementwise.h"
#include "kernels/l2norm.h"
#include "trainer/loader.h"
#include "trainer/metrics.h"
#include "trainer/multimodal.h"
#include "trainer/objectives.h"
#include "trainer/workload.h"

namespace train {

namespace {

using models::Modality;
using engine::Tensor;

struct MMBatch {
  Tensor vision, audio, text, labels;
  int64_t n = 0;
};

Tensor concat_rows(const std::vector<Tensor>& parts) {
  int64_t rows = 0;
  for (const auto& p : parts) rows += p.size(0);
  Tensor out = Tensor::empty({rows, parts[0].size(1)}, parts[0].dtype());
  int64_t r = 0;
  for (const auto& p : parts) {
    out.narrow(0, r, p.size(0)).copy_(p);
    r += p.size(0);
  }
  return out;
}

class IMPWorkload : public Workload {
 public:
  IMPWorkload(const Json& cfg, models::IMP& imp) : imp_(imp) {
    const Json& data = cfg.at("data");
    ENGINE_CHECK(data.at("dataset") == "multimodal", "config: data.dataset = ",
                 data.at("dataset").dump(), ": IMP models train on \"multimodal\"");
    MultimodalConfig mc;
    mc.cache_dir = data.at("cache_dir").get<std::string>() + "/multimodal";
    mc.fashion_dir = data.at("fashion_mnist_dir");
    mc.max_text_len = cfg.at("model").at("text").at("max_len");
    mc.pixel_mean = float(data.at("pixel_mean").get<double>());
    mc.pixel_std = float(data.at("pixel_std").get<double>());
    data_ = std::make_unique<MultimodalData>(mc);
    seed_ = cfg.at("run").at("seed");
    depth_ = int(cfg.at("run").at("prefetch").get<int64_t>());
    dev_ = run_device(cfg.at("run").at("device"));
    smoothing_ = cfg.at("optimization").at("label_smoothing");
    for (const auto& t : cfg.at("tasks")) tasks_.push_back(normalize_task(t, "imp"));
    ENGINE_CHECK(!tasks_.empty(), "config: tasks is empty");
    for (size_t t = 0; t < tasks_.size(); ++t) {
      const auto& tk = tasks_[t];
      if (tk.at("kind") == "classify")
        ENGINE_CHECK(imp_.has_classifier(tk.at("head")), "config: task ",
                     tk.at("name").get<std::string>(), " uses classifier '",
                     tk.at("head").get<std::string>(), "' that model.classifiers does not define");
      const int64_t n = count(data_->train(), tk.at("data"));
      ENGINE_CHECK(n >= tk.at("batch").get<int64_t>(), "config: task ",
                   tk.at("name").get<std::string>(), " has batch ", tk.at("batch").dump(),
                   " but only ", n, " training examples");
      samplers_.push_back(std::make_unique<EpochSampler>(n, tk.at("batch").get<int64_t>(),
                                                         seed_ + 1000003 * (t + 1)));
      streams_.emplace_back();
      seek(int(t), 0);
    }
  }

  static int64_t count(const MultimodalSplit& s, const std::string& data) {
    if (data == "image") return s.num_images();
    if (data == "video") return s.num_videos();
    if (data == "audio") return s.num_clips();
    return s.num_triplets();
  }

  MMBatch make(const MultimodalSplit& s, const Json& tk, const std::vector<int64_t>& idx) const {
    MMBatch b;
    b.n = int64_t(idx.size());
    const std::string data = tk.at("data");
    const bool direction = tk.at("label") == "direction";
    if (data == "image") {
      b.vision = s.images(idx);
      b.text = s.image_texts(idx);
      b.labels = s.image_labels(idx);
    } else if (data == "video") {
      b.vision = s.videos(idx);
      b.text = s.video_texts(idx);
      b.labels = direction ? s.video_directions(idx) : s.video_labels(idx);
    } else if (data == "audio") {
      b.audio = s.spectrograms(idx);
      b.text = s.clip_texts(idx);
      b.labels = s.clip_labels(idx);
    } else {
      TripletBatch tb = s.triplets(idx);
      b.vision = tb.videos;
      b.audio = tb.spectrograms;
      b.text = tb.texts;
      b.labels = tb.labels;
    }
    return b;
  }

  // The batch's input of modality m on run.device (undefined when the batch has none).
  Tensor input_of(const MMBatch& b, Modality m) const {
    return on_device(m == Modality::vision ? b.vision : m == Modality::audio ? b.audio : b.text,
                     dev_);
  }

  autograd::Var loss(int t, int64_t use, models::Context& ctx, int64_t& examples) override {
    auto& stream = *streams_[size_t(t)];
    ENGINE_CHECK(stream.position() == use, "IMPWorkload: batch stream out of order");
    MMBatch b = stream.next();
    examples = b.n;
    const Json& tk = tasks_[size_t(t)];
    const double drop = tk.at("drop_token");
    if (tk.at("kind") == "classify") {
      const Modality m = tk.at("data") == "audio" ? Modality::audio : Modality::vision;
      auto enc = imp_.encode(m, autograd::Var(input_of(b, m)), ctx, m == Modality::vision ? drop : 0);
      return autograd::cross_entropy(imp_.classify(tk.at("head"), enc.pooled),
                                     on_device(b.labels, dev_), smoothing_);
    }
    std::map<Modality, autograd::Var> pooled;
    autograd::Var total;
    for (const auto& pr : tk.at("pairs")) {
      const Modality a = models::modality_from_name(pr[0]), c = models::modality_from_name(pr[1]);
      for (Modality m : {a, c}) {
        if (pooled.count(m)) continue;
        const Tensor in = input_of(b, m);
        ENGINE_CHECK(in.defined(), "config: task ", tk.at("name").get<std::string>(),
                     ": its data has no ", models::modality_name(m), " input");
        pooled[m] = imp_.encode(m, autograd::Var(in), ctx, m == Modality::vision ? drop : 0).pooled;
      }
      autograd::Var l = contrastive_nce(imp_.project(a, c, pooled[a]), imp_.project(c, a, pooled[c]),
                                        imp_.temperature(a, c));
      total = total.defined() ? autograd::add(total, l) : l;
    }
    return total;
  }

  void seek(int t, int64_t use) override {
    const Json tk = tasks_[size_t(t)];
    const EpochSampler* sampler = samplers_[size_t(t)].get();
    const MultimodalSplit* split = &data_->train();
    streams_[size_t(t)].reset();
    streams_[size_t(t)] = std::make_unique<Prefetcher<MMBatch>>(
        [this, tk, sampler, split, threads = depth_ > 0 ? 1 : 0](int64_t i) {
          if (threads) omp_set_num_threads(threads);  // the cores belong to the step
          return make(*split, tk, sampler->batch(i).indices);
        },
        depth_, use);
  }

  // Pooled features of `n` test examples of `data`, through modality m, projected for (m, to).
  Tensor embed(const std::string& data, Modality m, Modality to, int64_t n, int64_t batch,
               Tensor* labels = nullptr) const {
    const auto& s = data_->test();
    Json tk = {{"data", data}, {"label", "class"}};
    std::vector<Tensor> out, lab;
    for (int64_t i = 0; i < n; i += batch) {
      std::vector<int64_t> idx;
      for (int64_t j = i; j < std::min(n, i + batch); ++j) idx.push_back(j);
      MMBatch b = make(s, tk, idx);
      models::Context ctx;
      auto enc = imp_.encode(m, autograd::Var(input_of(b, m)), ctx);
      out.push_back(on_device(to == m ? enc.pooled.data() : imp_.project(m, to, enc.pooled).data(),
                              engine::Device::cpu()));
      lab.push_back(b.labels);
    }
    if (labels) {
      int64_t r = 0;
      *labels = Tensor::empty({n}, engine::DType::i64);
      for (const auto& l : lab) {
        labels->narrow(0, r, l.size(0)).copy_(l);
        r += l.size(0);
      }
    }
    return concat_rows(out);
  }

  bool has_pair(Modality a, Modality b) const {
    for (auto [x, y] : imp_.pairs())
      if ((x == a && y == b) || (x == b && y == a)) return true;
    return false;
  }

  std::vector<EvalRow> evaluate(int64_t max_examples, int64_t batch) override {
    autograd::NoGradGuard ng;
    std::vector<EvalRow> rows;
    const auto& s = data_->test();
    auto cap = [&](int64_t n) { return max_examples > 0 ? std::min(n, max_examples) : n; };
    auto classify = [&](const std::string& head, const std::string& data, Modality m,
                        const std::string& label, const std::string& title) {
      if (!imp_.has_classifier(head)) return;
      const int64_t n = cap(count(s, data));
      Json tk = {{"data", data}, {"label", label}};
      int64_t top1 = 0, top5 = 0;
      for (int64_t i = 0; i < n; i += batch) {
        std::vector<int64_t> idx;
        for (int64_t j = i; j < std::min(n, i + batch); ++j) idx.push_back(j);
        MMBatch b = make(s, tk, idx);
        models::Context ctx;
        Tensor logits = imp_.classify(head, imp_.encode(m, autograd::Var(input_of(b, m)), ctx).pooled).data();
        top1 += topk_correct(logits, b.labels, 1);
        top5 += topk_correct(logits, b.labels, std::min<int64_t>(5, logits.size(1)));
      }
      rows.push_back({title, "top1", double(top1) / n, n});
      if (imp_.classifier_classes(head) > 5) rows.push_back({title, "top5", double(top5) / n, n});
    };
    classify("image", "image", Modality::vision, "class", "image classification");
    classify("video", "video", Modality::vision, "direction", "video direction classification");
    classify("audio", "audio", Modality::audio, "class", "audio classification");

    // Zero-shot: class prompts (several templates) averaged per class.
    auto zero_shot = [&](Modality m, train::Modality prompts, const std::string& data,
                         const std::string& title) {
      if (!has_pair(m, Modality::text)) return;
      Tensor ptxt = data_->class_prompt_texts(prompts);
      const int64_t C = data_->num_classes(), K = ptxt.size(0) / C;
      models::Context ctx;
      Tensor te = imp_.project(Modality::text, m,
                               imp_.encode(Modality::text, autograd::Var(on_device(ptxt, dev_)), ctx)
                                   .pooled)
                      .data();
      te = on_device(te, engine::Device::cpu());
      te = kernels::l2_normalize(te.contiguous(), 1e-6, -1).y;
      Tensor cls = Tensor::zeros({C, te.size(1)});
      for (int64_t c = 0; c < C; ++c)
        for (int64_t k = 0; k < K; ++k)
          cls.narrow(0, c, 1).copy_(kernels::add(cls.narrow(0, c, 1), te.narrow(0, c * K + k, 1)));
      Tensor labels;
      const int64_t n = cap(count(s, data));
      Tensor x = embed(data, m, Modality::text, n, batch, &labels);
      Tensor sim = cosine_similarity(x, cls);
      rows.push_back({title, "top1", double(topk_correct(sim, labels, 1)) / n, n});
      rows.push_back({title, "top5", double(topk_correct(sim, labels, 5)) / n, n});
    };
    zero_shot(Modality::vision, train::Modality::image, "image", "zero-shot image (prompts)");
    zero_shot(Modality::audio, train::Modality::audio, "audio", "zero-shot audio (prompts)");

    // Retrieval in both directions per pair, on test examples paired by index.
    auto retrieve = [&](const std::string& data, Modality a, Modality b) {
      if (!has_pair(a, b)) return;
      const int64_t n = std::min<int64_t>(cap(count(s, data)), 1000);
      Tensor ea = embed(data, a, b, n, batch), eb = embed(data, b, a, n, batch);
      Tensor sim = cosine_similarity(ea, eb);
      const std::string an = models::modality_name(a), bn = models::modality_name(b);
      for (int dir = 0; dir < 2; ++dir) {
        RetrievalMetrics r = retrieval(dir ? sim.transpose(0, 1).contiguous() : sim);
        const std::string title =
            data + " " + (dir ? bn + "->" + an : an + "->" + bn) + " retrieval";
        rows.push_back({title, "R@1", r.r1, n});
        rows.push_back({title, "R@5", r.r5, n});
        rows.push_back({title, "R@10", r.r10, n});
      }
    };
    retrieve("image", Modality::vision, Modality::text);
    retrieve("video", Modality::vision, Modality::text);
    if (s.num_triplets() > 0) {
      retrieve("triplet", Modality::vision, Modality::audio);
      retrieve("audio", Modality::audio, Modality::text);
    }
    return rows;
  }

  std::string describe() const override {
    const auto& tr = data_->train();
    return "multimodal set (" + std::to_string(tr.num_images()) + " images, " +
           std::to_string(tr.num_videos()) + " videos, " + std::to_string(tr.num_clips()) +
           " spoken clips for training; cached in " + data_->cache_file() + ")";
  }

 private:
  models::IMP& imp_;
  std::unique_ptr<MultimodalData> data_;
  uint64_t seed_ = 0;
  int depth_ = 2;
  engine::Device dev_ = engine::Device::cpu();
  double smoothing_ = 0;
  std::vector<std::unique_ptr<EpochSampler>> samplers_;
  std::vector<std::unique_ptr<Prefetcher<MMBatch>>> streams_;
};

}  // namespace

std::unique_ptr<Workload> make_imp_workload(const Json& config, models::Model& model) {
  auto* imp = dynamic_cast<models::IMP*>(&model);
  ENGINE_CHECK(imp != nullptr, "make_imp_workload: the model is not an IMP model");
  return std::make_unique<IMPWorkload>(config, *imp);
}

}  // namespace train
