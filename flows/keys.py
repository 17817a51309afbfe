"""Trial keys and versions: what a result depends on, hashed.

A trial's key is a hash of the method, speedup, scope, every parameter it depends on, the dense checkpoint's
bytes, the prepared data's content and the code that computes results (:func:`code_version`).  The same key means
the same result, so a finished trial is never computed twice, and anything that would change a result changes
the key.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Optional

from .config import Params
from .layout import prepared_dir

_DIGESTS: dict = {}

# The flows modules whose code decides what a trial computes and records (beside the whole ``pruning`` package).
RESULT_MODULES = ("stages.py", "record.py", "stats.py")


def make_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (memoised per path, size and mtime: checkpoints are hashed once per process)."""
    path = Path(path)
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


def dir_digest(path: str | Path, suffixes: Optional[tuple] = None) -> str:
    """sha256 over a folder's files (those ending in ``suffixes``, when given): their relative paths and contents."""
    path = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and (suffixes is None or q.suffix.lower() in suffixes)):
        h.update(f"{p.relative_to(path).as_posix()}\0{file_digest(p)}\n".encode())
    return h.hexdigest()


def dvc_md5(path: str | Path, lock: Path = Path("dvc.lock")) -> Optional[str]:
    """The md5 DVC recorded in dvc.lock for an output path, if any (logged beside the digest, never as it)."""
    if not lock.is_file():
        return None
    import yaml
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError:
        return None
    want = Path(path).as_posix().rstrip("/")
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if Path(str(out.get("path", ""))).as_posix().rstrip("/") == want:
                return out.get("md5")
    return None


def data_version(params: Params) -> dict:
    """The prepared data's content hash: in trial keys, and (its first 32 characters) the dataset digest MLflow
    shows.  Computed from the prepared files themselves, so data prepared by ``prunebench prepare`` and by
    ``dvc repro`` has one digest; DVC's own md5, when dvc.lock lists the folder, is kept beside it."""
    if params.is_detection:
        path = detection_folder(params)
        content = dir_digest(path, DETECTION_FILES)
    else:
        path = prepared_dir(params.data.prepared_dir, params.data.dataset)
        content = dir_digest(path)
    return {"path": path.as_posix(), "content": content, "dvc_md5": dvc_md5(path), "digest": content[:32]}


# A detection dataset's content: its images and YOLO label files (not the label caches ultralytics writes beside
# them, nor the yaml, which holds this machine's absolute paths).
DETECTION_FILES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".txt")


def detection_folder(params: Params) -> Path:
    """The folder holding a detection dataset's images and labels (generated first for ``shapes``)."""
    import yaml

    from pruning.detection import load_detection_data
    data = load_detection_data(params.data.dataset, params.data.prepared_dir, params.data.input_size)
    return Path(yaml.safe_load(data.yaml.read_text())["path"])


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the sources that determine trial results (the ``pruning`` package and :data:`RESULT_MODULES`)."""
    import pruning
    root = Path(pruning.__file__).parent
    here = Path(__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")) + [here / name for name in RESULT_MODULES]:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def compute_key(params: Params) -> dict:
    """What results depend on of where they ran: the kind of device (not its index: cuda:0 and cuda:1 of one
    machine compute alike), the precision, deterministic kernels and memory layout."""
    c = params.compute
    return {"device": c.torch_device().type, "precision": c.precision, "deterministic": c.deterministic,
            "channels_last": c.channels_last}


def baseline_key(params: Params) -> str:
    """What the dense baseline depends on: model, data, pretraining recipe, seed, starting weights, device."""
    from pruning.data import input_size_of
    parts = {"model": params.model.model_dump(), "data": params.data.dataset, "pretrain": params.pretrain.model_dump(),
             "input_size": input_size_of(params.data.dataset, params.data.input_size), "seed": params.seed,
             "compute": compute_key(params), "version": 3}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def sparse_key(params: Params, method: str, dense_hash: str, data_hash: str) -> str:
    """A method's sparse training: shared by all its speedups and tuning trials."""
    import pruning
    pair = pruning.resolve(method)
    sp = params.sparsify.model_dump() if pair.sparsifier else None
    return make_key("sparsify", pair.criterion.name, pair.sparsifier.name if pair.sparsifier else None, sp,
                    params.seed, params.data.batch_size, dense_hash, data_hash, code_version(), compute_key(params))


def trial_key(params: Params, method: str, speedup: float, scope: str, dense_hash: str, data_hash: str) -> str:
    prune = params.prune.model_dump(exclude={"scope"})
    return make_key("trial", sparse_key(params, method, dense_hash, data_hash), method, float(speedup), scope, prune,
                    params.finetune.model_dump(), params.evaluate.model_dump(), params.seed, params.data.batch_size)


def dense_eval_key(params: Params, dense_hash: str, data_hash: str) -> str:
    return make_key(dense_hash, params.evaluate.model_dump(), data_hash, compute_key(params))


def study_key(params: Params, method: str, speedup: Optional[float], dense_hash: str, data_hash: str) -> str:
    """Everything a tuning trial's outcome depends on: a change starts a new study, the same command resumes one."""
    search = params.tune.model_dump(exclude={"methods", "speedup", "trials", "final_epochs", "storage", "timeout"})
    return make_key("study", sparse_key(params, method, dense_hash, data_hash), method, speedup, search,
                    params.prune.calibration_batches, params.finetune.model_dump(), params.seed,
                    params.data.batch_size)
