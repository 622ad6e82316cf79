// word2vec on the CPU, as the original C tool and gensim train it: pair after pair, each SGD step written straight
// into the tables (dlcli/models/word2vec.py, InPlaceTraining; the batched gradient of the same loss, used on GPUs and
// under DDP, is NegativeSampling there). Compiled on first use by torch.utils.cpp_extension (model.cpu_kernel=false:
// never). A chunk is split into pieces trained at once on torch's threads (Hogwild, as both tools do); subsampling,
// dynamic windows and negatives are drawn here from a seed, so a chunk's draws do not depend on timing.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <memory>
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
  float acc[16] = {0.f};  // 16 lanes (two AVX registers): vectorizes without -ffast-math, hides FMA latency
  int64_t i = 0;
  for (; i + 16 <= d; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += a[i + l] * b[i + l];
  for (; i + 8 <= d; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  for (int l = 0; l < 8; ++l) acc[l] += acc[l + 8];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}
static inline void axpy(float a, const float* x, float* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += a * x[i];
}

// splitmix64: a small, fast generator; one stream per piece of a chunk
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }  // [0, 1)
  int64_t below(int64_t n) { return static_cast<int64_t>(((next() >> 32) * static_cast<uint64_t>(n)) >> 32); }
};

// Walker's alias method: a draw from V outcomes in O(1) (a slot, then it or its alias), tables of V entries that stay
// in cache (word2vec's 1e8-entry unigram table would not).
struct Alias {
  const float* prob;
  const int32_t* alias;
  int64_t n;
  int64_t draw(Rng& r) const {
    const uint64_t z = r.next();
    const int64_t i = static_cast<int64_t>(((z >> 32) * static_cast<uint64_t>(n)) >> 32);
    const float u = static_cast<float>(z & 0xffffff) * (1.0f / 16777216.0f);
    return u < prob[i] ? i : alias[i];
  }
};

// weights [V] (any scale) -> (prob float32 [V], alias int32 [V]) by Vose's method
std::vector<torch::Tensor> alias_table(torch::Tensor weights) {
  auto w = weights.to(torch::kFloat64).contiguous();
  const int64_t n = w.size(0);
  const double* p = w.data_ptr<double>();
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += p[i];
  TORCH_CHECK(n > 0 && total > 0, "alias_table: weights must have a positive sum");
  std::vector<double> scaled(n);
  std::vector<int64_t> small, large;
  for (int64_t i = 0; i < n; ++i) {
    scaled[i] = p[i] * n / total;
    (scaled[i] < 1.0 ? small : large).push_back(i);
  }
  auto prob = torch::ones({n}, torch::kFloat32);
  auto alias = torch::arange(n, torch::kInt32);
  float* pr = prob.data_ptr<float>();
  int32_t* al = alias.data_ptr<int32_t>();
  while (!small.empty() && !large.empty()) {
    const int64_t s = small.back(), l = large.back();
    small.pop_back();
    pr[s] = static_cast<float>(scaled[s]);
    al[s] = static_cast<int32_t>(l);
    scaled[l] -= 1.0 - scaled[s];
    if (scaled[l] < 1.0) { large.pop_back(); small.push_back(l); }
  }
  return {prob, alias};  // what is left in either list keeps probability 1 (rounding)
}

struct Chunk {
  const int64_t *word, *sent;  // the kept words of the chunk and their sentence ids
  int64_t K, window, negative, d;
  bool cbow;
  float alpha;
  float *win, *wout;
  Alias noise;
  // Rows 0..hot-1 (the most frequent words: vocabularies are sorted by count) are trained in each piece's own copy and
  // the pieces' changes added up at the end: shared by every thread, they would otherwise bounce between the cores'
  // caches on every write (Gutenberg cbow on 2 cores: 2.6M -> 3.1M words/s with 512 of them).
  int64_t hot;
};

// A thread's view of the tables: its own copies of the hot rows, the shared tables for the rest.
struct Rows {
  float *win, *wout, *hot_in, *hot_out;
  int64_t hot, d;
  float* in(int64_t w) const { return w < hot ? hot_in + w * d : win + w * d; }
  float* out(int64_t w) const { return w < hot ? hot_out + w * d : wout + w * d; }
};

