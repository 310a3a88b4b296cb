"""Weight-space distances from small random-projection sketches (method.md §5: D_w = ‖θ_t − θ_t0‖²).

A sketch S(W) is a fixed random linear map of *all* parameters, concatenated in sorted-name
order, to ``dim`` numbers with E‖S(a) − S(b)‖² = ‖a − b‖². Stored once per checkpoint, it lets the
atlas estimate the weight distance between any two variants of the same architecture without
keeping or reloading their weights; the relative standard error is at most √(2/dim) (1.1 % at the
default 16384).

The map is a CountSketch (a sparse Johnson–Lindenstrauss transform, feature hashing): every
parameter i is added, with a random sign s_i = ±1, to one random bucket h(i). Its expectation is
exact (E[s_i s_j] = 0 for i ≠ j, so no 1/√dim scale is needed) and its variance,
(2/dim)(‖x‖⁴ − ‖x‖₄⁴), is never above a dense Gaussian projection's 2‖x‖⁴/dim; but it costs
O(n) instead of O(n·dim): a dense projection of 10M parameters to 16384 numbers is 1.6·10¹¹
random entries (minutes on two cores), a CountSketch is ~10 ns per parameter (about 0.1 s).

Signs and buckets come from the raw stream of NumPy's counter-based Philox4×64 generator, keyed
by (seed, parameter name), at counter position (element offset / 4). Hence any two models with the
same parameter names and shapes get the same projection, the result does not depend on how a
tensor is cut into blocks (blocks of ``CHUNK`` elements keep memory bounded, ~40 bytes per
element), and only a bit generator's raw stream is used, not NumPy's distributions (which may
change between versions), so sketches stored today stay comparable with later ones; a test pins
the stream. ``METHOD`` names the scheme; change it whenever the projection changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atlas.errors import AtlasError

DEFAULT_DIM = 16384
DEFAULT_SEED = 0
CHUNK = 1 << 18  # elements per block (~10 MB, cache-friendly); a multiple of 4 (one Philox step)
DEFAULT_THREADS = min(8, os.cpu_count() or 1)  # NumPy releases the GIL: ~1.5× on two cores
BYTES_PER_ELEMENT = 40  # peak working set per block element: values, raw bits, bucket temps
METHOD = "countsketch-philox4x64-v1"
_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")
_SIGN_BIT = np.uint64(1 << 63)
_LOW32 = np.uint64(0xFFFFFFFF)


class WeightError(AtlasError, ValueError):
    """Weights that cannot be sketched, or sketches that cannot be compared."""


@dataclass(frozen=True, eq=False)
class WeightSketch:
    """A model's weight sketch and what is needed to decide whether two can be compared."""

    sketch: np.ndarray = field(repr=False)  # float64 [dim]
    sq_norm: float  # exact ‖W‖², float64
    n_params: int
    dim: int
    seed: int
    layout_hash: str  # names and shapes of the parameters, in sketch order
    method: str = METHOD

    def check_comparable(self, other: WeightSketch) -> None:
        """Raise unless both sketches use the same projection on the same parameter layout."""
        ours = (self.method, self.dim, self.seed)
        theirs = (other.method, other.dim, other.seed)
        if ours != theirs:
            raise WeightError(
                f"weight sketches made with different settings ({_settings(*ours)} vs "
                f"{_settings(*theirs)}) cannot be compared; sketch both with the same dim and "
                "seed")
        if self.layout_hash != other.layout_hash:
            raise WeightError(
                f"weight sketches of different parameter layouts (layout {self.layout_hash}, "
                f"{self.n_params:,} parameters vs layout {other.layout_hash}, "
                f"{other.n_params:,}) cannot be compared: weight distances are defined only "
                "between models of the same architecture and size")


def _settings(method: str, dim: int, seed: int) -> str:
    return f"{method}, dim {dim}, seed {seed}"


def block_bytes(chunk: int = CHUNK) -> int:
    """Peak working memory of one block of ``chunk`` elements (the bound the design promises)."""
    return chunk * BYTES_PER_ELEMENT


