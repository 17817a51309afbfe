"""Latency as a pruning target: measured honestly, tabulated per layer, and spent where it buys the most.

* :func:`measure` times forward passes after warm-up at a pinned thread count and reports the median with its
  quartiles; :func:`compare` times a dense and a pruned model in interleaved rounds, so the drift of a shared
  machine falls on both alike, and reports the speedup's median and range over the rounds.
* :class:`LatencyTable` holds, per prunable layer (``Conv2d``, ``Linear``), the seconds of that layer alone as a
  function of its remaining channels, measured on this device at the model's input shape and a batch size, and
  cached on disk per device, thread count and torch version (a second prune of the same architecture measures
  nothing).  Its grid is every eighth of the layer's width, each point the median of three passes; a channel's
  cost is the curve's Theil-Sen slope, robust to the steps and noise between neighbouring points.
* :class:`LatencyWeighted` turns any Torch-Pruning importance into importance per unit of latency saved (the idea
  of HALP, Shen et al. 2022): each group's scores are divided by the seconds one of its channels costs per layer
  it reaches, read from the table, so the pruner's own ranking (with its scope and protection) removes the
  channels that buy the most latency for the least importance first.  :func:`pruning.prune` with
  ``target="latency"`` uses it and stops on measured latency, never on the table's estimate.

Every measurement first calls :func:`steady_allocator`: glibc's malloc returns a large freed block to the kernel
and maps it afresh on the next forward pass, so each call pays hundreds of page faults, and how many depends on
the thresholds the process's earlier allocations moved.  Fixed thresholds keep activations in the heap, as the
tcmalloc or jemalloc that PyTorch's CPU tuning guide recommends would: without them one 16->16 convolution at
32x32 (batch 32) timed 3.7-7.9 ms with 300-2000 faults a call, with them 1.6-2.8 ms and none.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy.stats import theilslopes
from torch import nn

from .device import device_name as accelerator_name
from .device import device_of
from .errors import PruneBenchError, first_line
from .modes import eval_mode
from .tp_adapter import IN_FNS, OUT_FNS, group_members

GRID = 8            # table points per layer: every eighth of its dense width
MIN_SECONDS = 0.02  # a table point times at least this long in total (several calls of a fast layer)
PASSES = 3          # passes over a layer's grid; each point is the median of its passes
TABLE_VERSION = 3   # part of the cache key: tables measured another way are measured again
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it: blocks below it come from the heap, never a fresh mapping
TRIM_THRESHOLD = 1 << 30   # free heap kept before any is returned to the kernel


# --------------------------------------------------------------------------- the allocator
_allocator: Optional[str] = None


def steady_allocator() -> str:
    """Fix glibc malloc's mmap and trim thresholds for the rest of the process (once; a no-op elsewhere), so that
    a forward pass reuses its activations' memory instead of faulting fresh pages in, and two processes with
    different histories time the same model alike.  Returns what latency is measured with: ``glibc-fixed`` or
    ``default`` (another C library, where this does nothing)."""
    global _allocator
    if _allocator is None:
        _allocator = "default"
        try:
            libc = ctypes.CDLL("libc.so.6")
            if libc.mallopt(-3, MMAP_THRESHOLD) == 1 and libc.mallopt(-1, TRIM_THRESHOLD) == 1:  # M_MMAP_, M_TRIM_
                _allocator = "glibc-fixed"
        except (OSError, AttributeError):
            pass
    return _allocator


# --------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Latency:
    """Seconds per forward pass: the median over ``repeats`` timed calls and its quartiles."""
    median: float
    q1: float
    q3: float
    repeats: int
    threads: int
    batch: int

    @property
    def spread(self) -> float:
        """The interquartile range relative to the median."""
        return (self.q3 - self.q1) / self.median if self.median else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "spread": self.spread}


@contextmanager
def pinned_threads(threads: Optional[int]):
    """Run with exactly ``threads`` intra-op threads (None: as they are), restored afterwards."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def measure(model, inputs: torch.Tensor, repeats: int = 20, warmup: int = 3,
            threads: Optional[int] = None) -> Latency:
    """Time ``repeats`` forward passes of ``inputs`` after ``warmup`` untimed ones, at ``threads`` threads.
    ``model`` is an ``nn.Module`` (PyTorch, no grad, eval mode, on the device it is on: a GPU pass is timed with
    CUDA events, from the launch to its completion) or the path of an ``.onnx`` file (ONNX Runtime's CPU provider,
    at the same thread count)."""
    steady_allocator()
    device = device_of(model) if isinstance(model, nn.Module) else torch.device("cpu")
    inputs = inputs.to(device)
    with pinned_threads(threads) as used, _runner(model, inputs, used) as run:
        for _ in range(warmup):
            run()
        times = [_timed(run, device) for _ in range(max(1, repeats))]
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return Latency(statistics.median(times), q1, q3, len(times), used, int(inputs.shape[0]))


