"""word2vec (Mikolov et al. 2013): skip-gram and CBOW with negative sampling and/or hierarchical softmax, as in the
original C tool and gensim.

Two tables: `input` holds the word vectors (word2vec's syn0, what is exported), `output` the vectors words have as
prediction targets (syn1neg, zero at the start); with hierarchical softmax a third, `tree`, the Huffman tree's inner
nodes (syn1).

Two ways to train them:
- on the CPU (model.cpu_kernel, the default), InPlaceTraining: word2vec's own algorithm in C++ (word2vec_kernel.cpp),
  an SGD step per pair written straight into the tables, as the C tool and gensim do;
- elsewhere (GPUs, DDP, other optimizers, clipping), batched gradients: a batch (dlcli/data/corpus.py) is centers
  [n], contexts [n, 2*window] (-1: none) and negatives [G, S]; the loss and its sparse gradient are written out in
  NegativeSampling below, and the loop's optimizer takes the step.
"""

from __future__ import annotations

import heapq
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlcli.base.errors import UserError
from dlcli.models.family import Family

OBJECTIVES = ("skipgram", "cbow")


class Word2Vec(nn.Module):
    def __init__(self, vocab_size: int, vector_size: int, objective: str, negative: int = 5, group: int = 384,
                 cpu_kernel: bool = True, counts: list[int] | None = None):
        """counts (the vocabulary's, sorted by count): given, the model also trains hierarchical softmax over
        their Huffman tree (gensim's hs=1), in a third table, `tree` (syn1)."""
        super().__init__()
        self.objective = objective
        self.use_cpu_kernel = cpu_kernel  # train in place with the C++ op on the CPU (compiled on first use)
        self.negative = negative
        self.group = group  # training pairs per draw of shared negatives
        self.input = nn.Embedding(vocab_size, vector_size, sparse=True)
        self.output = nn.Embedding(vocab_size, vector_size, sparse=True)
        self.hs = counts is not None
        if self.hs:
            points, codes = huffman(counts)
            self.register_buffer("points", points, persistent=False)  # rebuilt from the counts in meta on load
            self.register_buffer("codes", codes, persistent=False)
            self.tree = nn.Embedding(max(vocab_size - 1, 1), vector_size, sparse=True)
        with torch.no_grad():  # gensim's initialisation: word vectors uniform in ±1/size (the C tool's ±0.5/size),
            self.input.weight.uniform_(-1 / vector_size, 1 / vector_size)  # output vectors zero
            self.output.weight.zero_()
            if self.hs:
                self.tree.weight.zero_()

    def forward(self, words: Tensor) -> Tensor:
        """The word vectors of `words`."""
        return self.input(words)

    def loss(self, centers: Tensor, contexts: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
        """(summed loss — negative sampling and/or hierarchical softmax —, number of training pairs: skip-gram
        (center, context) pairs, cbow centers). Only centers with at least one context word train.

        Always in fp32, autocast or not (bf16 by default on a GPU): the tables and their sparse updates are fp32,
        and NegativeSampling's own backward multiplies what its forward saved, which autocast would make bf16."""
        with torch.autocast(device_type=centers.device.type, enabled=False):
            return self._loss(centers, contexts, negatives)

    def _loss(self, centers: Tensor, contexts: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
        if self.objective == "skipgram":  # the center's vector predicts each of its context words
            inputs, targets = centers[:, None], contexts
        else:  # cbow: the mean of the context vectors predicts the center
            inputs, targets = contexts, centers[:, None]
        w = self.input.weight
        has = (contexts >= 0).any(1)
        inputs, targets = inputs[has], targets[has]
        pairs = (targets >= 0).sum()
        if len(inputs) == 0:  # every word of a short chunk was subsampled away
            return w[:0].sum(), pairs
        parts = []  # (not a zero to add to: its dense gradient would make the sparse ones dense)
        if self.negative > 0:
            # a shared negative's update sums over every pair of its group: groups are sized in pairs, not rows
            groups = min(len(negatives), len(inputs), -(-int(pairs) // self.group))
            parts.append(NegativeSampling.apply(w, self.output.weight, inputs, targets, negatives[:groups],
                                                self.negative, self.input.sparse))
        if self.hs:
            parts.append(self.tree_loss(inputs, targets))
        return sum(parts[1:], parts[0]), pairs

    def tree_loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Hierarchical softmax's summed loss (plain autograd, sparse gradients through the embeddings): each pair's
        input vector scored at every inner node on its target's Huffman path, -log sigmoid(±score) by the turn."""
        rows, slots = (targets >= 0).nonzero(as_tuple=True)
        if inputs.shape[1] == 1:
            x = self.input(inputs[rows, 0])
        else:  # cbow: each row's context mean, once per row
            in_mask = inputs >= 0
            counts = in_mask.sum(1)
            means = F.embedding_bag(inputs[in_mask], self.input.weight, torch.cumsum(counts, 0) - counts,
                                    mode="mean", sparse=self.input.sparse)
            x = means[rows]
        words = targets[rows, slots]
        nodes, turns = self.points[words], self.codes[words]                 # [pairs, L]
        scores = torch.einsum("pld,pd->pl", self.tree(nodes.clamp(min=0)), x)
        return F.softplus(scores * (2 * turns - 1).to(scores.dtype))[nodes >= 0].sum()  # turn 0: score up

    def vectors(self) -> Tensor:
        return self.input.weight.detach()


class InPlaceTraining:
    """word2vec's own training on the CPU (word2vec_kernel.cpp): for each chunk of the corpus the C++ op draws the
    subsampling, dynamic windows and negatives (k per pair, from unigram^ns_exponent) and takes an SGD step per pair
    straight in the tables, at the optimizer's current lr (the linear schedule still sets it every step); the chunk's
    pieces train at once on torch's threads, each thread pulling the next piece when done (one thread and one piece
    under trainer.deterministic). No gradient, no
    optimizer.step(): the loop calls step() instead (engine/in_place.py decides when).

    A step is `batch_size` corpus words (dataset.cpu_batch_size; gensim's jobs are 10,000): each pair takes its own
    step inside it, so the size only sets how often the lr moves and the loss is logged, and how often the threads'
    copies of the HOT_ROWS most frequent words are merged (word2vec_kernel.cpp: shared rows written by both cores
    cost more than the merge)."""

    HOT_ROWS = 512  # Gutenberg cbow, 2 cores, 10,240-word steps: 2.2-2.4M (none) -> 2.8-3.0M words/s; 2,048: slower
    # A step's words are cut into this many pieces per thread, handed out as threads get free: a core slowed by
    # another process trains fewer of them instead of holding up the step (pieces stay >= 64 words; one thread: one).
    PIECES_PER_WORKER = 8

    def __init__(self, model: Word2Vec, kernel: Any, words: int, chunk: Callable[[int, int], tuple[Tensor, Tensor]],
                 keep_prob: Tensor, noise_weights: Tensor, window: int, optimizer: torch.optim.Optimizer,
                 deterministic: bool, batch_size: int):
        """words: the train split's length; chunk(a, b): its words a..b-1 and their sentence ids (int64; from memory
        or a memory-mapped file, converted chunk by chunk)."""
        self.model, self.kernel = model, kernel
        self.batch_size = batch_size
        # views of the weights (the op writes in place); without hierarchical softmax an empty tree and paths
        tree = model.tree.weight.detach() if model.hs else model.input.weight.new_zeros(0, model.input.weight.shape[1])
        self.tables = (model.input.weight.detach(), model.output.weight.detach(), tree)
        no_paths = torch.zeros(0, 0, dtype=torch.long)
        self.paths = (model.points, model.codes) if model.hs else (no_paths, no_paths)
        self.words, self.chunk = words, chunk
        self.keep_prob = keep_prob.float().contiguous()
        self.noise_prob, self.noise_alias = kernel.alias_table(noise_weights)
        self.window = window
        self.optimizer = optimizer  # its groups are read every step: a resume's load_state_dict replaces them
        self.group = next(i for i, g in enumerate(optimizer.param_groups)
                          if any(p is model.input.weight for p in g["params"]))
        self.deterministic = deterministic
        self.optimizer_stepped = False

    def batches(self, seed: int) -> Iterator[tuple[Tensor, Tensor, int]]:
        """Chunks of batch_size corpus words in the corpus's order, as the C tool and gensim go (shuffled chunks did
        worse: Gutenberg cbow analogy 0.064 vs 0.068, loss 2.39 vs 2.28, 3 seeds), each with its own seed for the
        op's draws."""
        for s in range(0, self.words, self.batch_size):
            yield *self.chunk(s, s + self.batch_size), (seed * 1_000_003 + s) % 2**62

    def step(self, batch: tuple[Tensor, Tensor, int]) -> tuple[Tensor, dict[str, Tensor]]:
        """Trains on one chunk; (mean loss per pair, summed stats) as EmbeddingTask.step returns them."""
        ids, sent, seed = batch
        if not self.optimizer_stepped:
            # The optimizer's own step, once, with no gradients (it changes nothing): torch's LR scheduler warns when
            # it steps before the optimizer ever has, and the op below takes the optimizer's steps from now on.
            self.optimizer.step()
            self.optimizer_stepped = True
        m = self.model
        workers = 1 if self.deterministic else torch.get_num_threads()
        loss, loss_sum, pairs, _kept = self.kernel.train_chunk(
            *self.tables, ids, sent, self.keep_prob, self.noise_prob, self.noise_alias, *self.paths, self.window,
            m.negative, m.objective == "cbow", float(self.optimizer.param_groups[self.group]["lr"]), seed, workers,
            self.HOT_ROWS, self.PIECES_PER_WORKER)
        return loss, {"loss_sum": loss_sum, "pairs": pairs}


class NegativeSampling(torch.autograd.Function):
    """The negative-sampling loss with its gradient written out (word2vec's own update rule) rather than
    recorded by autograd: a few large tensor ops a step and sparse gradients made straight from the rows used
    (tests/test_word2vec.py checks both gradients against autograd's).

    A row is one center: its input vector x (skip-gram: the center's; cbow: the mean of its context words') is
    scored against its targets (skip-gram: each context word; cbow: the center) and against the S negatives its
    group of rows shares, each weighted k/S per target, a negative equal to a target skipped (as word2vec does):
        loss = Σ_targets -log σ(x·v_t) + (k/S) Σ_targets Σ_s [s ≠ t] -log σ(-x·v_s)
    The negative scores are computed once per row, not once per pair. Skip-gram's center-predicts-context
    pairing (the paper's) sums to the same objective as the C tool's context-predicts-center one, since windows
    are symmetric; cbow gives each context word the full gradient of the mean, as word2vec and gensim do."""

    @staticmethod
    def forward(ctx, w_in: Tensor, w_out: Tensor, inputs: Tensor, targets: Tensor, negatives: Tensor, k: int,
                sparse: bool) -> Tensor:
        rows, (groups, shared), d = len(inputs), negatives.shape, w_in.shape[1]
        per_group = -(-rows // groups)
        padded = groups * per_group  # padding rows have no inputs and no targets: all their weights are 0
        inputs = F.pad(inputs, (0, 0, 0, padded - rows), value=-1)
        targets = F.pad(targets, (0, 0, 0, padded - rows), value=-1)
        ctx.shapes, ctx.sparse = (w_in.shape, w_out.shape), sparse
        if inputs.shape[1] == 1:
            words, counts = inputs[:, 0].clamp(min=0), None
            x = w_in.index_select(0, words)
        else:  # the mean of the row's input words: one fused gather + mean (a padding row is an empty bag: 0)
            in_mask = inputs >= 0
            words, counts = inputs[in_mask], in_mask.sum(1)
            x = F.embedding_bag(words, w_in, torch.cumsum(counts, 0) - counts, mode="mean")
        target_mask = (targets >= 0).to(w_in.dtype)
        out_rows = torch.cat([targets.reshape(-1).clamp(min=0), negatives.reshape(-1)])
        out = w_out.index_select(0, out_rows)
        t = out[:targets.numel()].view(padded, -1, d)                        # [n, targets, d]
        noise = out[targets.numel():].view(groups, shared, d)                 # [G, S, d]
        pos = torch.bmm(t, x[:, :, None])[..., 0]                             # [n, targets]
        neg = torch.bmm(x.view(groups, per_group, d), noise.transpose(1, 2)).view(padded, shared)
        own = (targets.view(groups, per_group, -1, 1) == negatives[:, None, None, :]).sum(2).view(padded, shared)
        neg_weight = (target_mask.sum(1, keepdim=True) - own) * (k / shared)  # [n, S]
        loss = (F.softplus(-pos) * target_mask).sum() + (F.softplus(neg) * neg_weight).sum()
        # d loss / d score for the backward pass: σ(s) - 1 for a target, σ(s) for a negative
        ctx.save_for_backward(x, t, noise, torch.sigmoid(pos).sub_(1).mul_(target_mask),
                              torch.sigmoid(neg).mul_(neg_weight), words, counts, targets, negatives)
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, t, noise, g_pos, g_neg, in_rows, counts, targets, negatives = ctx.saved_tensors
        g_pos, g_neg = g_pos * grad, g_neg * grad
        (padded, d), (groups, shared, _) = x.shape, noise.shape
        g_neg_grouped = g_neg.view(groups, -1, shared)
        grad_x = torch.baddbmm(torch.bmm(g_pos[:, None, :], t).view(groups, -1, d), g_neg_grouped, noise)
        grad_x = grad_x.view(padded, d)
        # the output table's rows: real targets only (padding slots would add zero rows), then the negatives,
        # written straight into one buffer
        slots = (targets >= 0).view(-1).nonzero()[:, 0]
        n_targets = len(slots)
        out_rows = torch.cat([targets.view(-1)[slots], negatives.view(-1)])
        grad_out = x.new_empty(len(out_rows), d)
        torch.mul(g_pos.view(-1)[slots, None], x.index_select(0, slots // targets.shape[1]), out=grad_out[:n_targets])
        torch.bmm(g_neg_grouped.transpose(1, 2), x.view(groups, -1, d), out=grad_out[n_targets:].view(groups, shared, d))
        if counts is None:
            grad_in = grad_x
        else:  # every input word of a row gets the row's full gradient (word2vec; gensim's cbow_mean=1)
            grad_in = torch.repeat_interleave(grad_x, counts, dim=0, output_size=len(in_rows))
        return (rows_gradient(in_rows, grad_in, ctx.shapes[0], ctx.sparse),
                rows_gradient(out_rows, grad_out, ctx.shapes[1], ctx.sparse), None, None, None, None, None)


_KERNEL: Any = None  # the compiled module; False once building it failed


def cpu_kernel() -> Any:
    """word2vec_kernel.cpp, compiled on first use (~25 s, then cached by torch in ~/.cache/torch_extensions);
    None where it cannot be built (no C++ compiler): batched gradients then train the model, slower."""
    global _KERNEL
    if _KERNEL is None:
        try:
            from torch.utils.cpp_extension import load  # slow to import: only when the CPU kernel is built/loaded

            _ninja_on_path()

            # -fopenmp: at::parallel_for spreads a chunk's pieces over torch's threads only when built with OpenMP
            flags = ["-O3", "-fopenmp"] if sys.platform.startswith("linux") else ["-O3"]
            _KERNEL = load(name="dlcli_word2vec", sources=[str(Path(__file__).with_name("word2vec_kernel.cpp"))],
                           extra_cflags=flags, extra_ldflags=flags[1:], verbose=False)
        except Exception as e:  # noqa: BLE001 - any build failure means the same thing: use the tensor ops
            _KERNEL = False
            print(f"word2vec: the C++ CPU trainer could not be built ({type(e).__name__}: {str(e)[:120]}); "
                  "training with batched tensor ops (slower; model.cpu_kernel=false skips the attempt)",
                  file=sys.stderr)
    return _KERNEL or None


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH: put the ninja package's binary there (a venv's bin is not on PATH when its
    `dl` is run without activating it)."""
    try:
        import ninja  # optional: pip's ninja, when present
    except ImportError:
        return
    if not hasattr(ninja, "BIN_DIR"):  # a package named ninja that is not the PyPI one
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + (os.pathsep + path if path else "")


def huffman(counts: list[int]) -> tuple[Tensor, Tensor]:
    """word2vec's Huffman tree over the vocabulary (CreateBinaryTree): (points, codes) [V, L], each word's inner
    nodes from the root down (ids 0..V-2, the root V-2; -1 after the path ends) and the turn taken below each
    (0/1; of two merged nodes the larger gets 1). Frequent words get short paths."""
    n = len(counts)
    heap = [(int(c), i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent, turn = [0] * (2 * n), [0] * (2 * n)
    for node in range(n, 2 * n - 1):
        (c1, a), (c2, b) = heapq.heappop(heap), heapq.heappop(heap)
        parent[a] = parent[b] = node
        turn[b] = 1
        heapq.heappush(heap, (c1 + c2, node))
    root = 2 * n - 2
    paths = []
    for word in range(n):
        nodes, turns, node = [], [], word
        while node != root:
            nodes.append(parent[node] - n)
            turns.append(turn[node])
            node = parent[node]
        paths.append((nodes[::-1], turns[::-1]))
    depth = max(1, max(len(p) for p, _ in paths))
    points = torch.full((n, depth), -1, dtype=torch.long)
    codes = torch.zeros((n, depth), dtype=torch.long)
    for word, (nodes, turns) in enumerate(paths):
        points[word, :len(nodes)] = torch.tensor(nodes, dtype=torch.long)
        codes[word, :len(turns)] = torch.tensor(turns, dtype=torch.long)
    return points, codes


def rows_gradient(rows: Tensor, values: Tensor, shape: torch.Size, sparse: bool) -> Tensor:
    """The gradient of a table whose `rows` got `values` (repeats add up): sparse COO, or dense under DDP."""
    if sparse:
        return torch.sparse_coo_tensor(rows[None], values, shape, is_coalesced=False, check_invariants=False)
    return values.new_zeros(shape).index_add_(0, rows, values)


def build(cfg: Any, meta: dict) -> Word2Vec:
    if cfg.name not in OBJECTIVES:
        raise UserError(f"model.name={cfg.name}: word2vec models are {', '.join(OBJECTIVES)}")
    size = cfg.vector_size
    if not isinstance(size, int) or size < 1:
        raise UserError(f"model.vector_size={size}: a positive integer (word2vec uses 100-300)")
    hs, negative = cfg.get("hs", 0), cfg.negative
    if hs not in (0, 1, True, False):
        raise UserError(f"model.hs={hs}: 1 (hierarchical softmax, as gensim's hs=1) or 0")
    if not hs and negative == 0:
        raise UserError("model.negative=0 with model.hs=0: nothing to train; negative sampling needs "
                        "model.negative >= 1, hierarchical softmax model.hs=1")
    return Word2Vec(int(meta["vocab_size"]), size, str(cfg.name), negative=int(negative),
                    group=int(cfg.negative_group), cpu_kernel=bool(cfg.get("cpu_kernel", True)),
                    counts=[int(c) for c in meta["counts"]] if hs else None)


FAMILIES = {
    "cbow": Family(build, {("embedding", "corpus")},
                   "word2vec CBOW: the context's mean predicts the word (gensim sg=0)"),
    "skipgram": Family(build, {("embedding", "corpus")},
                       "word2vec skip-gram: the word predicts its context (gensim sg=1)"),
}
