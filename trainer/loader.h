// Data loading for the trainer: deterministic epoch shuffling (EpochSampler), a background
// prefetcher that produces batches ahead of the consumer (Prefetcher), and the glue that makes
// image batches from both (image_batch_maker).
//
// A batch is a pure function of (seed, global batch index): the sampler maps the index to
// (epoch, examples) and the augmentation draws are keyed by it, so resuming at step s is
// reset(s) and gives bit-identical batches.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "engine/error.h"
#include "trainer/augment.h"
#include "trainer/image_data.h"

namespace train {

// Maps a global batch index to (epoch, examples). Epoch e visits order(e), a Philox permutation
// of [0, n) keyed by (seed, stream 0x5A << 56 | e) (engine::philox_permutation), or 0..n-1
// without shuffling; batch j of the epoch takes positions [j B, j B + B) of it. With drop_last
// the incomplete tail of each epoch is skipped, otherwise it is a last, smaller batch.
class EpochSampler {
 public:
  EpochSampler(int64_t n, int64_t batch_size, uint64_t seed, bool shuffle = true,
               bool drop_last = true);

  struct Item {
    int64_t epoch = 0, batch_in_epoch = 0;
    std::vector<int64_t> indices;
  };

  int64_t size() const { return n_; }
  int64_t batch_size() const { return batch_; }
  int64_t batches_per_epoch() const { return per_epoch_; }
  bool shuffle() const { return shuffle_; }
  bool drop_last() const { return drop_last_; }
  std::vector<int64_t> order(int64_t epoch) const;
  Item batch(int64_t global_index) const;

 private:
  int64_t n_, batch_, per_epoch_;
  uint64_t seed_;
  bool shuffle_, drop_last_;
  // The last epoch's order, shared by the copies of the sampler (batches of one epoch reuse it).
  struct Cache {
    std::mutex mu;
    int64_t epoch = -1;
    std::vector<int64_t> order;
  };
  std::shared_ptr<Cache> cache_ = std::make_shared<Cache>();
  void shuffle_into_cache(int64_t epoch) const;  // with cache_->mu held
};

// Produces make(index), make(index + 1), ... on a worker thread, up to `depth` batches ahead of
// next(), which returns them in order. reset(i) drops what was prefetched and continues from i.
// An exception thrown by make() is rethrown by the next() that reaches that index (and by every
// next() after it until reset()). depth 0 runs make() inside next() with no thread. The
// destructor stops the worker and joins it (after the make() in progress, if any, returns).
// make() runs on the worker thread: OpenMP regions inside it get that thread's own team, sized
// by omp_set_num_threads() called inside make() (a per-thread setting) if the default
// oversubscribes the cores the training step uses.
template <class Batch>
class Prefetcher {
 public:
  using MakeFn = std::function<Batch(int64_t)>;

  Prefetcher(MakeFn make, int depth, int64_t start = 0)
      : make_(std::move(make)), depth_(depth), produce_(start), consume_(start) {
    ENGINE_CHECK(make_ != nullptr, "Prefetcher: no batch function");
    ENGINE_CHECK(depth >= 0, "Prefetcher: depth must be >= 0, got ", depth);
    if (depth_ > 0) worker_ = std::thread([this] { run(); });
  }
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  ~Prefetcher() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  // The batch at position(), then advances.
  Batch next() {
    if (depth_ == 0) {
      Batch b = make_(consume_);
      ++consume_;
      return b;
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !ready_.empty() || error_; });
    if (ready_.empty()) std::rethrow_exception(error_);
    Batch b = std::move(ready_.front());
    ready_.pop_front();
    ++consume_;
    lock.unlock();
    cv_.notify_all();
    return b;
  }

  // Continue from `index`: prefetched batches and a pending error are dropped.
  void reset(int64_t index) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++generation_;
      ready_.clear();
      error_ = nullptr;
      produce_ = consume_ = index;
    }
    cv_.notify_all();
  }

  int64_t position() const {  // the index the next next() returns
    std::lock_guard<std::mutex> lock(mu_);
    return consume_;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || (!error_ && int64_t(ready_.size()) < depth_); });
      if (stop_) return;
      const int64_t index = produce_++;
      const uint64_t gen = generation_;
      lock.unlock();
      std::optional<Batch> made;
      std::exception_ptr err;
      try {
        made.emplace(make_(index));
      } catch (...) {
        err = std::current_exception();
      }
      lock.lock();
      if (gen != generation_) continue;  // reset() while making it: stale
      if (err)
        error_ = err;
      else
        ready_.push_back(std::move(*made));
      cv_.notify_all();
    }
  }

  MakeFn make_;
  const int depth_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> ready_;  // batches consume_, consume_ + 1, ...
  std::exception_ptr error_;
  int64_t produce_, consume_;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::thread worker_;
};

// Batch `index` of `ds`: sampler.batch(index)'s examples assembled by make_batch with the draws
// of (seed, index). The function keeps references to nothing but `ds`, which must outlive it.
std::function<ImageBatch(int64_t)> image_batch_maker(const ImageDataset& ds,
                                                     const EpochSampler& sampler,
                                                     const AugmentConfig& cfg, uint64_t seed);

}  // namespace train
