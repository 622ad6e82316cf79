"""`dl ls [GROUP]`: every option of every config group with its one line, and which models fit which datasets.
`dl cp GROUP/NAME [DEST]`: a shipped config copied out to edit (./conf/GROUP/my_NAME.yaml)."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from dlcli.base.console import make_console
from dlcli.base.errors import UserError, choices
from dlcli.config.check import datasets_for
from dlcli.config.listing import ADDED_GROUPS, about, dataset_shapes, group_options, option_file
from dlcli.models import families


def ls_cli(group: str | None = None) -> None:
    groups = group_options()
    if group is not None and group not in groups:
        raise UserError(f"dl ls {group}: no such config group{choices(group, groups)}")
    console = make_console()
    for name in [group] if group else groups:
        console.print(_table(name, groups[name]))


def _table(group: str, options: list[str]) -> Table:
    table = Table(title=f"{group}  ({'+' if group in ADDED_GROUPS else ''}{group}=OPTION)", title_justify="left")
    table.add_column("option", style="bold")
    if group == "model":
        table.add_column("what it is")
        table.add_column("datasets it fits")
        for name in options:
            family = families().get(name)
            table.add_row(name, escape(family.about if family else about(group, name)),
                          ", ".join(datasets_for(name)) if family else "")
    elif group == "dataset":
        shapes = dataset_shapes()
        fits = {d: [m for m, f in families().items() if shape in f.fits] for d, shape in shapes.items()}
        table.add_column("task")
        table.add_column("what it is")
        table.add_column("models")
        for name in options:
            kind, inputs = shapes.get(name, ("?", "?"))
            table.add_row(name, f"{kind} on {inputs}", escape(about(group, name)), ", ".join(fits.get(name, [])))
    else:
        table.add_column("what it is")
        for name in options:
            table.add_row(name, escape(about(group, name)))
    return table


def cp_cli(what: str, dest: str | None = None, force: bool = False) -> Path:
    """Copy conf/GROUP/NAME.yaml to ./conf/GROUP/my_NAME.yaml (or DEST: a .yaml file, or a folder to put it in)."""
    group, _, name = what.partition("/")
    groups = group_options()
    if group not in groups or not name:
        raise UserError(f"dl cp {what}: name a shipped config as GROUP/NAME, e.g. model/lstm (groups: "
                        f"{', '.join(groups)})")
    if name not in groups[group]:
        raise UserError(f"dl cp {what}: no such {group}{choices(name, groups[group])}")
    # my_NAME by default: a user dir's file of a shipped option's own name would not replace it (Hydra looks in
    # dl's configs first), so a copy under the same name would be silently ignored
    target = Path(dest) if dest else Path("conf") / group / f"my_{name}.yaml"
    if target.is_dir() or (dest and not target.suffix):
        target = target / group / f"my_{name}.yaml"
    if target.exists() and not force:
        raise UserError(f"dl cp: {target} exists; add --force to replace it, or name another DEST (nothing was "
                        "written)")
    conf_dir = target.parent.parent
    choice = target.stem
    if choice in groups[group]:
        raise UserError(f"dl cp: {target.name} has the name of a shipped {group}, which dl would use instead of it; "
                        f"name the copy otherwise, e.g. {target.with_name(f'my_{choice}.yaml')}")
    how = f"# Copied from dl's {group}/{name}.yaml. Use it with: dl train --config-dir {conf_dir} {group}={choice}\n"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(how + option_file(group, name).read_text(encoding="utf-8"), encoding="utf-8")
    except OSError as e:
        raise UserError(f"dl cp: cannot write {target} ({e.strerror})") from None
    make_console().print(f"wrote {target}")
    auto = conf_dir / "dataset" / "auto" / f"{choice}.yaml"
    if group == "model" and choice != name and not auto.exists():  # its default dataset: the shipped model's
        auto.parent.mkdir(parents=True, exist_ok=True)
        auto.write_text(option_file("dataset", f"auto/{name}").read_text(encoding="utf-8"), encoding="utf-8")
        make_console().print(f"wrote {auto} (model={choice}'s default dataset, as {name}'s)")
    return target
