"""Classification and regression tasks, and the generated offline datasets for them (spirals, sine, shapes)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlcli.base.errors import UserError, choices
from dlcli.base.task import Task, split_indices

SHAPES = ("circle", "square", "triangle", "cross")


def label_smoothing_for(loss_cfg: Any, kind: str) -> float:
    """Class targets take cross-entropy only; returns its label smoothing."""
    name = loss_cfg.get("name", "auto")
    if name not in ("auto", "cross_entropy"):
        raise UserError(f"loss.name={name} does not fit a {kind} task; use cross_entropy (or auto)")
    return float(loss_cfg.get("label_smoothing", 0.0))


def confusion_counts(y: Tensor, pred: Tensor, k: int) -> Tensor:
    """(k, k) counts, true class down, predicted across; on the device, no host sync (bincount would sync on CUDA)."""
    counts = torch.zeros(k * k, device=y.device)
    return counts.index_add_(0, y * k + pred, torch.ones(len(y), device=y.device)).view(k, k)


def per_class(confusion: Tensor, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class (a class never predicted has precision 0)."""
    c = confusion.double().cpu()
    tp, predicted, true = c.diag(), c.sum(0), c.sum(1)
    out = {}
    for i, name in enumerate(class_names):
        out[name] = {"precision": float(tp[i] / predicted[i]) if predicted[i] else 0.0,
                     "recall": float(tp[i] / true[i]) if true[i] else 0.0,
                     "f1": float(2 * tp[i] / (predicted[i] + true[i])) if predicted[i] + true[i] else 0.0,
                     "support": int(true[i])}
    return out


def macro_f1(confusion: Tensor) -> float:
    """The mean of the classes' F1 = 2TP / (predicted + true), over the classes the split holds or the model
    predicted (as scikit-learn's f1_score(average="macro") counts them)."""
    c = confusion.double().cpu()
    seen = c.sum(0) + c.sum(1)
    present = seen > 0
    return float((2 * c.diag()[present] / seen[present]).mean()) if present.any() else float("nan")


class ClassifyTask(Task):
    """x -> class index. Metrics: loss, acc, top5 when there are more than 5 classes, and on evaluation macro_f1
    (the mean of the classes' F1); summary.json adds precision, recall and F1 per class (breakdown)."""

    kind = "classify"
    eval_only_stats = ("macro_f1",)  # from the confusion counts evaluation steps add

    def __init__(self, splits: dict, meta: dict, loss_cfg: Any):
        super().__init__(splits, meta)
        self.label_smoothing = label_smoothing_for(loss_cfg, "classification")

    def step(self, model: nn.Module, batch: tuple) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        logits = model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        # stats from detached tensors (no no_grad context: a few us a step that a 1 ms MLP step notices);
        # torch.full: torch.tensor(x, device=cuda) would be a blocking copy every step
        scores = logits.detach()
        pred = scores.argmax(-1)
        n = torch.full((), float(len(y)), device=y.device)
        stats = {"loss": loss.detach() * n, "correct": (pred == y).sum().float(), "n": n}
        if scores.shape[-1] > 5:
            stats["top5"] = (scores.topk(5, dim=-1).indices == y[:, None]).any(-1).sum().float()
        if not model.training:  # evaluation (val, test, dl eval): the confusion matrix, for macro-F1
            stats["confusion"] = confusion_counts(y, pred, scores.shape[-1])
        return loss, stats

    def summarize(self, stats: dict[str, Tensor]) -> dict[str, float]:
        confusion = stats.get("confusion")
        s = {k: v.item() for k, v in stats.items() if k != "confusion"}
        out = {"loss": s["loss"] / s["n"], "acc": s["correct"] / s["n"]}
        if confusion is not None:
            out["macro_f1"] = macro_f1(confusion)
        if "top5" in s:
            out["top5"] = s["top5"] / s["n"]
        return out

    @torch.no_grad()
    def predict(self, model: nn.Module, x: Tensor) -> Tensor:
        """Class probabilities."""
        return model(x).float().softmax(-1)

    @torch.no_grad()
    def confusion(self, model: nn.Module, split: str, batch_size: int = 1024) -> Tensor:
        """The split's (k, k) confusion counts on the CPU, true class down, predicted across."""
        was_training = model.training
        model.eval()
        k = int(self.meta["num_classes"])
        total = torch.zeros(k, k, device=self.device)
        for x, y in self.batches(split, batch_size):
            total += confusion_counts(y, model(x).argmax(-1), k)
        model.train(was_training)
        return total.cpu()

    def breakdown(self, model: nn.Module, split: str = "test") -> dict[str, Any]:
        """Precision, recall, F1 and support per class on val and test (summary.json's per_class)."""
        names = list(self.meta.get("class_names") or range(int(self.meta["num_classes"])))
        return {"per_class": {s: per_class(self.confusion(model, s), [str(n) for n in names])
                              for s in ("val", "test")}}