def compiled(model: nn.Module) -> nn.Module:
    """``model`` through ``torch.compile`` (TorchInductor, a graph per batch size), compiled on its first call.

    :func:`measure`'s warm-up calls compile it; a backend that cannot compile here (no C++ compiler, an op it
    does not support) fails there with one line."""
    inner = torch.compile(model, dynamic=False)

    def forward(*args):
        try:
            return inner(*args)
        except Exception as error:  # torch's compile errors come from many modules: each is reported as one line
            raise PruneBenchError(f"torch.compile could not compile the model here: {first_line(error)}") from None
    return _Compiled(forward, model)


class _Compiled(nn.Module):
    """A compiled forward pass that still answers as the module it came from (device, eval mode, parameters)."""

    def __init__(self, forward, model: nn.Module):
        super().__init__()
        self.model, self._forward = model, forward

    def forward(self, *args):
        return self._forward(*args)


def _timed(run, device: torch.device) -> float:
    """Seconds of one call of ``run``; on a GPU, between CUDA events around it (kernels run asynchronously, so a
    host clock would time their launch only)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    run()
    if device.type == "mps":
        torch.mps.synchronize()
    return time.perf_counter() - start


@contextmanager
def _runner(model, inputs: torch.Tensor, threads: int):
    """A no-argument callable running one forward pass of ``inputs``."""
    if isinstance(model, nn.Module):
        with torch.no_grad(), eval_mode(model):
            yield lambda: model(inputs)
        return
    session = onnx_session(model, threads)
    feed = {session.get_inputs()[0].name: inputs.numpy()}
    yield lambda: session.run(None, feed)


def onnx_session(path, threads: int):
    """An ONNX Runtime CPU session of the file at ``path`` with ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PruneBenchError("ONNX Runtime is not installed: pip install 'prunebench[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(dense, pruned, inputs: torch.Tensor, rounds: int = 5, repeats: int = 10,
            threads: Optional[int] = None) -> dict:
    """Dense and pruned (modules, or ``.onnx`` paths) timed in ``rounds`` interleaved rounds: the speedup (dense
    median / pruned median) per round, its median, min and max, and both models' medians over all rounds."""
    speedups, dense_times, pruned_times = [], [], []
    for _ in range(rounds):
        d = measure(dense, inputs, repeats, warmup=1, threads=threads)
        p = measure(pruned, inputs, repeats, warmup=1, threads=threads)
        speedups.append(d.median / p.median)
        dense_times.append(d.median)
        pruned_times.append(p.median)
    return {"speedup": statistics.median(speedups), "speedup_min": min(speedups), "speedup_max": max(speedups),
            "dense": statistics.median(dense_times), "pruned": statistics.median(pruned_times), "rounds": rounds,
            "repeats": repeats, "threads": d.threads, "batch": d.batch, "allocator": steady_allocator()}


def batch_of(example_inputs: torch.Tensor, batch: int) -> torch.Tensor:
    """``batch`` copies of a batch-1 example (the input shape latency is measured at)."""
    return example_inputs[:1].expand(batch, *example_inputs.shape[1:]).contiguous()


# --------------------------------------------------------------------------- the table
def cpu_name() -> str:
    """The CPU model (or the platform's processor name): part of every CPU table's cache key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def layer_inputs(model: nn.Module, example_inputs: torch.Tensor) -> dict:
    """Per ``Conv2d``/``Linear`` module: the shape of one sample's input (no batch dimension), from one pass."""
    shapes, hooks = {}, []

    def record(module, args, output) -> None:  # a hook that returned a value would replace the output
        shapes.setdefault(module, tuple(args[0].shape[1:]))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(record))
    try:
        with torch.no_grad(), eval_mode(model):
            model(example_inputs[:1])
    finally:
        for h in hooks:
            h.remove()
    return shapes


