// word2vec on the CPU, as the original C tool and gensim train it: pair after pair, each SGD step written straight
// into the tables (dlcli/models/word2vec.py, InPlaceTraining; the batched gradient of the same loss, used on GPUs and
// under DDP, is NegativeSampling there). Compiled on first use by torch.utils.cpp_extension (model.cpu_kernel=false:
// never). A chunk is split into pieces trained at once on torch's threads (Hogwild, as both tools do), more pieces
// than threads, each thread pulling the next piece when done with one (a core slowed by another process then takes
// fewer pieces instead of stalling the step); subsampling, dynamic windows and negatives are drawn here from a seed per
// piece, so a piece's draws do not depend on timing.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <atomic>
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

// A table as one piece of a chunk sees it: rows lo..hi-1 in the piece's own copy, the rest shared. The copied rows are
// the ones every thread writes all the time (the most frequent words — vocabularies are sorted by count — and the
// Huffman tree's top nodes); their changes are added up after the chunk. Left shared, they bounce between the cores'
// caches on every write (Gutenberg cbow on 2 cores: 2.3M -> 2.9M words/s with 512 of them).
struct Table {
  float *shared, *copy;
  int64_t lo, hi, d;
  float* row(int64_t w) const { return w >= lo && w < hi ? copy + (w - lo) * d : shared + w * d; }
  int64_t copied() const { return (hi - lo) * d; }
};

struct Chunk {
  const int64_t *word, *sent;  // the kept words of the chunk and their sentence ids
  int64_t K, window, negative, d;
  bool cbow;
  float alpha;
  Table in, out, tree;         // syn0, syn1neg, syn1 (hierarchical softmax's inner nodes; empty without it)
  const int64_t *points, *codes;  // [V, L]: each word's path from the root (-1 after its end) and its 0/1 turns
  int64_t L;
  Alias noise;
};

// One logistic step: x·v should come out large (`positive`) or small. v moves, x's gradient is added to grad_x, the
// loss -log sigmoid(±x·v) is added to terms/extra.
static inline void logistic_step(const float* x, float* v, bool positive, float alpha, int64_t d, float* grad_x,
                                 LogProduct& terms, double& extra) {
  const float z = positive ? dot(x, v, d) : -dot(x, v, d);
  float g;  // d(-loss)/dz = sigmoid(-z)
  if (z < -30.f) { g = 1.f; extra -= z; }
  else if (z > 30.f) { g = 0.f; }
  else { const float e = std::exp(-z); g = e / (1.f + e); terms.times(1.0 + e); }
  g *= positive ? alpha : -alpha;
  axpy(g, v, grad_x, d);
  axpy(g, x, v, d);
}

constexpr int64_t kPrefetchNegatives = 32;  // negatives drawn ahead of a pair's steps (more are drawn as they go)

static inline void prefetch_row(const float* row, int64_t d) {
  for (int64_t k = 0; k < d; k += 16) __builtin_prefetch(row + k, 1, 3);  // 16 floats: a 64-byte cache line
}

// One pair's SGD step: x (an input word's vector, or cbow's mean) predicts `target` — down its Huffman path (code 0:
// the score should be high, 1: low) and/or against `negative` noise words (one equal to the target is skipped).
static inline void pair_step(const Chunk& c, const Table& out, const Table& tree, const float* x, int64_t target,
                             float* grad_x, Rng& r, LogProduct& terms, double& extra) {
  for (int64_t l = 0; l < c.L; ++l) {
    const int64_t node = c.points[target * c.L + l];
    if (node < 0) break;
    logistic_step(x, tree.row(node), c.codes[target * c.L + l] == 0, c.alpha, c.d, grad_x, terms, extra);
  }
  if (c.negative <= 0) return;
  // The negatives are drawn first (the same draws, in the same order) and their rows prefetched: rows of random words
  // miss the caches, and asking for all of them at once overlaps those misses instead of waiting for each in turn.
  int64_t drawn[kPrefetchNegatives];
  const int64_t ahead = std::min<int64_t>(c.negative, kPrefetchNegatives);
  for (int64_t s = 0; s < ahead; ++s) {
    drawn[s] = c.noise.draw(r);
    prefetch_row(out.row(drawn[s]), c.d);
  }
  logistic_step(x, out.row(target), true, c.alpha, c.d, grad_x, terms, extra);
  for (int64_t s = 0; s < c.negative; ++s) {
    const int64_t t = s < ahead ? drawn[s] : c.noise.draw(r);
    if (t == target) continue;
    logistic_step(x, out.row(t), false, c.alpha, c.d, grad_x, terms, extra);
  }
}

