"""Pictures (matplotlib, Agg backend, PNG): learning curves, confusion matrix, prediction scatter, image grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(rows: list[dict], path: Path, title: str) -> Path:
    """Loss and the task's main metric per epoch, train vs val."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val")}
    names = [k for k in ("acc", "r2", "bpc", "seq_acc") if any(k in r for r in by_split["val"])][:1]
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
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(counts: torch.Tensor, class_names: list[str], path: Path, title: str) -> Path:
    plt = _plt()
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
    ax.set_title(f"{title}  (accuracy {acc:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def prediction_scatter(true: torch.Tensor, pred: torch.Tensor, path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    t, p = true.flatten().numpy(), pred.flatten().numpy()
    ax.scatter(t, p, s=6, alpha=0.6)
    lo, hi = min(t.min(), p.min()), max(t.max(), p.max())
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="perfect")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_grid(images: torch.Tensor, titles: list[str], colors: list[str], path: Path, title: str) -> Path:
    """images: (N, C, H, W) already scaled to [0, 1]."""
    plt = _plt()
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
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    if not hasattr(model, "unrolled") or getattr(model, "bidirectional", False):
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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(norms) + 1), norms.numpy(), marker="o" if len(norms) <= 60 else None, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dLoss / d state_t||  (mean over a val batch)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: Path, rows: list[dict], task: Any, model: torch.nn.Module, runtime: Any,
             batch_size: int) -> list[Path]:
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    name = run_dir.name
    paths = [learning_curves(rows, out / "curves.png", name)]
    norms = grad_through_time(model, task)
    if norms is not None and norms.sum() > 0:
        paths.append(grad_time_plot(norms, out / "grad_time.png", f"gradient reaching each step: {name}"))
    if task.kind not in ("classify", "regress"):
        return paths
    true, pred = predict_split(model, task, "test", batch_size)
    if task.kind == "classify":
        k = task.meta["num_classes"]
        counts = torch.bincount(true * k + pred, minlength=k * k).reshape(k, k)
        paths.append(confusion_matrix(counts, task.meta["class_names"], out / "confusion.png",
                                      f"test confusion matrix: {name}"))
    elif task.kind == "regress":
        paths.append(prediction_scatter(true, pred, out / "predictions.png", f"test predictions: {name}"))
    return paths
