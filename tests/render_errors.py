"""Render the user-error catalogue of tests/test_errors.py as docs/errors.md: each case is run for real and its exit
code and message are written to the table.

    python tests/render_errors.py            # writes docs/errors.md (about 4 minutes on 2 busy cores)

Not collected by pytest (no test_ prefix); tests/test_errors.py asserts the same cases.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import test_errors as te  # noqa: E402
from conftest import CLI, FAST  # noqa: E402

SHOWN = {"GOOD": "best.pt", "RUN": "outputs/runs/<run>", "LM": "lm.pt"}


def message(out: str) -> str:
    """The line that says what is wrong (the one error line, or the error inside a usage box)."""
    lines = [ln.strip(" │╭╮╰╯─") for ln in out.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("Usage:", "usage:", "Try ", "[", "Error"))]
    for ln in lines:
        if ln.startswith("error: ") or "error:" in ln:
            return ln.split("error:", 1)[1].strip()
    return " ".join(lines[:2])


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    rows: list[tuple[str, str, str, int, str]] = []
    with tempfile.TemporaryDirectory(prefix="dl-errors-") as tmp:
        root = Path(tmp)
        trained_cwd, lm_cwd = root / "trained", root / "lm"
        trained_cwd.mkdir()
        lm_cwd.mkdir()
        CLI(trained_cwd).ok("train", "trainer.epochs=1", "dataset.n_samples=300", *FAST)
        trained = CLI(trained_cwd).last_run()
        (lm_cwd / "a.txt").write_text(te.LM_TEXT)
        CLI(lm_cwd).ok("train", "model=rnn", "dataset=text", f"dataset.path={lm_cwd / 'a.txt'}",
                       "dataset.block_size=16", "model.hidden_size=16", "trainer.epochs=1", *FAST)
        lm = CLI(lm_cwd).last_run()
        places = {"GOOD": str(trained / "checkpoints" / "best.pt"), "RUN": str(trained),
                  "LM": str(lm / "checkpoints" / "best.pt")}

        def run(case_id: str, group: str, args: list[str], files: dict, env: dict | None = None,
                extra: tuple[str, ...] = ()) -> None:
            cwd = root / case_id
            cwd.mkdir()
            for name, content in files.items():
                (cwd / name).write_bytes(content)
            te._write_ckpts(cwd, trained / "checkpoints" / "best.pt")
            (cwd / "cols.csv").write_text("p,q\n1,2\n")
            (cwd / "other.txt").write_text("xyz " * 200)
            res = CLI(cwd)(*[places.get(a, a.replace("RUN", str(trained))) for a in args], *extra, env=env)
            prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
            shown = " ".join(SHOWN.get(a, a.replace("RUN", SHOWN["RUN"])) for a in args)
            text = message(res.stderr + res.stdout)
            for real, name in ((places["GOOD"], "best.pt"), (places["LM"], "lm.pt"), (str(trained), "<run>"),
                               (str(cwd) + "/", ""), (str(root) + "/", "")):
                text = text.replace(real, name)
            text = re.sub(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_(\w+)", r"<run>", text)
            rows.append((group, case_id, f"{prefix} dl {shown}".strip(), res.returncode, text))
            print(f"{res.returncode}  {case_id}: {text[:100]}", flush=True)

        for case_id, args, _, files in te.TRAIN_CASES:
            run(case_id, "dl train: bad config or data (nothing is written)", ["train", *args], files, extra=tuple(FAST))
        for case_id, args, _ in te.EVAL_CASES:
            group = "dl train trainer.resume" if args[0] == "train" else f"dl {args[0]}: bad checkpoint or option"
            run(case_id, group, args, {})
        for case_id, args, env, _ in te.RUN_CASES:
            run(case_id, "dl train: failures during training (run dir and last good checkpoint kept)",
                ["train", "trainer.epochs=3", "dataset.n_samples=300", *args], {}, env=env, extra=tuple(FAST))
        for case_id, args, _ in te.USAGE_CASES:
            run(case_id, "usage errors (click / argparse print a usage line first)", args, {})

    out = [
        "# What dl says when something is wrong",
        "",
        "Every mistake a user can make ends with exit code 2 and one line on stderr (`error: ...`) that names the bad "
        "value and what is valid; no traceback (`DL_DEBUG=1` shows it) and nothing existing is overwritten. "
        "Usage errors caught by the argument parser (unknown option, wrong option type) also exit 2 but print a "
        "usage line before the error. A run interrupted by Ctrl-C exits 130, by SIGTERM 143 (see README, "
        "\"Resuming and recovering\").",
        "",
        "This page is generated: `python tests/render_errors.py` runs every case of `tests/test_errors.py` and "
        "rewrites it. `best.pt` is a trained MLP checkpoint, `lm.pt` a character LM trained on `the cat sat on the "
        "mat.`, `<run>` a finished one-epoch run; the other files are made by the test (`truncated.pt` is half of "
        "`best.pt`, `evil.pt` a pickle that would run a shell command, `newer.pt` claims format version 99...). "
        "`DL_TEST_...` variables are test-only fault injection hooks.",
        "",
        f"{len(rows)} cases.",
    ]
    for group in dict.fromkeys(r[0] for r in rows):  # sections in order of first appearance
        out += ["", f"## {group}", "", "| case | command | exit | message |", "|---|---|---|---|"]
        out += [f"| {i} | `{cell(c)}` | {code} | {cell(t)} |" for g, i, c, code, t in rows if g == group]
    dest = TESTS.parent / "docs" / "errors.md"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text("\n".join(out) + "\n")
    print(f"wrote {dest} ({len(rows)} cases)")


if __name__ == "__main__":
    main()
