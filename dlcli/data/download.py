"""Find dataset files under a root directory, or download them (sha256-checked, with a progress bar)."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from dlcli.base.errors import UserError


def user_path(path: str | Path, what: str) -> Path:
    """A file the user named, checked to be one: or one clear line (missing, a directory, a broken link)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what}={path}: that is a directory; name a file")
    if not p.is_file():
        loop = " (a symlink to nowhere, or a loop)" if p.is_symlink() else ""
        raise UserError(f"{what}={path}: no such file{loop}")
    return p


def read_user_text(path: str | Path, what: str, encoding: str = "utf-8") -> str:
    """A file the user named: its text, or one clear line (missing, not UTF-8)."""
    p = user_path(path, what)
    try:
        return p.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise UserError(f"{what}={path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"{what}={path}: cannot read it ({e.strerror})") from None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str | None) -> Path:
    """Fetch url to dest through dest.part; a sha256 mismatch removes the partial file and raises UserError.
    sha256=None only where the content is checked after unpacking (download_zip_member)."""
    # only when downloading
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, transient=True) as bar:
                task = bar.add_task(f"download {dest.name}", total=total)
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.advance(task, len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise UserError(f"could not download {url} ({reason})") from None
    if sha256 is not None and h.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise UserError(f"download of {url} has sha256 {h.hexdigest()[:16]}…, expected {sha256[:16]}…; "
                        "the partial file was removed (a bad mirror or a broken transfer): try again")
    os.replace(part, dest)
    return dest


def find_or_download(name: str, root: str | Path, subdirs: tuple[str, ...], files: dict[str, str], base_url: str,
                     allow_download: bool, fetch: Callable[[str, Path, str], Path] | None = None) -> dict[str, Path]:
    """Return {filename: path}. Looks in root/<subdir>/ for each subdir, then root/; downloads into root/<subdirs[0]>/.

    `files` maps each file name to its sha256. A present file with the wrong checksum is an error, not re-fetched.
    fetch(file name, destination, sha256) replaces the plain <base_url>/<file> download (e.g. a zip member).
    """
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"dataset.root={root} is a file, not a directory (DL_DATA_DIR sets it); point it at the "
                        f"folder that holds {name} (or where it may be downloaded)")
    for folder in [root / s for s in subdirs] + [root]:
        if all((folder / f).is_file() for f in files):
            for f, digest in files.items():
                if sha256_of(folder / f) != digest:
                    raise UserError(f"{folder / f} has the wrong sha256 (corrupt or a different version of {name}); "
                                    "delete it to download it again")
            return {f: folder / f for f in files}
    target = root / subdirs[0]
    if not allow_download:
        raise UserError(f"{name} not found under {root} (looked in {', '.join(str(root / s) for s in subdirs)}) and "
                        "dataset.download=false; put the files there or set DL_DATA_DIR / dataset.root")
    out = {}
    for f, digest in files.items():
        path = target / f
        if path.is_file() and sha256_of(path) == digest:
            out[f] = path
            continue
        try:
            out[f] = fetch(f, path, digest) if fetch else download(base_url.rstrip("/") + "/" + f, path, digest)
        except UserError as e:
            raise UserError(f"{name} not found under {root} and {e}; put the files in {target} "
                            "or set DL_DATA_DIR / dataset.root to a directory that has them") from None
    return out


def download_zip_member(url: str, member: str, dest: Path, sha256: str) -> Path:
    """Fetch a zip, extract one member to dest and check the member's sha256 (the archive's own bytes may differ
    between mirrors; the text we train on may not)."""
    archive = download(url, dest.with_name(dest.name + ".zip"), None)
    part = dest.with_name(dest.name + ".part")
    try:
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(part, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                out.write(chunk)
    except (zipfile.BadZipFile, KeyError) as e:
        part.unlink(missing_ok=True)
        raise UserError(f"{url} is not the expected archive ({e})") from None
    finally:
        archive.unlink(missing_ok=True)
    if sha256_of(part) != sha256:
        part.unlink(missing_ok=True)
        raise UserError(f"{member} from {url} has the wrong sha256 (a different version); the file was removed")
    os.replace(part, dest)
    return dest