class RegressTask(Task):
    """x -> real vector. The model learns standardised targets; metrics are in the data's own units."""

    kind = "regress"
    LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}

    def __init__(self, splits: dict, meta: dict, loss_cfg: Any):
        super().__init__(splits, meta)
        name = loss_cfg.get("name", "auto")
        name = "mse" if name == "auto" else name
        if name not in self.LOSSES:
            raise UserError(f"loss.name={name} does not fit a regression task{choices(name, [*self.LOSSES, 'auto'])}")
        self.loss_fn = self.LOSSES[name]
        self.mean = torch.tensor(meta.get("target_mean", [0.0] * meta["output_size"]))
        self.std = torch.tensor(meta.get("target_std", [1.0] * meta["output_size"]))

    def to(self, device: torch.device) -> Task:
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return super().to(device)

    def step(self, model: nn.Module, batch: tuple) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        pred = model(x).float()
        loss = self.loss_fn(pred, (y - self.mean) / self.std)
        with torch.no_grad():
            err = pred * self.std + self.mean - y
            n = torch.full((), float(len(y)), device=y.device)
            stats = {"loss": loss.detach() * n, "n": n, "sse": (err ** 2).sum(), "sae": err.abs().sum(),
                     "y_sum": y.sum(0), "y_sq": (y ** 2).sum(0)}
        return loss, stats

    def summarize(self, stats: dict[str, Tensor]) -> dict[str, float]:
        n = stats["n"].item()
        elems = n * stats["y_sum"].numel()
        sst = (stats["y_sq"] - stats["y_sum"] ** 2 / n).sum().item()
        sse = stats["sse"].item()
        return {"loss": stats["loss"].item() / n, "mse": sse / elems, "mae": stats["sae"].item() / elems,
                "r2": 1.0 - sse / sst if sst > 0 else float("nan")}

    @torch.no_grad()
    def predict(self, model: nn.Module, x: Tensor) -> Tensor:
        return model(x).float() * self.std.to(x.device) + self.mean.to(x.device)


def make_task(kind: str, x: Tensor, y: Tensor, idx: tuple[Tensor, Tensor, Tensor], meta: dict, loss_cfg: Any) -> Task:
    splits = {name: (x[i], y[i]) for name, i in zip(("train", "val", "test"), idx)}
    if kind == "classify":
        return ClassifyTask(splits, meta, loss_cfg)
    return RegressTask(splits, meta, loss_cfg)


def _split(cfg: Any, n: int) -> tuple[Tensor, Tensor, Tensor]:
    return split_indices(n, float(cfg.val_fraction), float(cfg.test_fraction), int(cfg.seed))


def spirals(cfg: Any, loss_cfg: Any) -> Task:
    """K interleaved spiral arms in the plane; the angle carries Gaussian noise (`noise`, radians)."""
    k, n = int(cfg.n_classes), int(cfg.n_samples)
    if k < 2:
        raise UserError(f"dataset.n_classes={k}: spirals need at least 2 arms")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    label = torch.arange(n) % k
    r = torch.rand(n, generator=gen) * 0.9 + 0.1
    theta = r * float(cfg.turns) * 2 * math.pi + label * 2 * math.pi / k
    theta = theta + torch.randn(n, generator=gen) * float(cfg.noise)
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1)
    meta = {"input_shape": [2], "num_classes": k, "class_names": [f"arm {i}" for i in range(k)],
            "features": ["x", "y"]}
    return make_task("classify", x, label, _split(cfg, n), meta, loss_cfg)


def sine(cfg: Any, loss_cfg: Any) -> Task:
    """y = sin(frequency * x) + noise, a 1-D regression."""
    n = int(cfg.n_samples)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    x = torch.rand(n, 1, generator=gen) * (float(cfg.high) - float(cfg.low)) + float(cfg.low)
    y = torch.sin(float(cfg.frequency) * x) + torch.randn(n, 1, generator=gen) * float(cfg.noise)
    meta = {"input_shape": [1], "output_size": 1, "features": ["x"], "targets": ["y"]}
    return make_task("regress", x, y, _split(cfg, n), meta, loss_cfg)


def shapes(cfg: Any, loss_cfg: Any) -> Task:
    """Filled shapes (circle, square, triangle, cross) at random places and sizes on a noisy dark canvas."""
    names = list(cfg.classes)
    bad = [c for c in names if c not in SHAPES]
    if bad or len(names) < 2:
        raise UserError(f"dataset.classes={names}: need 2+ of: {', '.join(SHAPES)}")
    n, size = int(cfg.n_samples), int(cfg.image_size)
    if size < 12:
        raise UserError(f"dataset.image_size={size}: use 12 pixels or more")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    label = torch.arange(n) % len(names)
    kind = torch.tensor([SHAPES.index(names[i]) for i in label.tolist()])
    r = (torch.rand(n, generator=gen) * (size / 3 - size / 6) + size / 6)[:, None, None]
    cx = (torch.rand(n, generator=gen) * (size - 2 * r[:, 0, 0] - 2) + r[:, 0, 0] + 1)[:, None, None]
    cy = (torch.rand(n, generator=gen) * (size - 2 * r[:, 0, 0] - 2) + r[:, 0, 0] + 1)[:, None, None]
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    dx, dy = (xx - cx).abs(), yy - cy
    masks = torch.stack([
        dx ** 2 + dy ** 2 <= r ** 2,                                                    # circle
        (dx <= 0.8 * r) & (dy.abs() <= 0.8 * r),                                        # square
        (dy >= -r) & (dy <= 0.8 * r) & (dx <= (dy + r) * 0.55),                         # triangle, apex up
        ((dx <= r / 3) & (dy.abs() <= r)) | ((dy.abs() <= r / 3) & (dx <= r)),          # cross
    ], 1)
    mask = masks[torch.arange(n), kind].float()
    brightness = (torch.rand(n, generator=gen) * 0.5 + 0.5)[:, None, None]
    img = mask * brightness + torch.randn(n, size, size, generator=gen) * float(cfg.noise)
    x = img.clamp(0, 1)[:, None]
    meta = {"input_shape": [1, size, size], "num_classes": len(names), "class_names": names,
            "pixel_mean": 0.0, "pixel_std": 1.0}
    return make_task("classify", x, label, _split(cfg, n), meta, loss_cfg)


# The datasets this file builds, by the `name` of their conf/dataset/NAME.yaml: builder(cfg.dataset, cfg.loss)
DATASETS = {"spirals": spirals, "sine": sine, "shapes": shapes}
