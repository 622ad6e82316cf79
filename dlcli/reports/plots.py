"""Pictures (matplotlib, Agg backend, PNG): learning curves, confusion matrix, prediction scatter, image grids."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import torch

from dlcli.data.pairs import output_tokens, visible_tokens
from dlcli.engine.lr_find import LRFind
from dlcli.models.decoding import greedy_decode


def pyplot() -> Any:
    import matplotlib  # lazy (matplotlib ~0.5 s): only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    return plt


def save_figure(fig: Any, path: Path, title: str | None = None) -> Path:
    """Title, tight layout, PNG at 110 dpi, figure closed (pyplot keeps every open figure alive)."""
    if title:  # wrapped to the figure's width (a sweep job's dir name lists every override, commas, no spaces)
        fig.suptitle(textwrap.fill(title.replace(",", ", "), int(fig.get_figwidth() * 9)))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def learning_curves(rows: list[dict], path: Path, title: str) -> Path:
    """Loss and the task's main metric per epoch, train vs val."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator  # lazy: matplotlib

    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val")}
    names = [k for k in ("exact", "acc", "r2", "bpc", "seq_acc", "analogy") if any(k in r for r in by_split["val"])][:1]
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(5.5 * (1 + len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], ["loss", *names]):
        for split, style in (("train", "-"), ("val", "-o")):
            pts = [(r["epoch"], r[name]) for r in by_split[split] if r.get(name) is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
        if name == "loss" and all(r.get("loss", 1) > 0 for r in by_split["train"]):
            ax.set_yscale("log")
    return save_figure(fig, path, title)


def overlay_curves(series: dict[str, list[dict]], metric: str, path: Path, title: str) -> Path | None:
    """One line per run: `metric` ("split/name", e.g. val/loss) per epoch, from each run's metrics.jsonl rows.
    series maps a legend label (e.g. the run's differing overrides) to its rows. None when no run logged it."""
    split, _, name = metric.partition("/")
    curves = {label: [(r["epoch"], r[name]) for r in rows if r.get("split") == split and r.get(name) is not None]
              for label, rows in series.items()}
    curves = {label: pts for label, pts in curves.items() if pts}
    if not curves:
        return None
    plt = pyplot()

    from matplotlib.ticker import MaxNLocator  # lazy: matplotlib

    many = len(curves) > 6
    labels = ["\n".join(textwrap.wrap(label, 56)) or "(defaults)" for label in curves]
    legend_lines = sum(label.count("\n") + 1 for label in labels)
    # Tall enough that a legend beside the axes keeps every entry (a sweep can have dozens of jobs).
    fig, ax = plt.subplots(figsize=(11 if many else 8, max(5.0, 1.2 + 0.2 * legend_lines) if many else 5))
    colors = plt.get_cmap("tab20" if len(curves) > 10 else "tab10").colors
    for i, (label, pts) in enumerate(zip(labels, curves.values())):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "-o" if len(pts) <= 40 else "-", markersize=3, color=colors[i % len(colors)], label=label)
    values = [v for pts in curves.values() for _, v in pts]
    if min(values) > 0 and max(values) / min(values) > 10:  # losses that fall by decades read better on a log axis
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, which="both")
    # Long override labels: beside the axes (not over the curves) when there are many of them.
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    return save_figure(fig, path, title)


