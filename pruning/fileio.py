"""The one way prunebench writes a file: atomically, and with a one-line error when the disk says no.

Every writer goes through :func:`atomic_write`: the content goes to a temporary file in the target's folder, is
flushed to disk, and only then replaces the target (``os.replace`` is atomic on POSIX and Windows).  A crash, a
kill, a full disk or a read-only folder therefore never leaves a truncated file behind, and an earlier file at the
target stays intact.  ``OSError`` (no space, read-only file system, permission denied, ...) becomes a
:class:`~pruning.errors.PruneBenchError` naming the path and the reason, which the CLI prints as one line.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import PruneBenchError


def write_error(path: os.PathLike | str, error: OSError) -> PruneBenchError:
    """The one-line message for a failed write (``cannot write <path>: No space left on device``)."""
    reason = error.strerror or type(error).__name__
    return PruneBenchError(f"cannot write {path}: {reason}")


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``, otherwise it is removed.

    For writers that insist on a file name (``torch.save``, ``savefig``, ``np.savez``)::

        with atomic_path("out.png") as tmp:
            fig.savefig(tmp, format="png")
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write(path: os.PathLike | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then move it over ``path``; return ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_bytes(path: os.PathLike | str, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: os.PathLike | str, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: os.PathLike | str, data, indent: int = 1) -> Path:
    return write_text(path, json.dumps(data, indent=indent, default=float) + "\n")


def copy_file(source: os.PathLike | str, target: os.PathLike | str) -> Path:
    """Copy ``source`` to ``target`` atomically (a kill mid-copy leaves the old target, never half a file)."""
    return atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def ensure_dir(path: os.PathLike | str) -> Path:
    """Create a folder (and its parents) for outputs; a read-only or full file system is a one-line error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    return path


def remove(path: os.PathLike | str) -> None:
    """Delete a file the project wrote earlier (e.g. a plot no longer produced); absent is fine."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as e:
        raise write_error(path, e) from None


def read_json(path: os.PathLike | str):
    """A JSON file the project wrote; a missing, unreadable or malformed one is a one-line error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PruneBenchError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PruneBenchError(f"{path} is not readable JSON ({type(e).__name__}: {e})") from None


def _fsync(path: Path) -> None:
    """Flush the file's data to the device, so a replace never publishes a file whose blocks were never written."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