# parameters -------------------------------------------------------------------------------------
def named_tensors(model_or_state: Any) -> list[tuple[str, Any]]:
    """(name, tensor) in sorted-name order, each storage once (tied weights keep their first name).

    An ``nn.Module`` contributes its parameters (not buffers); a mapping (a state dict, the
    result of ``safetensors.torch.load_file``) contributes every tensor or array it holds, so
    pass ``dict(model.named_parameters())`` for parameters alone.
    """
    if hasattr(model_or_state, "named_parameters"):
        items = list(model_or_state.named_parameters())  # already one entry per Parameter
    elif isinstance(model_or_state, Mapping):
        items = list(model_or_state.items())
    else:
        raise WeightError(
            f"cannot sketch a {type(model_or_state).__name__}: pass a torch nn.Module or a "
            "dict of tensors (e.g. safetensors.torch.load_file(path))")
    seen, kept = set(), []
    for name, tensor in items:
        identity = _identity(name, tensor)
        if identity not in seen:
            seen.add(identity)
            kept.append((str(name), tensor))
    if not kept:
        raise WeightError("no parameters to sketch: the model or dict holds no tensors")
    return sorted(kept, key=lambda item: item[0])


def _identity(name: str, tensor: Any) -> tuple:
    """Same memory, layout and dtype: the same weights under two names (tying)."""
    _check_tensor(name, tensor)
    if _numel(tensor) == 0:
        return ("empty", name)
    if isinstance(tensor, np.ndarray):
        return ("numpy", tensor.__array_interface__["data"][0], tensor.shape, tensor.strides,
                tensor.dtype.str)
    return (str(tensor.device), tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()),
            str(tensor.dtype))


def _check_tensor(name: str, tensor: Any) -> None:
    if isinstance(tensor, np.ndarray):
        floating = np.issubdtype(tensor.dtype, np.floating)
    elif hasattr(tensor, "is_floating_point"):
        floating = tensor.is_floating_point()
        if tensor.device.type == "meta":
            raise WeightError(f"parameter {name} has no data (meta device): load the weights "
                              "fully (no offloading) before sketching them")
    else:
        raise WeightError(f"parameter {name} is a {type(tensor).__name__}, not a tensor or array")
    if not floating:
        raise WeightError(
            f"parameter {name} holds {tensor.dtype} values, not floating point (a quantized "
            "model?): weight distances need the floating-point weights")


def layout_hash(named: list[tuple[str, Any]]) -> str:
    """Fingerprint of the parameter names and shapes in sketch order."""
    text = "\n".join(f"{name}:{','.join(map(str, tuple(t.shape)))}" for name, t in named)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _numel(tensor: Any) -> int:
    return int(tensor.size) if isinstance(tensor, np.ndarray) else tensor.numel()


def _flat(tensor: Any) -> Any:
    """The tensor as one dimension: a view for contiguous parameters, detached from autograd."""
    return tensor.reshape(-1) if isinstance(tensor, np.ndarray) else tensor.detach().reshape(-1)


def _block(flat: Any, start: int, chunk: int) -> np.ndarray:
    """A float64 copy of ``flat[start : start + chunk]``, on the CPU."""
    part = flat[start : start + chunk]
    if isinstance(part, np.ndarray):
        return part.astype(np.float64)
    if str(part.dtype) not in _NUMPY_FLOATS:
        part = part.float()  # bf16 and fp8 have no NumPy dtype; float32 holds them exactly
    return part.cpu().numpy().astype(np.float64)


def _blocks(tensor: Any, chunk: int) -> Iterator[np.ndarray]:
    flat = _flat(tensor)
    for start in range(0, _numel(tensor), chunk):
        yield _block(flat, start, chunk)


