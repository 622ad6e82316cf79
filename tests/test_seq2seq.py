"""Encoder-decoders (seq2seq, attention): tasks, masks, decoding, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA_DIR, FAST, summary
from omegaconf import OmegaConf

from dlcli.base.tokens import BOS, EOS, PAD
from dlcli.data import build_task
from dlcli.models import build_model
from dlcli.models.decoding import beam_search, greedy_decode

LOSS = OmegaConf.create({"name": "auto", "label_smoothing": 0.0})
TINY = {"n_train": 200, "n_val": 40, "n_test": 40}


def dataset_cfg(name: str, **extra) -> OmegaConf:
    from importlib.resources import files

    cfg = OmegaConf.create(files("dlcli.conf").joinpath(f"dataset/{name}.yaml").read_text())
    if "root" in cfg:
        cfg.root = str(DATA_DIR)
    for k, v in extra.items():
        cfg[k] = v
    return cfg


def model_cfg(name: str, **extra) -> OmegaConf:
    from importlib.resources import files

    cfg = OmegaConf.create(files("dlcli.conf").joinpath(f"model/{name}.yaml").read_text())
    cfg.hidden_size, cfg.embedding_size, cfg.dropout = 32, 16, 0.0
    for k, v in extra.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def tiny_task(name: str = "reverse", **extra):
    return build_task(dataset_cfg(name, **{**(TINY if name not in ("eng_fra",) else {}), **extra}), LOSS,
                      torch.device("cpu"))


@pytest.mark.parametrize("model", ["seq2seq", "attention"])
@pytest.mark.parametrize("dataset", ["reverse", "sort", "addition", "dates"])
def test_each_model_lowers_its_loss_on_each_task(model: str, dataset: str) -> None:
    torch.manual_seed(0)
    task = tiny_task(dataset)
    net = build_model(model_cfg(model), task.meta)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    batch = next(task.batches("train", 64))
    first = None
    for _ in range(30):
        loss, _ = task.step(net, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.8 * first, (model, dataset, first, loss.item())


def test_eng_fra_filters_normalises_and_splits_by_source() -> None:
    if not (DATA_DIR / "eng-fra" / "eng-fra.txt").is_file():
        pytest.skip("eng-fra not in DL_DATA_DIR")
    task = tiny_task("eng_fra")
    meta = task.meta
    assert meta["src_level"] == meta["tgt_level"] == "word" and meta["src_vocab"][:4] == ["<pad>", "<bos>", "<eos>",
                                                                                           "<unk>"]
    sources = {s: {t for t in map(task.source_text, task.splits[s][0].tolist()) if "<unk>" not in t}
               for s in ("train", "val", "test")}  # (rare words read as <unk> can make two sources look alike)
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["val"]
    assert all(s.split()[0] in ("i", "he", "she", "you", "we", "they") for s in list(sources["test"])[:50])
    assert max(len(s.split()) for s in sources["train"]) <= 10
    assert 5000 < task.size("train") < 20000
    flipped = tiny_task("eng_fra", direction="fra-eng")
    assert flipped.meta["src_vocab"] != meta["src_vocab"]


def test_source_padding_does_not_change_outputs() -> None:
    """Padded source positions are masked: more padding changes nothing (packed encoder), and garbage in the
    encoder states at padded positions changes nothing (attention mask)."""
    torch.manual_seed(0)
    task = tiny_task("reverse")
    for packed in (True, False):
        net = build_model(model_cfg("attention", packed=packed), task.meta).eval()
        src, tgt = (t[:8] for t in task.splits["val"])
        tgt_in = tgt[:, :-1]
        padded = torch.cat([src, torch.full((len(src), 3), PAD)], 1)
        if packed:  # the packed encoder never reads the pads
            assert torch.allclose(net(padded, tgt_in), net(src, tgt_in), atol=1e-5)
        memory = net.encode(padded)
        pads = ~memory.mask[:, :, None]
        garbage = memory._replace(outputs=memory.outputs.masked_fill(pads, 123.0),
                                  keys=memory.keys.masked_fill(pads, -77.0))
        logits, _, weights = net.decode_step(tgt_in, memory)
        assert torch.allclose(net.decode_step(tgt_in, garbage)[0], logits, atol=1e-5)
        assert torch.all(weights.masked_select(~memory.mask[:, None].expand_as(weights)) == 0)
        assert torch.allclose(weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-5)


def test_step_by_step_decoding_matches_teacher_forcing() -> None:
    torch.manual_seed(0)
    task = tiny_task("dates")
    for name in ("seq2seq", "attention"):
        net = build_model(model_cfg(name, cell="lstm", num_layers=2), task.meta).eval()
        src, tgt = (t[:4] for t in task.splits["val"])
        full = net(src, tgt[:, :-1])
        memory, state, steps = net.encode(src), None, []
        for t in range(tgt.shape[1] - 1):
            logits, state, _ = net.decode_step(tgt[:, t:t + 1], memory, state)
            steps.append(logits)
        assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def sequence_logprob(net, src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """log p(out | src) up to and including EOS."""
    tgt_in = torch.cat([torch.full((len(src), 1), BOS), out[:, :-1]], 1)
    logp = net(src, tgt_in).log_softmax(-1).gather(-1, out[:, :, None]).squeeze(-1)
    keep = torch.cumsum((out == EOS).long(), 1) - (out == EOS).long() == 0
    return (logp * keep).sum(1)


def test_beam_size_1_is_greedy_and_wider_beams_score_at_least_as_well() -> None:
    torch.manual_seed(0)
    task = tiny_task("reverse")
    net = build_model(model_cfg("attention"), task.meta).eval()
    src = task.splits["val"][0][:16]
    greedy, greedy_attn = greedy_decode(net, src, 20)
    beam1, beam1_attn = beam_search(net, src, 1, 20)
    width = min(greedy.shape[1], beam1.shape[1])
    assert torch.equal(greedy[:, :width], beam1[:, :width])
    assert torch.allclose(greedy_attn[:, :width], beam1_attn[:, :width])
    beam4, _ = beam_search(net, src, 4, 20, alpha=0.0)  # alpha 0: ranked by log-probability alone
    with torch.no_grad():
        g, b = sequence_logprob(net, src, greedy), sequence_logprob(net, src, beam4)
    assert torch.all(b >= g - 1e-4)
    assert (b > g + 1e-4).any()  # an untrained model: the wider beam finds likelier outputs somewhere


def test_teacher_forcing_schedule_and_sampling_path() -> None:
    torch.manual_seed(0)
    task = tiny_task("reverse")
    net = build_model(model_cfg("seq2seq", teacher_forcing=1.0, teacher_forcing_end=0.0), task.meta)
    net.set_epoch(1, 5)
    assert net.tf_ratio == 1.0
    net.set_epoch(5, 5)
    assert net.tf_ratio == 0.0
    src, tgt = next(task.batches("train", 8))
    loss, _ = task.step(net.train(), (src, tgt))  # the step-by-step path, own predictions fed back
    loss.backward()
    assert torch.isfinite(loss) and net.head.weight.grad is not None


# ------------------------------------------------------------------------------------------------ end to end (CLI)
def test_attention_end_to_end_train_eval_sample(dl, tmp_path) -> None:
    args = ["model=attention", "model.hidden_size=64", "dataset.n_train=1500", "dataset.n_val=100",
            "dataset.n_test=100", "dataset.max_len=8", "trainer.epochs=3", "trainer.summary=false"]
    res = dl.ok("train", *args)
    run = dl.last_run()
    s = summary(run)
    assert "test/exact" in s["test"] and "test/bleu" in s["test"]
    by_len = s["exact_by_source_length"]
    assert set(by_len) == {str(n) for n in range(3, 9)} and sum(v["examples"] for v in by_len.values()) == 100
    assert (run / "plots" / "attention.png").stat().st_size > 5000
    assert (run / "plots" / "exact_by_length.png").is_file()
    assert "val/exact" in res.stdout

    ev = json.loads(dl.ok("eval", str(run / "checkpoints" / "best.pt"), "--json").stdout)
    assert ev["test/exact"] == pytest.approx(s["test"]["test/exact"])

    out = dl.ok("sample", str(run), "--input", "abcdef", "--beam", "3", "--attention-plot", "att.png")
    assert len(out.stdout.strip().splitlines()) == 1 and set(out.stdout.strip()) <= set("abcdefghijkl")
    assert (dl.cwd / "att.png").stat().st_size > 2000
    table = dl.ok("sample", str(run), "-n", "4")
    assert "exactly right" in table.stdout and "source" in table.stdout

    for bad, msg in ((["--input", "abz"], "never saw: 'z'"), (["--input", " "], "--input is empty"),
                     (["--beam", "0", "--input", "ab"], "--beam 0"),
                     (["--input", "ab", "--attention-plot", "x.jpg"], "name a .png file")):
        res = dl("sample", str(run), *bad)
        assert res.returncode == 2 and msg in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_seq2seq_sample_reads_stdin_and_refuses_attention_plot(dl) -> None:
    import subprocess
    import sys

    dl.ok("train", "model=seq2seq", "model.hidden_size=32", "dataset=addition", "dataset.n_train=300",
          "dataset.n_val=30", "dataset.n_test=30", "trainer.epochs=1", *FAST)
    run = dl.last_run()
    res = subprocess.run([sys.executable, "-m", "dlcli", "sample", str(run)], input="12+3\n4+5\n", text=True,
                         capture_output=True, cwd=dl.cwd, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 2
    res = dl("sample", str(run), "--input", "1+2", "--attention-plot", "a.png")
    assert res.returncode == 2 and "no attention to draw" in res.stderr


def test_user_errors_for_seq2seq_configs(dl, tmp_path) -> None:
    cases = [
        (["model=attention", "dataset=mnist"], "does not fit dataset=mnist"),
        (["model=lstm", "dataset=reverse"], "does not fit dataset=reverse"),
        (["model=attention", "model.attention.type=cosine"], "model.attention.type=cosine: choose one of"),
        (["model=seq2seq", "model.cell=rnn"], "model.cell=rnn: choose one of: gru, lstm"),
        (["model=seq2seq", "model.teacher_forcing=1.5"], "model.teacher_forcing=1.5"),
        (["model=attention", "dataset.min_len=5", "dataset.max_len=2"], "need 1 <= min <= max"),
        (["model=attention", "dataset=pairs"], "dataset=pairs needs dataset.path"),
    ]
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("hello\tbonjour\n" * 12 + "no tab here\n")
    cases.append((["model=attention", "dataset=pairs", f"dataset.path={bad_tsv}"], "line 13: expected source<TAB>"))
    for args, msg in cases:
        res = dl("train", *args, *FAST)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert msg in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    assert not (dl.cwd / "outputs" / "runs").exists() or not dl.runs()


def test_pairs_file_trains_at_word_level(dl, tmp_path) -> None:
    tsv = tmp_path / "pairs.tsv"
    words = ["one", "two", "three", "four", "five"]
    tsv.write_text("".join(f"{a} {b}\t{b} {a}\n" for a in words for b in words) * 2)
    dl.ok("train", "model=attention", "dataset=pairs", f"dataset.path={tsv}", "model.hidden_size=32",
          "trainer.epochs=2", *FAST)
    s = summary(dl.last_run())
    assert s["dataset"] == "pairs" and s["test"]["test/loss"] < 3.0