// A worker's view of the tables: its own copy of their shared rows in `copies`, taken from the tables now.
static Chunk with_copies(const Chunk& c, float* copies) {
  Chunk mine = c;
  mine.in.copy = copies;
  mine.out.copy = mine.in.copy + mine.in.copied();
  mine.tree.copy = mine.out.copy + mine.out.copied();
  for (const Table* t : {&mine.in, &mine.out, &mine.tree})
    std::copy(t->shared + t->lo * c.d, t->shared + t->hi * c.d, t->copy);
  return mine;
}

// Trains the centers lo..hi of a chunk (c: a worker's view, with_copies). Compiled twice, for AVX2+FMA and for any
// x86-64/other CPU, the right one picked at load time, so the cached build stays portable.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=haswell", "default")))
#endif
static double train_piece(const Chunk& c, int64_t lo, int64_t hi, uint64_t seed, int64_t* pairs) {
  const int64_t d = c.d;
  const Table in = c.in, out = c.out, tree = c.tree;
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
        if (j != i && c.sent[j] == sentence) { axpy(1.f, in.row(c.word[j]), mean, d); ++count; }
      if (count == 0) continue;
      const float inv = 1.f / count;
      for (int64_t k = 0; k < d; ++k) mean[k] *= inv;
      std::fill(grad, grad + d, 0.f);
      pair_step(c, out, tree, mean, center, grad, r, terms, extra);
      for (int64_t j = j0; j < j1; ++j)
        if (j != i && c.sent[j] == sentence) axpy(1.f, grad, in.row(c.word[j]), d);
      ++n;
    } else {  // skip-gram as word2vec runs it: each context word's vector predicts the center
      for (int64_t j = j0; j < j1; ++j) {
        if (j == i || c.sent[j] != sentence) continue;
        float* x = in.row(c.word[j]);
        std::fill(grad, grad + d, 0.f);
        pair_step(c, out, tree, x, center, grad, r, terms, extra);
        axpy(1.f, grad, x, d);
        ++n;
      }
    }
  }
  *pairs = n;
  return terms.log() + extra;
}