def grad_norm_plot(rows: list[dict], path: Path, title: str) -> Path | None:
    """Per-layer gradient norms (metrics.jsonl rows with split grad_norm) over training steps, log scale, plus
    the global norm they make together (what trainer.clip_grad_norm compares with)."""
    rows = [r for r in rows if r.get("split") == "grad_norm"]
    names = list(dict.fromkeys(k for r in rows for k in r if k not in ("step", "epoch", "split")))
    if len(rows) < 2 or not names:  # one logged step is no picture of training (lower trainer.log_every_n_steps)
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10 if len(names) > 6 else 8, 5))
    colors = plt.get_cmap("tab20" if len(names) > 10 else "tab10").colors
    steps = [r["step"] for r in rows]
    for i, name in enumerate(names):
        pts = [(r["step"], r[name]) for r in rows if isinstance(r.get(name), (int, float)) and r[name] > 0]
        if pts:
            ax.plot(*zip(*pts), color=colors[i % len(colors)], label=name, linewidth=1.2,
                    marker="o" if len(pts) <= 30 else None, markersize=3)
    total = [(r["step"], sum(r[n] ** 2 for n in names if isinstance(r.get(n), (int, float))) ** 0.5) for r in rows]
    total = [(s, v) for s, v in total if v > 0]
    if total:
        ax.plot(*zip(*total), "k--", linewidth=1.2, label="all layers (global norm)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_xlim(min(steps), max(steps))
    ax.set_ylabel("gradient norm (before clipping)")
    ax.grid(alpha=0.3, which="both")
    if len(names) > 6:  # beside the axes, not over the lines
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    return save_figure(fig, path, title)


def confusion_matrix(counts: torch.Tensor, class_names: list[str], path: Path, title: str) -> Path:
    plt = pyplot()
    k = len(class_names)
    size = min(4 + 0.45 * k, 14)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(counts.numpy(), cmap="Blues")
    tilt = k > 6 and max(len(c) for c in class_names) > 2  # long names side by side would overlap
    ax.set_xticks(range(k), class_names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        thresh = counts.max().item() / 2
        for i in range(k):
            for j in range(k):
                v = int(counts[i, j])
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > thresh else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    acc = counts.diag().sum().item() / max(counts.sum().item(), 1)
    return save_figure(fig, path, f"{title} (accuracy {acc:.4f})")  # wrapped to the figure's width


def prediction_scatter(true: torch.Tensor, pred: torch.Tensor, path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    t, p = true.flatten().numpy(), pred.flatten().numpy()
    ax.scatter(t, p, s=6, alpha=0.6)
    lo, hi = min(t.min(), p.min()), max(t.max(), p.max())
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="perfect")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def image_grid(images: torch.Tensor, titles: list[str], colors: list[str], path: Path, title: str) -> Path:
    """images: (N, C, H, W) already scaled to [0, 1]."""
    plt = pyplot()
    n = len(images)
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, text, color in zip(axes.flat, images, titles, colors):
        img = img.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(text, fontsize=8, color=color)
    return save_figure(fig, path, title)


@torch.no_grad()
def predict_split(model: torch.nn.Module, task: Any, split: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, predictions) on the CPU: class indices for classifiers, values for regressors."""
    model.eval()
    ys, ps = [], []
    for x, y in task.batches(split, batch_size):
        out = task.predict(model, x)
        ps.append((out.argmax(-1) if task.kind == "classify" else out).cpu())
        ys.append(y.cpu())
    return torch.cat(ys), torch.cat(ps)


def grad_through_time(model: torch.nn.Module, task: Any, batch_size: int = 64) -> torch.Tensor | None:
    """||dLoss/d state_t|| per time step t (mean over a val batch) for one-direction recurrent models; the
    state is h_t, plus the cell c_t for an LSTM (where its long-term memory lives).

    How much of the error signal reaches each step through the recurrence: it fades towards early steps when
    gradients vanish (a plain RNN on a long sequence) and stays up when gates carry it (LSTM, GRU)."""
    if not hasattr(model, "unrolled") or getattr(model, "bidirectional", False) or \
            getattr(model, "pad_id", None) is not None:  # texts: rows of many lengths, each read to its own end
        return None
    outs: list[torch.Tensor] = []
    carried: list[tuple[torch.Tensor, ...]] = []

    class Unrolled(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, step_outs, step_states = model.unrolled(x)
            outs.extend(step_outs)
            carried.extend(step_states)
            return model.readout(out)

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            loss, _ = task.step(Unrolled(), next(task.batches("val", batch_size)))
            if not loss.requires_grad:  # nothing trainable upstream (echo-state): still a graph from h_t
                return None
            loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    norms = []
    for out, parts in zip(outs, carried):
        grads = [p.grad[-1] if p.grad is not None else torch.zeros_like(p[-1]) for p in parts]  # top layer
        if out.grad is not None:
            grads[0] = grads[0] + out.grad[:, 0]  # h_t also reaches the loss through the readout
        norms.append(torch.cat(grads, -1).float().norm(dim=-1).mean())
    return torch.stack(norms).cpu()


def grad_time_plot(norms: torch.Tensor, path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(norms) + 1), norms.numpy(), marker="o" if len(norms) <= 60 else None, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dLoss / d state_t||  (mean over a val batch)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def plot_run(run_dir: Path, rows: list[dict], task: Any, model: torch.nn.Module, runtime: Any,
             batch_size: int) -> list[Path]:
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    name = run_dir.name
    paths = [learning_curves(rows, out / "curves.png", name)]
    grads = grad_norm_plot(rows, out / "grad_norms.png", f"gradient norm per layer: {name}")
    if grads is not None:
        paths.append(grads)
    norms = grad_through_time(model, task)
    if norms is not None and norms.sum() > 0:
        paths.append(grad_time_plot(norms, out / "grad_time.png", f"gradient reaching each step: {name}"))

        (out / "grad_time.json").write_text(json.dumps([float(v) for v in norms]))
    if task.kind == "seq2seq":
        return paths + seq2seq_plots(run_dir, task, model, out, name)
    if task.kind == "embedding":
        return paths + [pca_plot(model.vectors(), task.meta["vocab"], out / "embeddings.png",
                                 f"word vectors, 2-D PCA of the most frequent words: {name}")]
    if task.kind not in ("classify", "regress"):
        return paths
    if task.kind == "classify":
        counts = task.confusion(model, "test", batch_size).long()
        paths.append(confusion_matrix(counts, task.meta["class_names"], out / "confusion.png",
                                      f"test confusion matrix: {name}"))
    elif task.kind == "regress":
        true, pred = predict_split(model, task, "test", batch_size)
        paths.append(prediction_scatter(true, pred, out / "predictions.png", f"test predictions: {name}"))
    return paths


def attention_heatmaps(examples: list[tuple[list[str], list[str], torch.Tensor]], path: Path, title: str) -> Path:
    """One heatmap per example (and per head): output tokens down, source tokens across, weight = colour."""
    plt = pyplot()
    heads = max(w.shape[0] if w.dim() == 3 else 1 for _, _, w in examples)
    widest = max(max(len(s), len(o)) for s, o, _ in examples)
    cell = min(0.32, 6.0 / max(widest, 1))
    fig, axes = plt.subplots(len(examples), heads, squeeze=False,
                             figsize=(max(3.0, 1.2 + cell * widest) * heads,
                                      max(2.5, 1.0 + cell * widest) * len(examples)))
    for row, (src, outs, w) in zip(axes, examples):
        w = w if w.dim() == 3 else w[None]
        for h, ax in enumerate(row):
            if h >= w.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(w[h, :len(outs), :len(src)].float().numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(len(src)), src, fontsize=7, rotation=90 if max(map(len, src), default=1) > 1 else 0)
            ax.set_yticks(range(len(outs)), outs, fontsize=7)
            ax.set_xlabel("source")
            ax.set_ylabel("output")
            if w.shape[0] > 1:
                ax.set_title(f"head {h + 1}", fontsize=8)
    return save_figure(fig, path, title)


def exact_by_length_plot(by_length: dict[str, dict], path: Path, title: str) -> Path:
    plt = pyplot()
    lengths = [int(k) for k in by_length]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(lengths, [v["exact"] for v in by_length.values()], color="tab:blue")
    ax.set_xlabel("source length (tokens)")
    ax.set_ylabel("exact match (test)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def seq2seq_plots(run_dir: Path, task: Any, model: torch.nn.Module, out: Path, name: str) -> list[Path]:
    """Exact match by source length (from summary.json) and attention heatmaps for 4 validation examples."""
    paths = []
    by_length = json.loads((run_dir / "summary.json").read_text()).get("exact_by_source_length")
    if by_length:
        paths.append(exact_by_length_plot(by_length, out / "exact_by_length.png", f"exact match by length: {name}"))
    src = task.splits["val"][0][:4]
    ids, attn = greedy_decode(model, src, task.max_output_len())
    if attn is not None:
        examples = []
        for i in range(len(src)):
            source = visible_tokens(src[i].tolist(), task.meta["src_vocab"])
            output = output_tokens(ids[i].tolist(), task.meta["tgt_vocab"])
            examples.append((source, output, attn[i].cpu()))
        paths.append(attention_heatmaps(examples, out / "attention.png", f"attention (val examples): {name}"))
    return paths


def pca_plot(vectors: torch.Tensor, vocab: list[str], path: Path, title: str, n: int = 150) -> Path:
    """2-D PCA map of the n most frequent words (the vocabulary is sorted by frequency)."""
    plt = pyplot()
    v = vectors[:n].detach().float().cpu()
    v = v - v.mean(0)
    _, _, vt = torch.linalg.svd(v, full_matrices=False)
    xy = (v @ vt[:2].T).numpy()
    fig, ax = plt.subplots(figsize=(9, 8))
    ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.5)
    for (x, y), w in zip(xy, vocab[:n]):
        ax.annotate(w, (x, y), fontsize=7, alpha=0.85)
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    return save_figure(fig, path)


def lr_find_plot(found: LRFind, current_lr: float, path: Path, title: str) -> Path:
    """trainer.lr_find: training loss against the lr (log axis), each step's and smoothed, with the lowest smoothed
    loss, the suggestion and the lr the config had marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(found.lrs, found.losses, color="tab:blue", alpha=0.35, linewidth=1, label="loss (each step)")
    ax.plot(found.lrs, found.smoothed, color="tab:blue", linewidth=2, label="smoothed")
    if found.lowest is not None:
        ax.plot([found.lrs[found.lowest]], [found.smoothed[found.lowest]], "o", color="tab:red", markersize=6,
                label=f"lowest smoothed loss, lr {found.lrs[found.lowest]:.1e}")
    if found.suggested_lr is not None:
        ax.axvline(found.suggested_lr, color="tab:red", linestyle="--", linewidth=1.2,
                   label=f"suggested {found.suggested_lr:.1e} ({found.method})")
    if found.min_lr <= current_lr <= found.max_lr:
        ax.axvline(current_lr, color="gray", linestyle=":", linewidth=1.2, label=f"optimizer.lr {current_lr:.1e}")
    if found.losses:  # the start level and a bit: the last steps of a diverging sweep would flatten the rest
        low, start = min(found.losses), found.smoothed[0]
        top = min(max(found.losses), start + max(start - low, abs(start) * 0.1))
        if top > low:
            ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path, title)