// One pair's SGD step: x (an input word's vector, or cbow's mean) predicts `target` against `negative` noise words
// (one equal to the target is skipped). The output rows are updated here; x's gradient is added to `grad_x`.
static inline void pair_step(const Chunk& c, const Rows& rows, const float* x, int64_t target, float* grad_x, Rng& r,
                             LogProduct& terms, double& extra) {
  const int64_t d = c.d;
  for (int64_t s = 0; s <= c.negative; ++s) {
    int64_t t = target;
    if (s > 0) {
      t = c.noise.draw(r);
      if (t == target) continue;
    }
    float* v = rows.out(t);
    // label 1 (the target): loss -log sigmoid(z); label 0 (noise): -log sigmoid(-z); g = (label - sigmoid(z)) alpha
    const float z = s == 0 ? dot(x, v, d) : -dot(x, v, d);
    float g;  // alpha * d(-loss)/dz, before the sign of the label
    if (z < -30.f) { g = 1.f; extra -= z; }
    else if (z > 30.f) { g = 0.f; }
    else { const float e = std::exp(-z); g = e / (1.f + e); terms.times(1.0 + e); }
    g *= s == 0 ? c.alpha : -c.alpha;
    axpy(g, v, grad_x, d);
    axpy(g, x, v, d);
  }
}

// Trains the centers lo..hi of a chunk. Compiled twice, for AVX2+FMA and for any x86-64/other CPU, the right one
// picked at load time, so the cached build stays portable.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=haswell", "default")))
#endif
static double train_piece(const Chunk& c, int64_t lo, int64_t hi, uint64_t seed, int64_t* pairs, float* hot) {
  const int64_t d = c.d;
  const Rows rows{c.win, c.wout, hot, hot + c.hot * d, c.hot, d};
  std::copy(c.win, c.win + c.hot * d, rows.hot_in);
  std::copy(c.wout, c.wout + c.hot * d, rows.hot_out);
  Rng r(seed);
  std::vector<float> buf(2 * d + 64);
  float *mean = buf.data() + 32, *grad = buf.data() + 32 + d;
  LogProduct terms;
  double extra = 0.0;
  int64_t n = 0;
  for (int64_t i = lo; i < hi; ++i) {
    const int64_t b = 1 + r.below(c.window);  // dynamic window: this center's reach
    const int64_t j0 = std::max<int64_t>(0, i - b), j1 = std::min<int64_t>(c.K, i + b + 1);
    const int64_t center = c.word[i], sentence = c.sent[i];
    if (c.cbow) {  // the mean of the context predicts the center; each context word gets the mean's whole gradient
      std::fill(mean, mean + d, 0.f);
      int64_t count = 0;
      for (int64_t j = j0; j < j1; ++j)
        if (j != i && c.sent[j] == sentence) { axpy(1.f, rows.in(c.word[j]), mean, d); ++count; }
      if (count == 0) continue;
      const float inv = 1.f / count;
      for (int64_t k = 0; k < d; ++k) mean[k] *= inv;
      std::fill(grad, grad + d, 0.f);
      pair_step(c, rows, mean, center, grad, r, terms, extra);
      for (int64_t j = j0; j < j1; ++j)
        if (j != i && c.sent[j] == sentence) axpy(1.f, grad, rows.in(c.word[j]), d);
      ++n;
    } else {  // skip-gram as word2vec runs it: each context word's vector predicts the center
      for (int64_t j = j0; j < j1; ++j) {
        if (j == i || c.sent[j] != sentence) continue;
        float* x = rows.in(c.word[j]);
        std::fill(grad, grad + d, 0.f);
        pair_step(c, rows, x, center, grad, r, terms, extra);
        axpy(1.f, grad, x, d);
        ++n;
      }
    }
  }
  *pairs = n;
  return terms.log() + extra;
}

