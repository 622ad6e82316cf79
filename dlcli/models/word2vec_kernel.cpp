// word2vec negative sampling on the CPU: scores and gradients fused per row, the rows' vectors read once into
// cache (dlcli/models/word2vec.py, NegativeSampling; the same math as its tensor path, checked against it in the tests).
// Compiled on first use by torch.utils.cpp_extension (model.cpu_kernel=false: tensor ops only).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <algorithm>
#include <vector>

// Sums of log(f) kept as a running product (each f <= 1 + e^30), a log taken only when it grows large.
struct LogProduct {
  double p = 1.0, logs = 0.0;
  void times(double f) {
    p *= f;
    if (p > 1e250) { logs += std::log(p); p = 1.0; }
  }
  double log() const { return logs + std::log(p); }
};
static inline float dot(const float* a, const float* b, int64_t d) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};  // 8 lanes: vectorizes without -ffast-math
  int64_t i = 0;
  for (; i + 8 <= d; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}
static inline void axpy(float a, const float* x, float* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += a * x[i];
}

// What sgns hands each group: shapes, the kept rows with their output/input slot offsets, tables and outputs.
struct Batch {
  int64_t m, T, S, d, P, Q;
  const int64_t *rows, *first, *qfirst, *inp, *tgt, *neg;
  const float *win, *wout;
  float *xbuf, *gx, *gin, *gout;
  int64_t *inrow, *orow;
  float ks;
};

// One group of rows (they share the group's negatives). Compiled twice, for AVX2+FMA and for any x86-64/other CPU,
// the right one picked at load time, so the cached build stays portable.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=haswell", "default")))
#endif
static double group(const Batch& b, int64_t g, int64_t lo, int64_t hi) {
  const int64_t m = b.m, T = b.T, S = b.S, d = b.d;
  double loss = 0.0;
  float* gneg = b.gout + (b.P + g * S) * d;  // this group's negatives' gradients (the targets' are written whole)
  std::fill(gneg, gneg + S * d, 0.f);
  for (int64_t s = 0; s < S; ++s) b.orow[b.P + g * S + s] = b.neg[g * S + s];
  for (int64_t i = lo; i < hi; ++i) {
    const int64_t r = b.rows[i];
    float* x = b.xbuf + i * d;
    float* gx = b.gx + i * d;
    std::fill(x, x + d, 0.f);  // zeroed here, by the thread about to use them, not by a pass over all rows
    std::fill(gx, gx + d, 0.f);
    int64_t cnt = 0;
    for (int64_t j = 0; j < m; ++j) {
      const int64_t w = b.inp[r * m + j];
      if (w >= 0) { axpy(1.f, b.win + w * d, x, d); ++cnt; }
    }
    if (cnt > 1) for (int64_t j = 0; j < d; ++j) x[j] /= cnt;
    int64_t slot = b.first[i], count = 0;
    // -log sigmoid terms as the log of a product (two logs a row instead of one a score); |z| > 30 in closed form
    LogProduct pos_terms, neg_terms;
    double extra = 0.0, rare = 0.0;
    for (int64_t j = 0; j < T; ++j) {
      const int64_t t = b.tgt[r * T + j];
      if (t < 0) continue;
      ++count;
      const float* v = b.wout + t * d;
      const float z = dot(x, v, d);
      float gp;  // d/dz of -log sigmoid(z) = sigmoid(z) - 1
      if (z < -30.f) { gp = -1.f; extra -= z; }
      else if (z > 30.f) { gp = 0.f; }
      else { const float e = std::exp(-z); gp = -e / (1.f + e); pos_terms.times(1.0 + e); }
      axpy(gp, v, gx, d);
      float* gt = b.gout + slot * d;
      for (int64_t k = 0; k < d; ++k) gt[k] = gp * x[k];
      b.orow[slot++] = t;
    }
    for (int64_t s = 0; s < S; ++s) {
      const int64_t w = b.neg[g * S + s];
      int64_t own = 0;  // a negative equal to a target is skipped for that pair (word2vec)
      for (int64_t j = 0; j < T; ++j) own += b.tgt[r * T + j] == w;
      if (own == count) continue;
      const float weight = (count - own) * b.ks;
      const float* v = b.wout + w * d;
      const float z = dot(x, v, d);
      float gn;  // weight * d/dz of -log sigmoid(-z) = weight * sigmoid(z)
      if (z > 30.f) { gn = weight; extra += weight * z; }
      else if (z < -30.f) { gn = 0.f; }
      else {
        const float e = std::exp(z);
        gn = weight * e / (1.f + e);
        if (own == 0) neg_terms.times(1.0 + e);
        else rare += weight * std::log1p(static_cast<double>(e));
      }
      axpy(gn, v, gx, d);
      axpy(gn, x, gneg + s * d, d);
    }
    loss += pos_terms.log() + count * b.ks * neg_terms.log() + rare + extra;
    // each input word of the row gets the row's whole gradient (cbow: the mean's, as word2vec and gensim do)
    int64_t q = b.qfirst[i];
    for (int64_t j = 0; j < m; ++j) {
      const int64_t w = b.inp[r * m + j];
      if (w < 0) continue;
      b.inrow[q] = w;
      std::copy(gx, gx + d, b.gin + q * d);
      ++q;
    }
  }
  return loss;
}