// Trains the tables in place on one chunk of the corpus: ids [n] with their sentence ids [n]; words are kept with
// probability keep_prob[word] (subsampling), then trained at once by `workers` threads, each with its own copy of the
// first `hot_rows` rows of syn0 and syn1neg and the last of syn1 (the tree's top), added up at the end. The kept words
// are cut into workers x `split` pieces (none under 64 words; one piece for one worker): worker w trains piece w, then
// pulls the next untrained one until none is left. split = 1: a piece per worker, each its own copy. tree [V-1, d],
// points and codes [V, L]: hierarchical softmax (L = 0: none); negative = 0: no negative sampling. A pair's loss is
// taken before its own step.
std::vector<torch::Tensor> train_chunk(torch::Tensor w_in, torch::Tensor w_out, torch::Tensor tree, torch::Tensor ids,
                                       torch::Tensor sent, torch::Tensor keep_prob, torch::Tensor noise_prob,
                                       torch::Tensor noise_alias, torch::Tensor points, torch::Tensor codes,
                                       int64_t window, int64_t negative, bool cbow, double alpha, int64_t seed,
                                       int64_t workers, int64_t hot_rows, int64_t split) {
  for (const auto* t : {&w_in, &w_out, &tree})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == torch::kFloat32, "train_chunk: contiguous float32 tables");
  TORCH_CHECK(keep_prob.scalar_type() == torch::kFloat32 && noise_prob.scalar_type() == torch::kFloat32 &&
              noise_alias.scalar_type() == torch::kInt32, "train_chunk: table types");
  TORCH_CHECK(points.sizes() == codes.sizes() && points.scalar_type() == torch::kInt64 &&
              codes.scalar_type() == torch::kInt64, "train_chunk: points and codes");
  ids = ids.contiguous(); sent = sent.contiguous(); keep_prob = keep_prob.contiguous();
  points = points.contiguous(); codes = codes.contiguous();
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
  const int64_t K = word.size(), d = w_in.size(1);
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(workers, K / 64));
  const int64_t P = T > 1 ? std::max<int64_t>(T, std::min<int64_t>(T * std::max<int64_t>(split, 1), K / 64)) : 1;
  const int64_t H = T > 1 ? hot_rows : 0;  // one worker: nothing is shared, nothing copied
  const int64_t V = w_in.size(0), nodes = tree.size(0), L = points.dim() == 2 ? points.size(1) : 0;
  Chunk c{word.data(), sentence.data(), K, window, negative, d, cbow, static_cast<float>(alpha),
          Table{w_in.data_ptr<float>(), nullptr, 0, std::min(H, V), d},
          Table{w_out.data_ptr<float>(), nullptr, 0, std::min(H, V), d},
          Table{tree.data_ptr<float>(), nullptr, std::max<int64_t>(0, nodes - H), nodes, d},
          L ? points.data_ptr<int64_t>() : nullptr, L ? codes.data_ptr<int64_t>() : nullptr, L,
          Alias{noise_prob.data_ptr<float>(), noise_alias.data_ptr<int32_t>(), noise_prob.size(0)}};
  // each worker's copies, cache-line aligned so that threads never share a line
  const int64_t copied = c.in.copied() + c.out.copied() + c.tree.copied();
  const int64_t stride = (copied + 15) / 16 * 16;
  std::unique_ptr<float[]> copies(new float[T * stride + 16]);  // not zeroed: each worker copies its rows in
  float* copies0 = copies.get() + (16 - (reinterpret_cast<uintptr_t>(copies.get()) / 4) % 16) % 16;
  std::vector<double> loss_of(P, 0.0);
  std::vector<int64_t> pairs_of(P, 0);
  std::atomic<int64_t> next_piece{T};  // pieces 0..T-1 go to their own workers first
  at::parallel_for(0, T, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) {
      const Chunk mine = with_copies(c, copies0 + w * stride);
      for (int64_t p = w; p < P; p = next_piece.fetch_add(1))
        loss_of[p] = train_piece(mine, K * p / P, K * (p + 1) / P, Rng(static_cast<uint64_t>(seed) + 1 + p).next(),
                                 &pairs_of[p]);
    }
  });
  // every worker's change to the copied rows added to the shared tables, in worker order (the same sums every time)
  if (T > 1 && copied > 0) {
    float* starts[3] = {c.in.shared, c.out.shared, c.tree.shared + c.tree.lo * d};
    const int64_t ends[3] = {c.in.copied(), c.in.copied() + c.out.copied(), copied};
    at::parallel_for(0, copied, 4096, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int t = k < ends[0] ? 0 : k < ends[1] ? 1 : 2;
        float* shared = starts[t] + (k - (t ? ends[t - 1] : 0));
        const float base = *shared;
        float change = 0.f;
        for (int64_t w = 0; w < T; ++w) change += copies0[w * stride + k] - base;
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
  mod.def("train_chunk", &train_chunk, "word2vec SGD in place on a chunk of the corpus", py::arg("w_in"),
          py::arg("w_out"), py::arg("tree"), py::arg("ids"), py::arg("sent"), py::arg("keep_prob"),
          py::arg("noise_prob"), py::arg("noise_alias"), py::arg("points"), py::arg("codes"), py::arg("window"),
          py::arg("negative"), py::arg("cbow"), py::arg("alpha"), py::arg("seed"), py::arg("workers"),
          py::arg("hot_rows"), py::arg("split") = 1);
  mod.def("alias_table", &alias_table, "Vose alias tables for weights");
  mod.def("draw_alias", &draw_alias, "draws from alias tables");
}
