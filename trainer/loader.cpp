#include "trainer/loader.h"

#include <algorithm>

#include "engine/philox.h"

namespace train {

EpochSampler::EpochSampler(int64_t n, int64_t batch_size, uint64_t seed, bool shuffle,
                           bool drop_last)
    : n_(n), batch_(batch_size), seed_(seed), shuffle_(shuffle), drop_last_(drop_last) {
  ENGINE_CHECK(n > 0, "EpochSampler: the dataset is empty");
  ENGINE_CHECK(batch_size > 0, "EpochSampler: batch size must be positive, got ", batch_size);
  ENGINE_CHECK(!drop_last || batch_size <= n, "EpochSampler: batch size ", batch_size,
               " exceeds the ", n, " examples, so drop_last leaves no batch");
  per_epoch_ = drop_last ? n / batch_size : (n + batch_size - 1) / batch_size;
}

void EpochSampler::shuffle_into_cache(int64_t epoch) const {
  ENGINE_CHECK(epoch >= 0 && epoch < (int64_t(1) << 56), "EpochSampler: epoch ", epoch,
               " out of range [0, 2^56)");
  if (cache_->epoch == epoch) return;
  cache_->order.resize(size_t(n_));
  engine::philox_permutation(seed_, uint64_t(0x5A) << 56 | uint64_t(epoch), n_,
                             cache_->order.data());
  cache_->epoch = epoch;
}

std::vector<int64_t> EpochSampler::order(int64_t epoch) const {
  ENGINE_CHECK(epoch >= 0, "EpochSampler: epoch must be >= 0, got ", epoch);
  if (!shuffle_) {
    std::vector<int64_t> out(static_cast<size_t>(n_));
    for (int64_t i = 0; i < n_; ++i) out[size_t(i)] = i;
    return out;
  }
  std::lock_guard<std::mutex> lock(cache_->mu);
  shuffle_into_cache(epoch);
  return cache_->order;
}

EpochSampler::Item EpochSampler::batch(int64_t global_index) const {
  ENGINE_CHECK(global_index >= 0, "EpochSampler: batch index must be >= 0, got ", global_index);
  Item item;
  item.epoch = global_index / per_epoch_;
  item.batch_in_epoch = global_index % per_epoch_;
  const int64_t begin = item.batch_in_epoch * batch_;
  const int64_t end = std::min(begin + batch_, n_);
  if (!shuffle_) {
    for (int64_t i = begin; i < end; ++i) item.indices.push_back(i);
    return item;
  }
  std::lock_guard<std::mutex> lock(cache_->mu);
  shuffle_into_cache(item.epoch);
  item.indices.assign(cache_->order.begin() + begin, cache_->order.begin() + end);
  return item;
}

std::function<ImageBatch(int64_t)> image_batch_maker(const ImageDataset& ds,
                                                     const EpochSampler& sampler,
                                                     const AugmentConfig& cfg, uint64_t seed) {
  return [&ds, sampler, cfg, seed](int64_t index) {
    return make_batch(ds, sampler.batch(index).indices, cfg, seed, index);
  };
}

}  // namespace train