def _philox_key(seed: int, name: str) -> int:
    digest = hashlib.blake2b(f"atlas-weights\0{seed}\0{name}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "little")


def _project_block(values: np.ndarray, key: int, start: int, dim: int) -> np.ndarray:
    """Signed bucket sums of one block; ``values`` is consumed (signs flipped in place)."""
    raw = np.random.Philox(key=key, counter=start // 4).random_raw(values.size)
    bits = values.view(np.uint64)
    bits ^= raw & _SIGN_BIT  # s_i from bit 63: flip the float's sign bit
    raw &= _LOW32
    raw *= np.uint64(dim)
    raw >>= np.uint64(32)  # h(i) from bits 0..31 (multiply-shift onto [0, dim))
    return np.bincount(raw.view(np.int64), weights=values, minlength=dim)


def _sketch_block(flat: Any, key: int, start: int, dim: int,
                  chunk: int) -> tuple[np.ndarray, float, int]:
    """(bucket sums, squared norm, size) of one block: the unit of work of a thread."""
    values = _block(flat, start, chunk)
    sq_norm = float(np.einsum("i,i->", values, values))
    return _project_block(values, key, start, dim), sq_norm, values.size


def _tasks(named: list[tuple[str, Any]], seed: int, dim: int) -> Iterator[tuple]:
    """Arguments of ``_sketch_block`` for every block of every tensor, in sketch order."""
    chunk = CHUNK
    for name, tensor in named:
        flat, key = _flat(tensor), _philox_key(seed, name)
        for start in range(0, _numel(tensor), chunk):
            yield flat, key, start, dim, chunk


def _in_order(tasks: Iterator[tuple], threads: int) -> Iterator[tuple[np.ndarray, float, int]]:
    """Results of ``_sketch_block`` in task order, at most ``threads`` blocks in memory at once.

    Summing in task order makes the sketch bit-identical whatever the number of threads.
    """
    if threads <= 1:
        yield from (_sketch_block(*task) for task in tasks)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="sketch") as pool:
        pending: deque[Future] = deque()
        for task in tasks:
            pending.append(pool.submit(_sketch_block, *task))
            if len(pending) >= threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over parameters (sketching a 10B model takes minutes)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("sketching weights"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("sketch", total=total)
        yield lambda n: bar.update(task, advance=n)


# public API -------------------------------------------------------------------------------------
def sketch_parameters(model_or_state: Any, dim: int = DEFAULT_DIM, seed: int = DEFAULT_SEED,
                      progress: bool = False, threads: int = DEFAULT_THREADS) -> WeightSketch:
    """Sketch all parameters of a torch ``nn.Module`` or a dict of tensors, on the CPU.

    Streamed tensor by tensor in blocks of ``CHUNK`` elements, accumulated in float64, so memory
    stays at ``block_bytes()`` per thread beyond the weights themselves (GPU weights are copied
    over one block at a time). Deterministic: the same weights give bit-identical sketches, with
    any number of threads, so identical weights are at distance exactly 0.
    """
    if not 1 <= dim < 2**32:
        raise WeightError(f"sketch dim must be between 1 and 2^32 - 1, not {dim}")
    named = named_tensors(model_or_state)
    n_params = sum(_numel(t) for _, t in named)
    sketch = np.zeros(dim, dtype=np.float64)
    sq_norm = 0.0
    with _progress(progress, n_params) as advance:
        for block_sketch, block_sq_norm, size in _in_order(_tasks(named, seed, dim), threads):
            sketch += block_sketch
            sq_norm += block_sq_norm
            advance(size)
    if not (np.isfinite(sketch).all() and math.isfinite(sq_norm)):
        raise WeightError("the weights hold NaN or inf values; no meaningful distance exists")
    return WeightSketch(sketch=sketch, sq_norm=sq_norm, n_params=n_params, dim=dim, seed=seed,
                        layout_hash=layout_hash(named))


def sketch_distance(a: WeightSketch, b: WeightSketch) -> float:
    """Estimate of ‖W_a − W_b‖² (unbiased; relative standard error at most √(2/dim))."""
    a.check_comparable(b)
    difference = a.sketch - b.sketch
    return float(np.einsum("i,i->", difference, difference))


def sketch_distance_matrix(sketches: Sequence[WeightSketch]) -> np.ndarray:
    """K × K estimates of ‖W_i − W_j‖² (the ``weight_sq`` of atlas.analysis.diffusion).

    From differences, not from a Gram matrix: ‖a‖² + ‖b‖² − 2a·b cancels catastrophically
    between nearby checkpoints, whose distance is a tiny fraction of their norms.
    """
    for other in sketches[1:]:
        sketches[0].check_comparable(other)
    stacked = np.stack([s.sketch for s in sketches]) if sketches else np.zeros((0, 0))
    matrix = np.zeros((len(sketches), len(sketches)))
    for i in range(len(sketches) - 1):
        difference = stacked[i + 1 :] - stacked[i]
        matrix[i, i + 1 :] = matrix[i + 1 :, i] = np.einsum("kd,kd->k", difference, difference)
    return matrix


def exact_distance(model_a: Any, model_b: Any) -> float:
    """Exact ‖W_a − W_b‖² in float64, streamed block by block (both models in memory)."""
    named_a, named_b = named_tensors(model_a), named_tensors(model_b)
    hash_a, hash_b = layout_hash(named_a), layout_hash(named_b)
    if hash_a != hash_b:
        raise WeightError(
            f"models with different parameter layouts ({hash_a} vs {hash_b}: names or shapes "
            "differ) have no weight distance")
    total = 0.0
    for (_, tensor_a), (_, tensor_b) in zip(named_a, named_b, strict=True):
        for block_a, block_b in zip(_blocks(tensor_a, CHUNK), _blocks(tensor_b, CHUNK),
                                    strict=True):
            block_a -= block_b
            total += float(np.einsum("i,i->", block_a, block_a))
    return total
