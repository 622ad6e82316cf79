"""The user's config folders come before dl's own: with `--config-dir DIR` (or `--config-path DIR`,
`hydra.searchpath=[DIR]`), DIR/model/lstm.yaml replaces dl's model=lstm and DIR/config.yaml dl's primary config.

Plain Hydra appends those folders after the application's configs, where a file of the same name is never reached
(hydra#2758). dl takes them off the command line and a search-path plugin, registered through Hydra's public
Plugins.register, puts them in front of pkg://dlcli.conf, for dl's own pre-run composition and for Hydra's run alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

from dlcli.base.errors import UserError
from dlcli.base.overrides import unquote

DL_CONFIGS = "pkg://dlcli.conf"
PROVIDER = "dl user config"  # how the run's .hydra/hydra.yaml (config_sources) names the user's folders
# Hydra flags that name a config folder (each takes the folder as its value)
DIR_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp")


class UserConfigsFirst(SearchPathPlugin):
    sources: tuple[str, ...] = ()  # search-path URLs (file://..., pkg://...), the first one wins

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(e.path == DL_CONFIGS for e in search_path.get_path()):
            return  # another Hydra app in the same process: not ours to change
        for source in self.sources:
            search_path.prepend(PROVIDER, source, anchor=SearchPathQuery(path=DL_CONFIGS))


@contextlib.contextmanager
def user_configs_first(sources: list[str]) -> Iterator[None]:
    """Within the block, every Hydra composition of dl's configs searches `sources` first."""
    if UserConfigsFirst not in Plugins.instance().discover(SearchPathPlugin):
        Plugins.instance().register(UserConfigsFirst)
    before, UserConfigsFirst.sources = UserConfigsFirst.sources, tuple(dict.fromkeys(sources))
    try:
        yield
    finally:
        UserConfigsFirst.sources = before


def take_config_sources(flags: list[str], overrides: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(flags, overrides) without the config folders they name, and those folders as search-path URLs in order:
    --config-dir / --config-path first, then hydra.searchpath's entries. A folder that is not there is one line."""
    sources: list[str] = []
    kept_flags: list[str] = []
    i = 0
    while i < len(flags):
        flag = flags[i]
        if flag in DIR_FLAGS and i + 1 < len(flags):
            sources.append(_folder(flag, flags[i + 1]))
            i += 2
            continue
        name, eq, value = flag.partition("=")
        if eq and name in DIR_FLAGS:  # --config-dir=DIR
            sources.append(_folder(name, value))
        else:
            kept_flags.append(flag)
        i += 1
    kept = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") != "hydra.searchpath":
            kept.append(o)
            continue
        sources += [checked_source(unquote(e.strip()), "hydra.searchpath") for e in value.strip().strip("[]").split(",")
                    if e.strip()]
    return kept_flags, kept, sources


def checked_source(entry: str, what: str) -> str:
    """A search-path entry as a URL: pkg://... as given; a folder (file://... or a path) checked to be there."""
    if entry.startswith("file://"):
        entry = entry[len("file://"):]
    return entry if "://" in entry else _folder(what, entry)


def _folder(flag: str, value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"{flag} {value}: no such directory (it should hold your config groups, e.g. "
                        f"{value}/model/mynet.yaml)")
    return f"file://{path.resolve()}"


def user_file(group: str, option: str, sources: Iterable[str]) -> Path | None:
    """The YAML of GROUP=OPTION when one of the user's folders gives it (the first one that has it), else None."""
    for source in sources:
        path = Path(source[len("file://"):]) / group / f"{option}.yaml"
        if source.startswith("file://") and path.is_file():
            return path
    return None


def naming_user_file(error: UserError, choices: Mapping[str, Any], sources: Iterable[str]) -> UserError:
    """An error about the model or dataset config (its line starts model. or dataset.) names the user's YAML that
    config came from, e.g. `myconf/model/poolnet.yaml: model._target_=...`. dl's own files are not named."""
    message = str(error)
    for group in ("model", "dataset"):
        option = choices.get(group)
        if option and message.startswith((f"{group}.", f"{group}=")) and \
                (path := user_file(group, str(option), sources)) is not None:
            return UserError(f"{_shown(path)}: {message}")
    return error


def _shown(path: Path) -> str:
    """The path as the user would type it: relative to the current directory when it is under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