def signature(module: nn.Module, shape: tuple) -> Optional[tuple]:
    """What a layer's latency depends on besides its varying width (its dense shape and input); None: not
    tabulated (a layer type other than Conv2d/Linear)."""
    if isinstance(module, nn.Conv2d):
        return ("conv", module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, shape[1:])
    if isinstance(module, nn.Linear):
        return ("linear", module.in_features, module.out_features, module.bias is not None, shape[:-1])
    return None


def _standalone(sig: tuple, side: str, width: int, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """A fresh layer of signature ``sig`` with its ``side`` (``in``, ``out``, or ``both`` for depthwise) set to
    ``width`` channels, and an input batch for it."""
    if sig[0] == "conv":
        _, cin, cout, k, s, p, d, groups, bias, hw = sig
        if side == "both":
            cin = cout = groups = width
        elif side == "in":
            cin = width
        else:
            cout = width
        layer = nn.Conv2d(cin, cout, k, s, p, d, groups, bias)
        return layer, torch.randn(batch, cin, *hw)
    _, fin, fout, bias, lead = sig
    fin, fout = (width, fout) if side == "in" else (fin, width)
    return nn.Linear(fin, fout, bias), torch.randn(batch, *lead, fin)


def dense_width(sig: tuple, side: str) -> int:
    """A layer's dense channel count on ``side`` (``in`` or ``out``)."""
    return sig[1] if side == "in" else sig[2]


def grid(width: int) -> list[int]:
    """The widths a layer is timed at: every eighth of ``width`` (at least 1), ``width`` included."""
    return sorted({max(1, round(width * k / GRID)) for k in range(1, GRID + 1)})


class LatencyTable:
    """Seconds of each prunable layer alone, as a function of its remaining channels on one side.

    Entries are measured on first use at ``batch`` and ``threads`` and kept in ``path`` (JSON, when given), keyed
    by the layer's dense signature, so a table is measured once per device, input shape, batch and thread count.
    """

    def __init__(self, batch: int = 1, threads: Optional[int] = None, path: Optional[Path] = None,
                 device: torch.device | str = "cpu"):
        self.batch = batch
        self.device = torch.device(device)
        self.threads = threads or torch.get_num_threads()
        self.path = Path(path) / f"latency-{self.key()}.json" if path else None
        self.entries: dict = {}
        self.measured = 0  # points timed by this table (0 when everything came from the cache)
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache is measured again

    def key(self) -> str:
        """Device, threads, batch, torch version and allocator: what every entry's seconds depend on besides the
        layer."""
        device = cpu_name() if self.device.type == "cpu" else accelerator_name(self.device)
        what = [device, self.threads, self.batch, torch.__version__, self.device.type, TABLE_VERSION,
                steady_allocator()]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def curve(self, sig: tuple, side: str) -> tuple[list, list]:
        """(widths, seconds) of a layer over its grid, measured on first use: ``PASSES`` passes over the grid, each
        point the median of its passes, so that a drift of the machine during one pass moves one of three values
        per point rather than a run of neighbouring points."""
        name = json.dumps([sig, side])
        if name not in self.entries:
            widths = grid(dense_width(sig, side) if side != "both" else sig[1])
            passes = [[self._time(sig, side, w) for w in widths] for _ in range(PASSES)]
            self.entries[name] = {"widths": widths, "seconds": [statistics.median(p) for p in zip(*passes)]}
            self.measured += len(widths)
            self._save()
        entry = self.entries[name]
        return entry["widths"], entry["seconds"]

    def seconds(self, sig: tuple, side: str, width: float) -> float:
        widths, seconds = self.curve(sig, side)
        return float(np.interp(width, widths, seconds))

    def slope(self, sig: tuple, side: str, width: int) -> float:
        """Seconds one channel costs at ``width``: the Theil-Sen slope (the median of the slopes between every two
        points) of the curve's points at or below ``width`` (at least the lowest three).  Between neighbouring
        points CPU latency steps up and down with SIMD alignment and noise, so a neighbour difference often reads
        zero or doubles; the median of all pairs does not.  Never negative: a channel is never paid to keep."""
        widths, seconds = self.curve(sig, side)
        below = max(3, sum(w <= width for w in widths))
        if len(widths) < 2:
            return 0.0
        return max(0.0, float(theilslopes(seconds[:below], widths[:below]).slope))

    def _time(self, sig: tuple, side: str, width: int) -> float:
        layer, x = _standalone(sig, side, width, self.batch)
        layer.to(self.device)
        once = measure(layer, x, repeats=1, warmup=1, threads=self.threads).median
        repeats = int(min(50, max(5, MIN_SECONDS / max(once, 1e-7))))
        return measure(layer, x, repeats=repeats, warmup=1, threads=self.threads).median

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- importance per unit of latency
class LatencyWeighted:
    """Group scores divided, group by group, by the seconds one of the group's channels costs per layer it reaches.

    ``scores`` is the pruner's own scoring (``pruner.estimate_importance``), so whatever the importance does besides
    scoring stays as it is.  A group's channel cost (:meth:`cost`, what a step's latency budget spends) sums over
    its tabulated members: the layers whose outputs it removes (their ``out`` curve), the layers whose inputs it
    removes (``in``, times the inputs per channel, e.g. a flatten before a Linear) and depthwise convolutions
    (``both`` sides at once).  The scores are divided by that sum over the number of layers: the criteria average a
    group's scores over its layers (Torch-Pruning's group reduction), so a residual channel that reaches nine
    convolutions counts each once in its importance and must do so in its cost too (divided by the sum, it read nine
    times as costly as an inner channel of the same layers, and residual streams were cut to the protection floor
    first).  Where every layer's channel costs the same, the criterion's own ranking stands.  A group of untabulated
    layers only (norms, activations), or one whose timing shows no fall, costs the least a tabulated channel costs,
    never zero: that would make its channels infinitely costly to lose.
    """

    def __init__(self, scores, table: LatencyTable, model: nn.Module, example_inputs: torch.Tensor):
        self.scores = scores
        self.table = table
        shapes = layer_inputs(model, example_inputs)
        self.signatures = {m: sig for m, shape in shapes.items() if (sig := signature(m, shape)) is not None}
        self._floor: Optional[float] = None

    def __call__(self, group):
        scores = self.scores(group)
        if scores is None:
            return None
        seconds, layers = self._costs(group)
        return scores / (seconds / layers)

    def cost(self, group) -> float:
        """Seconds one root channel of the group costs at the current widths (summed over its layers)."""
        return self._costs(group)[0]

    def _costs(self, group) -> tuple[float, int]:
        """(seconds one root channel costs, the tabulated layers they are summed over; 1 for the floor)."""
        width = max(1, len(group[0].idxs))
        total, seen = 0.0, set()
        for side, handlers in (("out", OUT_FNS), ("in", IN_FNS)):
            for m in group_members(group, handlers):
                sig = self.signatures.get(m.layer)
                if sig is None or m.layer in seen:
                    continue
                seen.add(m.layer)
                depthwise = sig[0] == "conv" and sig[7] > 1 and sig[7] == sig[1] == sig[2]
                curve = "both" if depthwise else side  # depthwise: inputs, outputs and groups go together
                total += len(m.idxs) / width * self.table.slope(sig, curve, _current_width(m.layer, side))
        if total <= 0:
            return self.floor(), 1
        return total, len(seen)

    def floor(self) -> float:
        """The least a tabulated layer's output channel costs, over its whole curve: fixed once, so that a
        group's score never depends on which groups were scored before it."""
        if self._floor is None:
            slopes = []
            for sig in set(self.signatures.values()):
                if sig[0] == "conv" and sig[7] > 1:  # grouped: its out curve alone is not a layer that exists
                    continue
                slopes.append(self.table.slope(sig, "out", dense_width(sig, "out")))
            self._floor = min((s for s in slopes if s > 0), default=1e-9)
        return self._floor


def _current_width(layer: nn.Module, side: str) -> int:
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels if side == "in" else layer.out_channels
    return layer.in_features if side == "in" else layer.out_features
