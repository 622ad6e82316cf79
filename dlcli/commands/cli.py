"""The `dl` command (Typer). No torch import at module level: `dl --help` must stay fast."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import typer

from dlcli.base.errors import UserError, exit_with
from dlcli.config.listing import ADDED_GROUPS, conf_root, group_options, option_file

app = typer.Typer(
    name="dl",
    help="Train the classic deep-learning models from the command line: MLP, CNN, RNN/LSTM/GRU, seq2seq, "
    "attention, Transformer, word2vec.\n\n"
    "Examples:\n\n"
    "  dl train                                   # MLP on generated spirals, offline\n\n"
    "  dl train model=cnn dataset=mnist           # CNN on MNIST\n\n"
    "  dl train -m optimizer=sgd,adam trainer.epochs=5   # a sweep: one run per combination\n\n"
    "  dl eval outputs/runs/<run>/checkpoints/best.pt\n\n"
    "  dl sample outputs/runs/<run>/checkpoints/best.pt",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _guard(fn: Callable[[], Any]) -> None:
    """Run a command; a UserError becomes one red line and exit 2, Ctrl-C exits 130."""
    try:
        fn()
    except UserError as e:
        exit_with(e)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise typer.Exit(130) from None


def train_help() -> str:
    groups = "; ".join(f"{g} ({' '.join(options)})" for g, options in group_options().items()
                       if g not in ADDED_GROUPS)
    return ("Train a model. Arguments are Hydra overrides: group=option, key=value, -m for a sweep.\n\n"
            f"Config groups: {groups}.\n\n"
            "`dl train --help` lists every option and key; `dl train --cfg job` prints the composed config.")


def complete_overrides(incomplete: str, given: Sequence[str] = ()) -> list[str]:
    """Shell completion for `dl train`, read from the shipped conf/ (no Hydra, no torch: it stays fast): group=option
    pairs (+experiment=, +debug=, +hparams_search= for the groups added with +), and once a group's name is typed, its
    keys as `trainer.epochs=`, for the option chosen on the command line so far (`given`) or else the default."""
    groups = group_options()
    pairs = [f"{'+' if group in ADDED_GROUPS else ''}{group}={option}"
             for group, options in groups.items() for option in options]
    if "=" not in incomplete and ("." in incomplete or incomplete in groups):
        pairs += [f"{key}=" for key in config_keys(given)]
    return sorted(p for p in pairs if p.startswith(incomplete))


def _complete_train(ctx: typer.Context, incomplete: str) -> list[str]:
    """What Typer calls: the words before the one completed are the parsed overrides so far."""
    return complete_overrides(incomplete, [*(ctx.params.get("overrides") or []), *ctx.args])


def config_keys(given: Sequence[str] = ()) -> list[str]:
    """Every settable key (`model.hidden_size`, `loss.name`) of the config the given overrides choose."""
    import yaml  # lazy: only completion reads YAML here

    def load(group: str, option: str) -> dict:
        try:
            return yaml.safe_load(option_file(group, option).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return {}

    def keys(group: str, option: str) -> dict:
        """An option's keys, with those of the options its defaults list takes in (`/dataset/grammar@_here_`)."""
        data, merged = load(group, option), {}
        for entry in data.pop("defaults", None) or []:
            other_group, _, other = str(entry).removesuffix("@_here_").strip("/").partition("/")
            if str(entry).endswith("@_here_") and other:
                merged.update(keys(other_group, other))
        return {**merged, **data}

    root = yaml.safe_load(conf_root().joinpath("config.yaml").read_text(encoding="utf-8"))
    chosen = {k: str(v) for entry in root.pop("defaults") if isinstance(entry, dict) for k, v in entry.items()}
    chosen.update(o.split("=", 1) for o in given if "=" in o and not o.startswith(("+", "~")))
    for entry in load("model", chosen["model"]).get("defaults") or []:  # a model's own optimizer (word2vec: sgd)
        for key, option in (entry.items() if isinstance(entry, dict) else []):
            group = key.split()[-1].strip("/").split("@")[0]
            if not any(o.startswith(f"{group}=") for o in given):
                chosen[group] = str(option)
    chosen["dataset"] = chosen["dataset"].replace("${model}", chosen["model"])
    tree = {k: v for k, v in root.items() if k != "hydra"}  # loss.*
    groups = group_options()
    tree.update({group: keys(group, option) for group, option in chosen.items() if group in groups})
    return _leaves(tree)


