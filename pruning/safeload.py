"""Reading pickled files without running anything in them.

A pickle names functions and classes that the loader calls, so a crafted ``.pt``, CIFAR batch or ``.npy`` file can
run any code when read with plain ``pickle``/``torch.load(weights_only=False)``/``np.load(allow_pickle=True)``.
Every loader in prunebench goes through one of these instead:

* :func:`torch_load_safely`: ``torch.load(weights_only=True)`` with a per-call allow-list of extra classes.
* :class:`PlainDataUnpickler`: a ``pickle.Unpickler`` that rebuilds numpy arrays and plain Python data only.
* :func:`load_npy`: ``np.load`` of one ``.npy`` file whose object arrays are unpickled by :class:`PlainDataUnpickler`.

Anything else a file asks for is refused before it is called; the refusal is one :class:`PruneBenchError` line.
"""
from __future__ import annotations

import os
import pickle
import re
import threading
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable, Optional

import numpy as np
import torch

from .errors import PruneBenchError

# torch keeps the safe_globals allow-list in one process-wide set that the context manager adds to and removes from:
# one load at a time, so a load in another thread never sees (or loses) this call's extra classes
_TORCH_LOAD_LOCK = threading.Lock()


# --------------------------------------------------------------------------- torch files
def torch_load_safely(path: str | os.PathLike, allowed: Iterable = (), kind: str = "a checkpoint") -> object:
    """``torch.load(weights_only=True)`` of a local file, allowing only ``allowed`` globals beyond torch's defaults.

    Nothing in the file can run: torch's restricted unpickler stops at the first global that is neither a tensor
    type nor in ``allowed`` (scoped to this call, never added process-wide).  Every failure is one line naming the
    file: the refused global, or why the file is not a checkpoint at all.  ``allowed`` takes what
    ``torch.serialization.safe_globals`` takes (classes, or ``(class, "pickled.module.Name")``); ``kind`` names the
    expected file in a refusal ("an ultralytics checkpoint").
    """
    path = Path(path)
    if not path.is_file():
        raise PruneBenchError(f"checkpoint {path} does not exist")
    try:
        with _TORCH_LOAD_LOCK, torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(str(e))
        if refused:
            raise PruneBenchError(f"refused to load {path}: it asks for {refused!r}, which is not allowed in "
                                  f"{kind} (loading it could run code)") from None
        raise PruneBenchError(f"{path} is not a checkpoint: {_not_a_checkpoint(path)}") from None
    except Exception:  # torch raises many types (EOFError, RuntimeError, KeyError, ...) for foreign files
        raise PruneBenchError(f"{path} is not a checkpoint: {_not_a_checkpoint(path)}") from None


def _refused_global(message: str) -> Optional[str]:
    """The global torch's restricted unpickler refused (``posix.system``), from its multi-line error message."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return found.group(1) if found else None


def _not_a_checkpoint(path: Path) -> str:
    """Why ``path`` cannot be a file written by ``torch.save``, in a user's terms."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "the file is empty"
    if zipfile.is_zipfile(path) or head.startswith(b"PK"):
        return "the archive is truncated or corrupt (copy or save it again)"
    if _is_text(head):
        return "it contains text, not data written by torch.save (wrong file, or a corrupt copy)"
    return "it was not written by torch.save (wrong file, or a corrupt copy)"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut by the 4096-byte read
            return False
        text = head[:e.start].decode("utf-8")
    return all(c.isprintable() or c.isspace() for c in text)


# --------------------------------------------------------------------------- numpy arrays and plain data
def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles call (as ``_codecs.encode``) to rebuild ``bytes``; any other codec is refused."""
    if encoding not in ("latin1", "latin-1"):
        raise RefusedGlobal(f"it asks for _codecs.encode with encoding {encoding!r}; only latin1 rebuilds bytes")
    return text.encode("latin1")


def _plain_globals() -> dict:
    """(module, name) -> object for everything a pickle of numpy arrays and plain data may name."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array rebuild function, under either module name
    found = {("numpy.core.multiarray", "_reconstruct"): reconstruct,
             ("numpy._core.multiarray", "_reconstruct"): reconstruct,
             ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): _latin1_bytes}
    for builtin in (bytes, bytearray, set, frozenset, complex):
        for module in ("builtins", "__builtin__"):  # Python 3 / Python 2 pickles
            found[(module, builtin.__name__)] = builtin
    return found


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a function or class outside the allow-list (it was not called)."""


class PlainDataUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain Python data (dicts, lists, bytes, numbers); refuses every other global, so a
    crafted pickle cannot call anything (``find_class`` is where pickle looks up what it is told to call)."""

    _allowed: Optional[dict] = None

    def find_class(self, module: str, name: str):
        if PlainDataUnpickler._allowed is None:
            PlainDataUnpickler._allowed = _plain_globals()
        found = PlainDataUnpickler._allowed.get((module, name))
        if found is None:
            raise RefusedGlobal(f"it asks for {module}.{name}; only numpy arrays and plain data are loaded")
        return found


def load_npy(file: str | os.PathLike | BinaryIO) -> np.ndarray:
    """``np.load`` of one ``.npy`` file; an object array is unpickled by :class:`PlainDataUnpickler`, not pickle.

    Raises :class:`RefusedGlobal` for a pickle that names anything else, ``ValueError`` for a file that is not an
    array (a damaged pickle may raise other errors too: callers treat any exception as unreadable).
    """
    if not hasattr(file, "read"):
        with open(file, "rb") as f:
            return load_npy(f)
    version = np.lib.format.read_magic(file)
    if version == (1, 0):
        _shape, _fortran, dtype = np.lib.format.read_array_header_1_0(file)
    elif version == (2, 0):
        _shape, _fortran, dtype = np.lib.format.read_array_header_2_0(file)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    if dtype.hasobject:  # numpy pickles the whole array after the header
        array = PlainDataUnpickler(file).load()
        if not isinstance(array, np.ndarray):
            raise ValueError("the .npy file does not hold an array")
        return array
    file.seek(0)
    return np.load(file, allow_pickle=False)