// Trains the tables in place on one chunk of the corpus: ids [n] with their sentence ids [n]; words are kept with
// probability keep_prob[word] (subsampling), then split into `pieces` trained at once (their copies of the first
// `hot_rows` rows merged at the end). A pair's loss is taken before its own step.
std::vector<torch::Tensor> train_chunk(torch::Tensor w_in, torch::Tensor w_out, torch::Tensor ids, torch::Tensor sent,
                                       torch::Tensor keep_prob, torch::Tensor noise_prob, torch::Tensor noise_alias,
                                       int64_t window, int64_t negative, bool cbow, double alpha, int64_t seed,
                                       int64_t pieces, int64_t hot_rows) {
  TORCH_CHECK(w_in.is_contiguous() && w_out.is_contiguous() && w_in.scalar_type() == torch::kFloat32 &&
              w_out.scalar_type() == torch::kFloat32, "train_chunk: contiguous float32 tables");
  TORCH_CHECK(keep_prob.scalar_type() == torch::kFloat32 && noise_prob.scalar_type() == torch::kFloat32 &&
              noise_alias.scalar_type() == torch::kInt32, "train_chunk: table types");
  ids = ids.contiguous(); sent = sent.contiguous(); keep_prob = keep_prob.contiguous();
  const int64_t n = ids.size(0);
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t* sn = sent.data_ptr<int64_t>();
  const float* keep = keep_prob.data_ptr<float>();
  std::vector<int64_t> word, sentence;
  word.reserve(n); sentence.reserve(n);
  Rng r(static_cast<uint64_t>(seed));
  for (int64_t i = 0; i < n; ++i) {
    const float p = keep[id[i]];
    if (p >= 1.f || r.uniform() < p) { word.push_back(id[i]); sentence.push_back(sn[i]); }
  }
  const int64_t K = word.size();
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(pieces, K / 64));
  Chunk c{word.data(), sentence.data(), K, window, negative, w_in.size(1), cbow, static_cast<float>(alpha),
          w_in.data_ptr<float>(), w_out.data_ptr<float>(),
          Alias{noise_prob.data_ptr<float>(), noise_alias.data_ptr<int32_t>(), noise_prob.size(0)},
          P > 1 ? std::min<int64_t>(hot_rows, w_in.size(0)) : 0};
  const int64_t d = c.d, H = c.hot;
  // each piece's copies of the hot rows (both tables), cache-line aligned so that threads never share a line
  const int64_t stride = (2 * H * d + 15) / 16 * 16;
  std::unique_ptr<float[]> hot(new float[P * stride + 16]);  // not zeroed: each piece copies its rows in
  float* hot0 = hot.get() + (16 - (reinterpret_cast<uintptr_t>(hot.get()) / 4) % 16) % 16;
  std::vector<double> loss_of(P, 0.0);
  std::vector<int64_t> pairs_of(P, 0);
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      loss_of[p] = train_piece(c, K * p / P, K * (p + 1) / P, Rng(static_cast<uint64_t>(seed) + 1 + p).next(),
                               &pairs_of[p], hot0 + p * stride);
  });
  // the hot rows: every piece's change added to the shared tables, in piece order (the same sums every time)
  if (H > 0) {
    at::parallel_for(0, 2 * H * d, 4096, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        float* shared = k < H * d ? c.win + k : c.wout + (k - H * d);
        const float base = *shared;
        float change = 0.f;
        for (int64_t p = 0; p < P; ++p) change += hot0[p * stride + k] - base;
        *shared = base + change;
      }
    });
  }
  double loss = 0.0;
  int64_t pairs = 0;
  for (int64_t p = 0; p < P; ++p) { loss += loss_of[p]; pairs += pairs_of[p]; }
  // (mean loss per pair, summed loss, pairs, words kept): what the training loop logs and sums, made here
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  return {torch::scalar_tensor(pairs ? loss / pairs : 0.0, torch::kFloat32), torch::scalar_tensor(loss, f64),
          torch::scalar_tensor(static_cast<double>(pairs), f64), torch::scalar_tensor(K, ids.options())};
}

// n draws from the alias tables (what train_chunk's negatives are): for the tests
torch::Tensor draw_alias(torch::Tensor prob, torch::Tensor alias, int64_t n, int64_t seed) {
  Alias a{prob.data_ptr<float>(), alias.data_ptr<int32_t>(), prob.size(0)};
  Rng r(static_cast<uint64_t>(seed));
  auto out = torch::empty({n}, torch::kInt64);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) o[i] = a.draw(r);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("train_chunk", &train_chunk, "word2vec SGD in place on a chunk of the corpus");
  mod.def("alias_table", &alias_table, "Vose alias tables for weights");
  mod.def("draw_alias", &draw_alias, "draws from alias tables");
}
