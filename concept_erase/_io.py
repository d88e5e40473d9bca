"""Files the tool writes: atomic writes, and output paths checked before any work starts.

A file the tool produces is either complete or absent, never half-written: it is written to a
hidden temporary file beside its destination (``.NAME.<random>.tmp``, never with the final suffix,
so no tool mistakes it for a finished file) and renamed over the destination only once complete.

Nothing the user owns is overwritten or deleted unless they say so: :func:`check_output_file` and
:func:`check_output_dir` refuse an existing file (without ``overwrite``), a directory that holds
files the command did not make, a directory that is a filesystem root, the home directory or the
working directory (or one of its parents), and a path that cannot be written — before any training
or generation starts. :func:`replace_dir` swaps a finished directory in, keeping the old one until
the new one is in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import OutputPathError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "save_image_atomic", "check_output_file",
           "check_output_dir", "replace_dir", "temp_dir_beside", "safe_filename", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"


def safe_filename(name: str, default: str = "model") -> str:
    """``name`` as one safe path component: ASCII letters, digits, ``_ . -``; never hidden, never ``..``.

    >>> safe_filename("no-nudity-sd1.5"), safe_filename("../../etc/passwd"), safe_filename("rouge été")
    ('no-nudity-sd1.5', 'etc_passwd', 'rouge_t')
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or default


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is hidden and ends in ``.tmp``; the finished file gets the user's usual mode
    (``0o666`` minus the umask), as an ordinary ``open(path, "w")`` would.

    >>> with atomic_path("out.safetensors") as tmp:  # doctest: +SKIP
    ...     save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # after the writer: libraries that write through their own temporary file drop an earlier chmod
        os.chmod(tmp_path, _default_mode())
        os.replace(tmp_path, path)  # atomic on POSIX and Windows when on the same filesystem
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_image_atomic(image, path: str | os.PathLike, *, pnginfo=None) -> Path:
    """Save a PIL image atomically (format from the final suffix; ``pnginfo``: PNG text chunks)."""
    path = Path(path)
    fmt = (path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **({"pnginfo": pnginfo} if pnginfo is not None and fmt == "PNG" else {}))
    return path


# ---------------------------------------------------------------- output paths
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(path: Path, flag: str) -> None:
    """``path`` (absent) can be created: its nearest existing ancestor is a writable directory."""
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r} cannot be created: {str(ancestor)!r} is a file, not a directory. "
                              "Choose a path under a directory.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {str(path)!r} cannot be created: directory {str(ancestor)!r} is not writable. "
                              "Choose a directory you can write to.")


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False, flag: str = "--out",
                      suffix: str | None = None) -> Path:
    """Check that ``path`` can be written as a file, before any work; returns it (``~`` expanded).

    Refuses a name not ending in ``suffix`` (when given), a directory, an existing file unless
    ``overwrite``, and a path whose directory cannot be created or written."""
    path = Path(path).expanduser()
    if suffix is not None and path.suffix != suffix and not path.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r} must end in {suffix} (adapters are safetensors files).")
    if str(path).strip() == "" or path.name in ("", ".", ".."):
        raise OutputPathError(f"{flag} {str(path)!r} is not a file name. Give a file path such as "
                              "out/name.safetensors.")
    if path.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r} is a directory; give a file path inside it, such as "
                              f"{str(path / 'name.safetensors')!r}.")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputPathError(f"{flag} {str(path)!r} already exists. Pass --overwrite to replace it, or choose "
                                  "another path.")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise OutputPathError(f"{flag} {str(path)!r} cannot be replaced: its directory is not writable.")
        return path
    _check_creatable(path, flag)
    return path


def _protected(path: Path) -> str | None:
    """Why ``path`` must never be an output directory, or None."""
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "a filesystem root"
    if resolved == Path.home().resolve():
        return "your home directory"
    cwd = Path.cwd().resolve()
    if cwd == resolved:
        return "the working directory"
    if resolved in cwd.parents:
        return "a parent of the working directory"
    return None


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, owned: Iterable[str] = (),
                     replace: bool = False, flag: str = "--out", what: str = "this command's output") -> Path:
    """Check that ``path`` can be an output directory, before any work; returns it (``~`` expanded).

    ``owned``: relative paths that mark ``what`` from an earlier run. A command that writes into the
    directory (``replace=False``) accepts an absent or empty directory or one holding ``what`` (it
    resumes), and refuses one holding anything else unless ``overwrite``. A command that replaces
    the whole directory (``replace=True``) needs ``overwrite`` to replace ``what`` and never deletes
    a directory holding anything else. Always refused: a file, a filesystem root, the home
    directory, the working directory or one of its parents, a directory that cannot be written."""
    path = Path(path).expanduser()
    if str(path).strip() == "":
        raise OutputPathError(f"{flag} is empty; give a directory path.")
    why = _protected(path)
    if why:
        raise OutputPathError(f"{flag} {str(path)!r} is {why}; give a new directory for {what}, "
                              f"e.g. {flag} {path.resolve().name or 'out'}-run.")
    if not (path.exists() or path.is_symlink()):
        _check_creatable(path, flag)
        return path
    if not path.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r} is a file, not a directory. Choose another path.")
    parent_writable = os.access(path.parent, os.W_OK | os.X_OK)  # a replaced directory is renamed in its parent
    if not os.access(path, os.W_OK | os.X_OK) or (replace and not parent_writable):
        raise OutputPathError(f"{flag} {str(path)!r} is not writable. Choose a directory you can write to.")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return path
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    if not any((path / o).exists() for o in owned):
        if replace:
            raise OutputPathError(
                f"{flag} {str(path)!r} already holds files that are not {what} ({shown}); it would be replaced "
                "whole, so it is refused even with --overwrite. Choose a new or empty directory.")
        if not overwrite:
            raise OutputPathError(
                f"{flag} {str(path)!r} already holds files that are not {what} ({shown}). Choose a new or empty "
                "directory, or pass --overwrite to write into it anyway (files of the same names are replaced).")
    elif replace and not overwrite:
        raise OutputPathError(f"{flag} {str(path)!r} already holds {what}. Pass --overwrite to replace it (the old "
                              "one is kept until the new one is complete), or choose another directory.")
    return path


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """A new hidden directory next to ``path`` (same filesystem, so :func:`replace_dir` can rename it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Put the finished directory ``new`` at ``path``; an existing ``path`` is moved aside first and
    deleted only once ``new`` is in place (if the swap fails, it is moved back)."""
    new, path = Path(new), Path(path)
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.rmdir(old)
        os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
