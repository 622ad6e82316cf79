"""Transformer: masks hide what they must (padding, the future), the KV cache reproduces the full forward pass,
every switch trains, and the CLI trains, samples and evaluates it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA_DIR, FAST, REPO, read_jsonl, summary
from omegaconf import OmegaConf

from dlcli.base.errors import UserError
from dlcli.data import build_task
from dlcli.models.transformer import build

CFG = OmegaConf.load(REPO / "conf" / "model" / "transformer.yaml")
VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>", *"abcdefghijkl"]
S2S_META = {"kind": "seq2seq", "src_vocab": VOCAB, "tgt_vocab": VOCAB, "src_vocab_size": len(VOCAB),
            "tgt_vocab_size": len(VOCAB), "pad": 0, "bos": 1, "eos": 2, "unk": 3, "max_src_len": 12,
            "max_tgt_len": 10}
LM_META = {"kind": "lm", "vocab_size": 20, "block_size": 16, "vocab": [chr(97 + i) for i in range(20)],
           "level": "char"}
TINY_MODEL = ["model.d_model=32", "model.heads=2", "model.ff_size=64"]
TINY = [*TINY_MODEL, *FAST]


def model_of(meta: dict, **over) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = OmegaConf.merge(CFG, {"d_model": 32, "heads": 4, "ff_size": 64, "dropout": 0.0, **over})
    return build(cfg, meta).eval()


def source_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    src = torch.randint(4, len(VOCAB), (3, 9), generator=gen)
    src[0, 5:] = 0  # right padding
    src[1, 8:] = 0
    tgt = torch.randint(4, len(VOCAB), (3, 7), generator=gen)
    tgt[:, 0] = 1
    return src, tgt


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padded_source_positions_change_nothing(norm):
    m = model_of(S2S_META, norm=norm)
    src, tgt = source_batch()
    ref = m(src, tgt)
    # more padding columns, and different content at the padded positions (noise added to their embeddings)
    longer = torch.cat([src, torch.zeros(3, 4, dtype=torch.long)], 1)
    pads = (longer == 0)[..., None]
    hook = m.src_embed.register_forward_hook(  # (shared with the target side: only touch the source call)
        lambda mod, inp, out: out + 5.0 * torch.randn_like(out) * pads if inp[0] is longer else out)
    try:
        out = m(longer, tgt)
    finally:
        hook.remove()
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_future_target_positions_change_nothing_and_causal_false_lets_them():
    src, tgt = source_batch()
    changed = tgt.clone()
    changed[:, 4:] = (changed[:, 4:] + 3) % len(VOCAB)
    for meta, args, other in ((S2S_META, (src, tgt), (src, changed)), (LM_META, (tgt,), (changed,))):
        m = model_of(meta)
        a, b = m(*args), m(*other)
        assert torch.allclose(a[:, :4], b[:, :4], atol=1e-5)
        assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-4
    cheat = model_of(LM_META, causal=False)
    assert (cheat(tgt)[:, :4] - cheat(changed)[:, :4]).abs().max() > 1e-4


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "none"])
def test_incremental_decoding_equals_the_full_forward_pass(positional):
    m = model_of(S2S_META, positional=positional, norm="post")
    src, tgt = source_batch()
    full = m(src, tgt)
    memory = m.encode(src)
    logits, state, attn = m.decode_step(tgt[:, :3], memory)  # a multi-token first call
    outs = [logits]
    for t in range(3, tgt.shape[1]):
        logits, state, attn = m.decode_step(tgt[:, t:t + 1], memory, state)
        outs.append(logits)
        assert attn.shape == (3, 4, 1, src.shape[1])
        assert torch.allclose(attn.sum(-1), torch.ones(3, 4, 1), atol=1e-5)
        assert attn.masked_select((src == 0)[:, None, None, :]).abs().max() == 0
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)


def test_reorder_state_follows_the_beams():
    m = model_of(S2S_META)
    src, tgt = source_batch()
    src = src[:1].expand(3, -1)  # three beams of one sentence: identical memory rows
    tgt = tgt.clone()
    memory = m.encode(src)
    _, state, _ = m.decode_step(tgt[:, :4], memory)
    order = torch.tensor([2, 2, 0])
    state = m.reorder_state(state, order)
    logits, _, _ = m.decode_step(tgt[order, 4:5], memory, state)
    assert torch.allclose(logits[:, 0], m(src, tgt[order, :5])[:, 4], atol=1e-5)


def test_lm_step_matches_forward_and_slides_past_the_window():
    m = model_of(LM_META, positional="learned", max_len=16)
    x = torch.randint(0, 20, (2, 40), generator=torch.Generator().manual_seed(0))
    full = m(x[:, :16])
    logits, state = m.step(x[:, :5])
    outs = [logits]
    for t in range(5, 16):
        logits, state = m.step(x[:, t:t + 1], state)
        outs.append(logits)
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
    for t in range(16, 40):  # beyond the 16 learned positions: the context slides, positions stay in the table
        logits, state = m.step(x[:, t:t + 1], state)
        context = state["tokens"]
        assert context.shape[1] <= 16 and torch.equal(context, x[:, t + 1 - context.shape[1]:t + 1])
        assert torch.allclose(logits[:, -1], m(context)[:, -1], atol=1e-5)


SWITCHES = [{}, {"norm": "post"}, {"residual": False}, {"positional": "learned"}, {"positional": "none"},
            {"activation": "relu"}, {"tie_embeddings": True}, {"layers": 1, "heads": 1}]


@pytest.mark.parametrize("over", SWITCHES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_every_switch_learns_both_kinds_in_a_few_steps(over):
    src, tgt = source_batch()
    target = src.flip(1)[:, :7].clamp(min=1)  # any fixed mapping will do: the loss must fall
    for meta, args, gold in ((S2S_META, (src, tgt), target), (LM_META, (tgt[:, :-1],), tgt[:, 1:])):
        m = model_of(meta, **over).train()
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
        losses = []
        for _ in range(15):
            loss = torch.nn.functional.cross_entropy(m(*args).flatten(0, 1), gold[:, :args[-1].shape[1]].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.9 * losses[0], (over, meta["kind"], losses)


def test_tied_and_shared_embeddings():
    m = model_of(S2S_META, tie_embeddings=True)
    assert m.head.weight is m.tgt_embed.tokens.weight and m.src_embed is m.tgt_embed
    other = model_of({**S2S_META, "tgt_vocab": VOCAB[:-1], "tgt_vocab_size": len(VOCAB) - 1}, tie_embeddings=True)
    assert other.src_embed is not other.tgt_embed and other.head.weight is other.tgt_embed.tokens.weight
    untied = model_of(LM_META, tie_embeddings=False)
    assert untied.head.weight is not untied.embed.tokens.weight


@pytest.mark.parametrize("over, message", [
    ({"heads": 5}, "model.heads=5: model.d_model=32 must split evenly into heads; choose one of: 1, 2, 4, 8, 16, 32"),
    ({"norm": "mid"}, "model.norm=mid: no such option; choose one of: post, pre"),
    ({"positional": "rotary"}, "model.positional=rotary: no such option; choose one of: learned, none, sinusoidal"),
    ({"activation": "tanh"}, "model.activation=tanh: no such option; choose one of: gelu, relu"),
    ({"dropout": 1.0}, "model.dropout=1.0: must be in [0, 1)"),
    ({"positional": "learned", "max_len": 8}, "model.max_len=8: the learned position table must cover"),
])
def test_user_errors_name_the_key(over, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        model_of(LM_META, **over)


def test_noam_schedule_warms_up_then_decays_as_inverse_sqrt():
    from dlcli.engine.optim import build_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched, interval = build_scheduler(OmegaConf.create({"name": "noam", "warmup": 10}), opt, 1000, "min")
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert interval == "step" and lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0) == lrs[9]
    assert lrs[39] == pytest.approx((10 / 40) ** 0.5)


def test_cli_trains_samples_and_evaluates_a_transformer_lm(dl):
    dl.ok("train", "model=transformer", "dataset=grammar", "dataset.n_sentences=400", "dataset.block_size=32",
          "trainer.epochs=3", "trainer.batch_size=16", "trainer.summary=true", "trainer.plots=false", *TINY_MODEL)
    run = dl.last_run()
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, rows
    s = summary(run)
    assert {"test/bpc", "test/valid", "test/sentences"} <= set(s["test"])
    # generation runs well past the 32-token training window (the context slides)
    res = dl.ok("sample", str(run), "--prompt", "the ", "--max-new-tokens", "120", "--seed", "1")
    assert res.stdout.startswith("the ") and len(res.stdout) > 100 and "grammatical:" in res.stderr
    again = dl.ok("sample", str(run), "--prompt", "the ", "--max-new-tokens", "120", "--seed", "1")
    assert again.stdout == res.stdout
    out = json.loads(dl.ok("eval", str(run), "--json").stdout)
    assert out["test/loss"] == pytest.approx(s["test"]["test/loss"], rel=1e-5)


def test_cli_user_error_is_one_line(dl):
    res = dl("train", "model=transformer", "dataset=grammar", "model.heads=3", *FAST)
    assert res.returncode == 2 and "model.heads=3" in res.stderr and "Traceback" not in res.stderr
    assert not dl.runs()


TASKS = {"reverse": {"n_train": 200, "n_val": 40, "n_test": 40}, "sort": {"n_train": 200, "n_val": 40, "n_test": 40},
         "addition": {"n_train": 200, "n_val": 40, "n_test": 40}, "dates": {"n_train": 200, "n_val": 40, "n_test": 40},
         "grammar": {"n_sentences": 200, "block_size": 32}, "shakespeare": {"block_size": 32}}


@pytest.mark.parametrize("dataset", list(TASKS))
def test_lowers_its_loss_on_each_task(dataset):
    cfg = OmegaConf.load(REPO / "conf" / "dataset" / f"{dataset}.yaml")
    if "root" in cfg:
        if not (DATA_DIR / "tinyshakespeare").is_dir():
            pytest.skip(f"tiny-shakespeare not under {DATA_DIR}")
        cfg.root = str(DATA_DIR)
    cfg = OmegaConf.merge(cfg, TASKS[dataset])
    task = build_task(cfg, OmegaConf.create({"name": "auto", "label_smoothing": 0.1}), torch.device("cpu"))
    m = model_of(task.meta).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    batch = next(task.batches("train", 32))
    losses = []
    for _ in range(20):
        loss, _ = task.step(m, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_cli_seq2seq_train_eval_sample_with_beams_and_attention(dl):
    dl.ok("train", "model=transformer", "dataset=reverse", "dataset.n_train=300", "dataset.n_val=30",
          "dataset.n_test=30", "dataset.max_len=5", "trainer.epochs=2", "trainer.batch_size=32", "trainer.summary=true",
          "scheduler=noam", "loss.label_smoothing=0.1", "model.dropout=0.1")
    run = dl.last_run()
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]
    assert rows[-1]["loss"] < rows[0]["loss"], rows
    s = summary(run)
    assert {"test/exact", "test/bleu"} <= set(s["test"])
    assert (run / "plots" / "attention.png").stat().st_size > 5000
    ev = json.loads(dl.ok("eval", str(run / "checkpoints" / "best.pt"), "--json").stdout)
    assert ev["test/exact"] == pytest.approx(s["test"]["test/exact"])
    out = dl.ok("sample", str(run), "--input", "abcd", "--beam", "3", "--attention-plot", "att.png")
    assert set(out.stdout.strip()) <= set("abcdefghijkl") and (dl.cwd / "att.png").stat().st_size > 2000