def _leaves(node: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False, help=train_help(),
)
def train(
    ctx: typer.Context,
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[OVERRIDES]...", autocompletion=_complete_train,
                                                    show_default=False),
) -> None:
    # its help (train_help) lists the groups and options found in conf/
    def go() -> None:
        from dlcli.commands.hydra_app import train_cli  # lazy: dl --help never imports Hydra or torch

        train_cli([*(overrides or []), *ctx.args])

    _guard(go)


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Checkpoint paths vs key=value overrides (a path that exists wins, even with '=' in its name)."""
    paths, overrides = [], []
    for item in items:
        (overrides if "=" in item and not Path(item).exists() else paths).append(item)
    return paths, overrides


@app.command("eval")
def eval_(
    items: list[str] = typer.Argument(..., metavar="CKPT... [KEY=VALUE...]",
                                      help="Checkpoints (or run dirs) to evaluate, then overrides for their stored "
                                           "config, e.g. device=cpu dataset.path=new.csv"),
    split: str = typer.Option("test", "--split", help="Which split to evaluate: train, val or test."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
) -> None:
    """Evaluate checkpoints on a split and print one row per checkpoint.

    Example: dl eval outputs/runs/<run>/checkpoints/best.pt --split test
    """

    def go() -> None:
        from dlcli.commands.evaluate import evaluate_cli  # lazy: as above

        paths, overrides = _split_overrides(items)
        evaluate_cli(paths, overrides, split=split, as_json=as_json)

    _guard(go)


@app.command()
def sample(
    items: list[str] = typer.Argument(..., metavar="CKPT [KEY=VALUE...]",
                                      help="A checkpoint (or run dir), then overrides for its stored config."),
    input_path: Optional[str] = typer.Option(None, "--input", "-i",
                                             help="Classifiers/regressors: predict for this CSV file (mlp) or these "
                                                  "image files (cnn; comma-separated, or a folder) instead of test "
                                                  "examples. Text classifiers and encoder-decoders: the text to "
                                                  "classify / translate, or a text file of one per line (- or piped "
                                                  "lines: stdin). Word embeddings: a file of one word per line."),
    num: Optional[int] = typer.Option(None, "--num-samples", "-n",
                            help="How many test examples to show (default 10), or texts to generate (default 1)."),
    out: Optional[str] = typer.Option(None, "--out", "-o",
                                      help="Write every prediction, generation, translation or word's neighbours "
                                           "to this .csv or .jsonl (- : standard output), one row per input with "
                                           "its id, as they are made. Image models: a .png is where the picture "
                                           "grid goes (default: <run>/plots/samples.png)."),
    as_json: bool = typer.Option(False, "--json", help="The rows --out writes as JSON Lines, on standard output "
                                                       "(or in --out)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Which test examples are drawn / the sampling seed."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Language models: the text to continue "
                                                                       "(default: a new line)."),
    prompt_file: Optional[str] = typer.Option(None, "--prompt-file", help="Language models: read the prompt "
                                                                          "from a file (with --out/--json: one "
                                                                          "prompt per line, a row for each)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                 help="Language models: tokens to generate (default 300). "
                                                      "Encoder-decoders: the longest output (default: the longest "
                                                      "training target + 5)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t",
                                      help="Language models: <1 sharper, >1 more random, 0 greedy."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Language models: sample from the k likeliest "
                                                              "tokens only (1 = greedy). Classifiers: show the k "
                                                              "likeliest classes (default 3)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Language models: nucleus sampling, the smallest "
                                                                "set of tokens holding this much probability."),
    beam: Optional[int] = typer.Option(None, "--beam",
                                       help="Encoder-decoders: beam search with this many beams (1 = greedy)."),
    length_penalty: Optional[float] = typer.Option(None, "--length-penalty",
                                         help="Encoder-decoders, beam search: GNMT's alpha; 0 ranks by total "
                                              "log-probability, larger favours longer outputs."),
    attention_plot: Optional[str] = typer.Option(None, "--attention-plot",
                                                 help="Encoder-decoders: save the cross-attention heatmap (source x "
                                                      "output tokens; per head for the transformer) to this .png."),
    word: Optional[list[str]] = typer.Option(None, "--word", "-w", help="Word embeddings: the words nearest this "
                                                                        "one (repeat for several)."),
    analogy: Optional[str] = typer.Option(None, "--analogy", help="Word embeddings: the words nearest a vector "
                                                                  "sum, e.g. \"king - man + woman\"."),
    topn: Optional[int] = typer.Option(None, "--topn", help="Word embeddings: how many words to list."),
) -> None:
    """Show what a trained model predicts or generates.

    Classifiers/regressors: test examples (true vs predicted) or your own inputs (text classifiers: texts).
    Language models: text streamed as it is generated. Sequence taggers (copy): input, target and answer.
    With --out FILE (or --json): one row per input, written as it is made, for all but sequence taggers.

    Examples: dl sample outputs/runs/<run>/checkpoints/best.pt -n 16;
    dl sample best.pt --input new_rows.csv;  dl sample <lstm run> --prompt-file prompts.txt --out gen.jsonl;
    dl sample <reviews run> --input "the plot was not dull";  cat texts.txt | dl sample <reviews run> --out preds.csv;
    dl sample <attention run> --input sources.txt --beam 4 --out translations.csv;
    dl sample <lstm run> --prompt "the cat" --temperature 0.8 --top-k 5 -n 3;
    dl sample <skipgram run> --word king --topn 5;  dl sample <skipgram run> --analogy "king - man + woman"
    """

    def go() -> None:
        from dlcli.commands.sample import sample_cli  # lazy: as above

        paths, overrides = _split_overrides(items)
        if len(paths) != 1:
            raise UserError(f"dl sample takes one checkpoint, got {len(paths)}: {' '.join(paths) or '(none)'}")
        given = {"--input": input_path, "--num-samples": num, "--out": out, "--json": as_json or None,
                 "--force": force or None,
                 "--seed": seed, "--prompt": prompt, "--prompt-file": prompt_file, "--max-new-tokens": max_new_tokens,
                 "--temperature": temperature,
                 "--top-k": top_k, "--top-p": top_p, "--beam": beam, "--length-penalty": length_penalty,
                 "--attention-plot": attention_plot, "--word": word or None, "--analogy": analogy, "--topn": topn}
        sample_cli(paths[0], overrides, {k: v for k, v in given.items() if v is not None})

    _guard(go)


@app.command("export")
def export(
    items: list[str] = typer.Argument(..., metavar="CKPT [KEY=VALUE...]",
                                      help="A checkpoint (or run dir), then overrides for its stored config."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", metavar="FORMAT",
                                      help="word2vec (cbow/skipgram: the default), safetensors (the default for every "
                                           "other model), torchscript or onnx (pip install 'dlcli\\[onnx]')."),
    binary: bool = typer.Option(False, "--binary", help="--format word2vec: the binary format instead of text."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Where to write (default: <run>/export/model."
                                                                "safetensors|torchscript|onnx; word2vec: "
                                                                "<run>/vectors.txt, or vectors.bin with --binary)."),
    force: bool = typer.Option(False, "--force", help="Replace --out (and its .json) if it exists."),
) -> None:
    """Write a checkpoint's model as a file other tools load, with its preprocessing beside it in <out>.json.

    safetensors: the state dict (any model; tied weights get a copy under each key). torchscript, onnx: the eval-mode
    graph (dynamic batch and sequence axes), run again right after writing: it must give the model's outputs. The
    .json holds what dl sample does around the model: CSV standardisation and one-hot columns, image size and
    normalisation, vocabularies, class names, regression target scaling. A seq2seq model is exported as
    forward(src, tgt_in) -> (logits, encoder_states): decoding token by token stays in your code (the .json says
    how). cbow/skipgram: word2vec (gensim's KeyedVectors.load_word2vec_format reads it) or safetensors.

    Examples: dl export outputs/runs/<run> --format onnx;  dl export <run> --binary --out vectors.bin
    """

    def go() -> None:
        from dlcli.commands.export import export_cli  # lazy: as above

        paths, overrides = _split_overrides(items)
        if len(paths) != 1:
            raise UserError(f"dl export takes one checkpoint, got {len(paths)}: {' '.join(paths) or '(none)'}")
        export_cli(paths[0], overrides, binary=binary, out=out, force=force, fmt=fmt)

    _guard(go)

@app.command("ls")
def ls(group: Optional[str] = typer.Argument(None, help="A config group (model, dataset, optimizer, ...); "
                                                       "all of them when left out.")) -> None:
    """List every option of the config groups with one line about each, and which models fit which datasets.

    Examples: dl ls;  dl ls model;  dl ls dataset
    """

    def go() -> None:
        from dlcli.commands.ls import ls_cli  # lazy: torch (the model families)

        ls_cli(group)

    _guard(go)


@app.command("cp")
def cp(
    what: str = typer.Argument(..., metavar="GROUP/NAME", help="A shipped config, e.g. model/lstm."),
    dest: Optional[str] = typer.Argument(None, metavar="[DEST]", help="Where to write it (default: "
                                                                       "./conf/GROUP/my_NAME.yaml); a folder: "
                                                                       "DEST/GROUP/my_NAME.yaml."),
    force: bool = typer.Option(False, "--force", help="Replace DEST if it exists."),
) -> None:
    """Copy a shipped config to edit it as your own; its first line says how to train with it.

    Example: dl cp model/lstm (writes conf/model/my_lstm.yaml), then dl train --config-dir conf model=my_lstm
    """

    def go() -> None:
        from dlcli.commands.ls import cp_cli  # lazy: as above

        cp_cli(what, dest, force)

    _guard(go)


runs_app = typer.Typer(rich_markup_mode="rich", pretty_exceptions_enable=False,
                       context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(runs_app, name="runs")
ROOT_OPTION = typer.Option("outputs", "--dir", help="The outputs directory (holding runs/ and sweeps/).")


@runs_app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    root: str = ROOT_OPTION,
    last: Optional[int] = typer.Option(None, "--last", help="Only the N newest runs/sweeps."),
    model: Optional[str] = typer.Option(None, "--model", help="Only runs of this model, e.g. lstm."),
    status: Optional[str] = typer.Option(None, "--status", help="Only runs with this status: completed, failed, "
                                                                "interrupted, running or died."),
    jobs: bool = typer.Option(False, "--jobs", help="List each sweep's jobs under it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per run or sweep job)."),
) -> None:
    """List runs and sweeps, newest first: start, status, model, dataset, overrides, best monitored value,
    duration. A run whose process is gone without saying so (killed, power loss) shows as died.

    Examples: dl runs --last 5;  dl runs --status failed --model lstm;  dl runs show <run>;
    dl runs compare <run> <run>;  dl runs compare outputs/sweeps/<ts>
    """
    if ctx.invoked_subcommand is not None:
        return

    def go() -> None:
        from dlcli.reports.runs import list_runs_cli  # lazy: as above

        list_runs_cli(root, last=last, as_json=as_json, model=model, status=status, jobs=jobs)

    _guard(go)


@runs_app.command("show")
def runs_show(
    run: str = typer.Argument(..., metavar="RUN", help="A run dir (or a file in it, or its name under runs/)."),
    root: str = ROOT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """One run: status, command, where it ran, its config against the defaults, its summary and plots."""

    def go() -> None:
        from dlcli.reports.runs_show import show_run_cli  # lazy: as above

        show_run_cli(run, root, as_json=as_json)

    _guard(go)


@runs_app.command("compare")
def runs_compare(
    items: list[str] = typer.Argument(..., metavar="RUN... | SWEEP_DIR", help="Runs, or a sweep dir (all its jobs)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="The curve to overlay, split/name (default: the "
                                                                "monitored metric, e.g. val/loss)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Where to write the plot (default: <sweep>/"
                                                                "curves.png, or outputs/compare/<time>.png)."),
    root: str = ROOT_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Compare runs side by side: one table (the overrides that differ, best, last val and test metrics) and
    one plot with every run's curve.

    Examples: dl runs compare outputs/sweeps/<ts>;  dl runs compare <run> <run> --metric val/acc
    """

    def go() -> None:
        from dlcli.reports.runs_show import compare_cli  # lazy: as above

        compare_cli(items, root, metric=metric, out=out, as_json=as_json)

    _guard(go)


def main() -> None:
    try:
        app(prog_name="dl")
    finally:
        # The process is ending: a late Ctrl-C (a second one just after the first) must not break into Python's exit,
        # where torch's atexit hooks would print a KeyboardInterrupt traceback after dl's own last line.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    main()