// inputs [n, m] (-1 none; one word: its vector, more: their mean), targets [n, T] (-1 none), negatives [G_max, S].
// Rows with no input or no target are skipped; the rest form groups of about `group` pairs, each sharing one row of
// negatives. Returns the summed loss, the number of pairs, the input rows with their gradients and the output rows
// (real targets, then the negatives) with theirs.
std::vector<torch::Tensor> sgns(torch::Tensor w_in, torch::Tensor w_out, torch::Tensor inputs, torch::Tensor targets,
                                torch::Tensor negatives, double k, int64_t group_pairs) {
  TORCH_CHECK(w_in.is_contiguous() && w_out.is_contiguous() && w_in.scalar_type() == torch::kFloat32, "tables");
  inputs = inputs.contiguous(); targets = targets.contiguous(); negatives = negatives.contiguous();
  const int64_t n = targets.size(0), T = targets.size(1), m = inputs.size(1), d = w_in.size(1);
  const int64_t S = negatives.size(1);
  const int64_t* inp = inputs.data_ptr<int64_t>();
  const int64_t* tgt = targets.data_ptr<int64_t>();
  std::vector<int64_t> rows, first(1, 0), qfirst(1, 0);
  for (int64_t r = 0; r < n; ++r) {
    int64_t c = 0, q = 0;
    for (int64_t j = 0; j < T; ++j) c += tgt[r * T + j] >= 0;
    for (int64_t j = 0; j < m; ++j) q += inp[r * m + j] >= 0;
    if (c == 0 || q == 0) continue;
    rows.push_back(r);
    first.push_back(first.back() + c);
    qfirst.push_back(qfirst.back() + q);
  }
  const int64_t R = rows.size(), P = first.back(), Q = qfirst.back();
  const int64_t G = R == 0 ? 0 : std::min({negatives.size(0), R, (P + group_pairs - 1) / group_pairs});
  const int64_t per = G == 0 ? 0 : (R + G - 1) / G;
  auto opts = w_in.options();
  auto grad_in = torch::empty({Q, d}, opts);
  auto in_rows = torch::empty({Q}, inputs.options());
  auto grad_out = torch::empty({P + G * S, d}, opts);
  auto out_rows = torch::empty({P + G * S}, inputs.options());
  auto xbuf = torch::empty({R, d}, opts);
  auto gx = torch::empty({R, d}, opts);
  Batch b{m, T, S, d, P, Q, rows.data(), first.data(), qfirst.data(), inp, tgt, negatives.data_ptr<int64_t>(),
          w_in.data_ptr<float>(), w_out.data_ptr<float>(), xbuf.data_ptr<float>(), gx.data_ptr<float>(),
          grad_in.data_ptr<float>(), grad_out.data_ptr<float>(), in_rows.data_ptr<int64_t>(),
          out_rows.data_ptr<int64_t>(), static_cast<float>(k / S)};
  std::vector<double> loss_of(G, 0.0);
  at::parallel_for(0, G, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) loss_of[g] = group(b, g, g * per, std::min((g + 1) * per, R));
  });
  double total = 0.0;
  for (double l : loss_of) total += l;
  // a diverged run's loss may leave float's range: inf, which the loop reports, not a conversion error here
  return {torch::scalar_tensor(total, torch::kFloat64).to(torch::kFloat32),
          torch::scalar_tensor(P, inputs.options()), in_rows, grad_in, out_rows, grad_out};
}

// table[rows[i]] += alpha * values[i] for every i (repeats add up): a sparse SGD step. Each thread owns the rows
// whose 16-row block falls to it and applies its entries in order, so the result does not depend on timing.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=haswell", "default")))
#endif
static void add_owned(float* table, const int64_t* rows, const float* values, int64_t n, int64_t d, float alpha,
                      int64_t part, int64_t parts) {
  for (int64_t i = 0; i < n; ++i)
    if ((rows[i] >> 4) % parts == part) axpy(alpha, values + i * d, table + rows[i] * d, d);
}

void add_rows_(torch::Tensor table, torch::Tensor rows, torch::Tensor values, double alpha) {
  TORCH_CHECK(table.is_contiguous() && table.scalar_type() == torch::kFloat32, "table");
  rows = rows.contiguous(); values = values.contiguous();
  const int64_t parts = std::max<int64_t>(1, at::get_num_threads());
  float* t = table.data_ptr<float>();
  const int64_t* r = rows.data_ptr<int64_t>();
  const float* v = values.data_ptr<float>();
  const int64_t n = rows.size(0), d = table.size(1);
  at::parallel_for(0, parts, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t part = lo; part < hi; ++part) add_owned(t, r, v, n, d, static_cast<float>(alpha), part, parts);
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("sgns", &sgns, "word2vec negative sampling, fused");
  mod.def("add_rows_", &add_rows_, "table[rows] += alpha * values, repeats added, in parallel by row");
}
