// Evaluation metrics on plain tensors (no gradients): top-k accuracy, retrieval recall@K and
// median rank, and zero-shot classification by cosine similarity against class embeddings.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace train {
using engine::Tensor;

// Number of rows of scores [N, C] whose label (i64 [N]) is among the k highest scores (ties
// resolved towards the lower index, as kernels/topk.h).
int64_t topk_correct(const Tensor& scores, const Tensor& labels, int64_t k);

struct RetrievalMetrics {
  double r1 = 0, r5 = 0, r10 = 0;  // fraction of queries whose match ranks within the first K
  double median_rank = 0;          // 1-based
};
// sim [N, N]: row i = query i against every candidate; the match of query i is candidate i.
// The rank of the match counts the candidates scored strictly higher, plus 1.
RetrievalMetrics retrieval(const Tensor& sim);

// Cosine similarity of every row of x [N, D] with every row of y [M, D] -> f32 [N, M].
Tensor cosine_similarity(const Tensor& x, const Tensor& y);

}  // namespace train
