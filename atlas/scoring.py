"""Batched log-likelihood scoring: ℓ(x) = Σ_{t≥2} log p(y_t | y_<t) in nats (method.md §2).

How it stays fast and exact:
- texts are tokenized once with the tokenizer's default special tokens, sorted by length and
  batched, right-padded (real tokens keep their positions, and a causal model never lets a real
  token see a later pad, so padding cannot change a score beyond kernel rounding, and no
  attention mask is needed);
- the backbone runs once per batch; the unembedding runs only on real (unpadded) positions, a
  chunk of them at a time, and each chunk's target log-probs are gather − logsumexp in float32,
  so no [batch, seq, vocab] float32 tensor ever exists;
- per-text sums accumulate in float64 on the device and come to the host once per batch.
With ``layers`` (the logit lens, atlas.lens) the same forward pass also returns every hidden
state; each requested one is read through the model's final norm and unembedding by the same
chunked gather − logsumexp, one layer after another (one layer's logit chunk at a time), and all
layers' sums still come to the host in one copy per batch.
A batch with a non-finite sum is re-run in float32; if it is still non-finite, scoring stops with
an error naming the texts, so a NaN is never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from atlas.errors import AtlasError, ScoringError
from atlas.layers import LensError, LensOverride
from atlas.lens import Lens, logit_transform
from atlas.loading import LoadedModel
from atlas.progress import progress_bar

# Texts per batch when none is given. On a 2-core CPU one ~300-token text already keeps the
# matrix products busy and larger batches only add padding and cache misses (measured with
# bench/bench_scoring.py: batch 1 at 273 tok/s vs batch 8 at 252 on SmolLM2-135M); GPUs need
# many rows to fill their cores.
DEFAULT_BATCH_SIZE = {"cpu": 1, "cuda": 32, "mps": 8}
# How often a vector in progress is saved for resumption (seconds).
PARTIAL_FLUSH_SECONDS = 30.0
# Bytes of float32 logits one unembedding chunk may hold, by device type.
LOGIT_CHUNK_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30, "mps": 256 << 20}


class ScoringOptionError(AtlasError, ValueError):
    """A batch size or maximum length that cannot score anything (or scores it wrongly)."""


def check_scoring_options(batch_size: int | None, max_length: int | None) -> None:
    """Refuse what ``Scorer`` would otherwise take silently: 0 (falsy) as the default, a
    negative length as 'all but the last tokens', 1 as nothing predicted at all."""
    if batch_size is not None and batch_size < 1:
        raise ScoringOptionError(f"--batch-size {batch_size}: give at least 1 text per batch "
                                 "(or leave it out for the device's default)")
    if max_length is not None and max_length < 2:
        raise ScoringOptionError(f"--max-length {max_length}: give at least 2 tokens (the first "
                                 "is never predicted), or leave it out for the model's limit")


@dataclass
class Scores:
    """One log-likelihood vector and how it was made."""

    loglik: np.ndarray  # float64, nats, one per text in text-set order
    n_tokens: np.ndarray  # int, tokens in each (possibly truncated) encoding
    n_truncated: int
    provenance: dict = field(default_factory=dict)
    n_resumed: int = 0  # texts taken from a partial run instead of scored now
    scored_tokens: int = 0  # tokens of the texts scored in this run


@dataclass
class Tokenized:
    ids: list[list[int]]
    n_truncated: int
    max_length: int


def model_max_length(model: torch.nn.Module) -> int | None:
    """The longest sequence the model's positions allow, from its config."""
    config = getattr(model.config, "text_config", None) or model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> Tokenized:
    """Encode with default special tokens; keep the first ``max_length`` tokens of each text."""
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in encoded)
    return Tokenized([ids[:max_length] for ids in encoded], truncated, max_length)


def special_token_policy(tokenizer) -> str:
    """What the tokenizer adds by default: 'bos', 'eos', 'bos+eos' or 'none'."""
    probe = tokenizer("a b", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a b", add_special_tokens=False)["input_ids"]
    added = []
    if len(probe) > len(bare) and probe[0] != bare[0]:
        added.append("bos")
    if len(probe) > len(bare) and probe[-1] != bare[-1]:
        added.append("eos")
    return "+".join(added) or "none"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary and special tokens: equal fingerprints tokenize alike."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted(map(str, tokenizer.all_special_tokens))
    payload = json.dumps([vocab, special], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices, longest first (an out-of-memory shows up in the first batch), in batches."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def output_head(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden state (already final-normed) → float32 logits, with the model's post-transforms."""
    unembed = model.get_output_embeddings()
    transform, _ = logit_transform(model.config)

    def head(hidden: torch.Tensor) -> torch.Tensor:
        return transform(unembed(hidden).float())

    return head


@dataclass
class PackedTargets:
    """Where the predicted tokens of a right-padded batch are, flattened over (text, position).

    Only real positions are listed, so the unembedding never runs on padding.
    """

    positions: torch.Tensor  # [M] index into hidden.reshape(-1, H): text · width + t
    targets: torch.Tensor  # [M] the token that position t predicts (t + 1)
    rows: torch.Tensor  # [M] which text of the batch

    @classmethod
    def from_ids(cls, ids: Sequence[Sequence[int]], width: int) -> PackedTargets:
        positions, targets, rows = [], [], []
        for row, tokens in enumerate(ids):
            predicted = len(tokens) - 1
            positions.extend(range(row * width, row * width + predicted))
            targets.extend(tokens[1:])
            rows.extend([row] * predicted)
        return cls(*(torch.tensor(values, dtype=torch.long)
                     for values in (positions, targets, rows)))


def packed_target_logprob_sums(
    hidden: torch.Tensor, packed: PackedTargets, head: Callable[[torch.Tensor], torch.Tensor],
    chunk: int,
) -> torch.Tensor:
    """Σ_t log p(y_{t+1} | y_≤t) per text from hidden states [B, T, H], in float64 on device.

    Logits exist for ``chunk`` real positions at a time: gather − logsumexp in float32, never a
    [B, T, V] tensor. The loop bounds are known on the host, so nothing here syncs the device.
    """
    flat = hidden.reshape(-1, hidden.shape[-1])
    total = torch.zeros(hidden.shape[0], dtype=torch.float64, device=hidden.device)
    for start in range(0, packed.positions.shape[0], chunk):
        logits = head(flat.index_select(0, packed.positions[start : start + chunk]))
        target = packed.targets[start : start + chunk].unsqueeze(-1)
        logprob = logits.gather(-1, target).squeeze(-1) - logits.logsumexp(-1)
        total.index_add_(0, packed.rows[start : start + chunk], logprob.double())
    return total


class Scorer:
    """Scores texts with one loaded model. Knows nothing of the store."""

    def __init__(self, loaded: LoadedModel, *, batch_size: int | None = None,
                 max_length: int | None = None, layers: Sequence[int] | None = None,
                 lens: LensOverride | None = None) -> None:
        """``layers``: hidden-state indices to score through the logit lens (``score_layers``);
        ``lens``: user-given module paths for an architecture atlas.lens does not describe."""
        check_scoring_options(batch_size, max_length)
        batch_size = batch_size or DEFAULT_BATCH_SIZE.get(loaded.device.type, 8)
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.batch_size = batch_size
        limit = model_max_length(self.model)
        self.max_length = min(max_length, limit) if (max_length and limit) else (
            max_length or limit or 2048)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self._static_provenance: dict | None = None
        self.hidden, self.head = self._checked_head()
        self.layers: list[int] | None = None
        self.lens: Lens | None = None
        if layers is not None:
            self._set_up_lens(layers, lens)

    def _set_up_lens(self, layers: Sequence[int], override: LensOverride | None) -> None:
        """Resolve and verify the lens; the final index reuses the plain (verified) head."""
        lens = Lens.of(self.model, override)
        if self.head_path != "chunked":
            raise LensError(
                f"{type(self.model).__name__}: its logits are not its unembedding of the final "
                "hidden state plus a transform LM Atlas knows, so no layer can be read through "
                "a logit lens")
        layers = sorted(set(layers))
        beyond = [layer for layer in layers if not 0 <= layer <= lens.n_layers]
        if not layers or beyond:
            raise LensError(
                f"layers {beyond or layers}: this model has {lens.n_layers} blocks, so its hidden "
                f"states are 0..{lens.n_layers}")
        self.lens_check = lens.verify(self.model, self.device)
        self.lens, self.layers, self.lens_head = lens, layers, lens.head()

    def truncation_warning(self, n_truncated: int, n_texts: int) -> str | None:
        """What to tell the user when texts were cut to ``max_length`` tokens: the vector is
        still stored (its provenance counts them), but those texts are not scored whole."""
        if not n_truncated:
            return None
        limit = model_max_length(self.model)
        if limit is not None and self.max_length >= limit:
            fix = (f"that is the model's limit ({limit:,} positions), so split longer texts to "
                   "score them whole")
        else:
            fix = "raise --max-length" + (f" (up to the model's {limit:,})" if limit else "") + (
                " to score them whole")
        were = "was" if n_truncated == 1 else "were"
        return (f"{n_truncated:,} of {n_texts:,} texts {were} longer than {self.max_length:,} "
                f"tokens and {were} truncated (their log-likelihood covers the first "
                f"{self.max_length:,} tokens); {fix}")

    def provenance(self, n_truncated: int) -> dict:
        """How the vector was made (the tokenizer fingerprint is computed once per scorer)."""
        if self._static_provenance is None:
            self._static_provenance = self._describe()
        return {**self._static_provenance, "n_truncated": n_truncated}

    def _describe(self) -> dict:
        import transformers

        from atlas import __version__

        return {
            "tokenizer": getattr(self.tokenizer, "name_or_path", "") or "",
            "tokenizer_class": type(self.tokenizer).__name__,
            "tokenizer_fingerprint": tokenizer_fingerprint(self.tokenizer),
            "special_tokens": special_token_policy(self.tokenizer),
            "first_token_predicted": False,
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "device": self.device.type,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "head": self.head_path,
            **({"forward": "one pass, all hidden states (output_hidden_states)"}
               if self.layers is not None else {}),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "lm_atlas": __version__},
        }

    def _checked_head(self) -> tuple[Callable[..., torch.Tensor], Callable]:
        """Backbone + chunked head, verified once against the model's own logits.

        An architecture with an output transform we do not know falls back to the model's full
        logits (correct, but a [B, T, V] tensor per batch) rather than to wrong numbers.
        """
        backbone, head = self.model.base_model, output_head(self.model)

        def backbone_hidden(**inputs) -> torch.Tensor:
            return backbone(**inputs).last_hidden_state

        def model_logits(**inputs) -> torch.Tensor:
            return self.model(**inputs).logits

        probe = torch.arange(1, 9, device=self.device).unsqueeze(0) % self.model.config.vocab_size
        with torch.inference_mode():
            expected = model_logits(input_ids=probe).float().log_softmax(-1)
            ours = head(backbone_hidden(input_ids=probe)).log_softmax(-1)
        if torch.allclose(ours, expected, atol=1e-3, rtol=1e-3):
            self.head_path = "chunked"
            return backbone_hidden, head
        self.head_path = "full-logits"
        return model_logits, lambda logits: logits.float()

    def _chunk_positions(self) -> int:
        """Positions per unembedding chunk: as many float32 logit rows as the budget holds."""
        vocab = self.model.get_output_embeddings().weight.shape[0]
        budget = LOGIT_CHUNK_BYTES.get(self.device.type, 256 << 20)
        return max(1, budget // (vocab * 4))

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":  # pinned + non_blocking: the copy does not sync the host
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _batch_tensors(self, ids: list[list[int]]) -> tuple[torch.Tensor, PackedTargets]:
        """Right-padded token ids and the packed targets, on the device."""
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        packed = PackedTargets.from_ids(ids, width)
        return self._to_device(input_ids), PackedTargets(
            *(self._to_device(t) for t in (packed.positions, packed.targets, packed.rows)))

    @torch.inference_mode()
    def _score_batch(self, ids: list[list[int]]) -> torch.Tensor:
        """Per-text sums of a batch, still on the device: [1, B], or [len(layers), B] with layers.

        No attention mask is passed: with right padding, a causal model (checked at load) never
        lets a real token see a pad, so the mask would change nothing we read. Leaving it out
        keeps the attention kernels on their plain causal path and avoids the host syncs that
        building a padding mask costs in transformers.
        """
        input_ids, packed = self._batch_tensors(ids)
        chunk = self._chunk_positions()
        if self.layers is None:
            hidden = self.hidden(input_ids=input_ids)
            return packed_target_logprob_sums(hidden, packed, self.head, chunk).unsqueeze(0)
        output = self.model.base_model(input_ids=input_ids, output_hidden_states=True)
        sums = torch.empty((len(self.layers), len(ids)), dtype=torch.float64, device=self.device)
        for row, layer in enumerate(self.layers):
            if layer == self.lens.n_layers:  # the model's own, already normalised, final state
                hidden, head = output.last_hidden_state, self.head
            else:
                hidden, head = output.hidden_states[layer], self.lens_head
            sums[row] = packed_target_logprob_sums(hidden, packed, head, chunk)
        return sums

    @contextlib.contextmanager
    def _float32(self) -> Iterator[None]:
        original = self.loaded.dtype
        self.model.float()
        try:
            yield
        finally:
            self.model.to(original)

    def _finite_batch(self, ids: list[list[int]], indices: list[int]) -> np.ndarray:
        """[rows, B] sums on the host: one row, or one per lens layer."""
        sums = self._score_batch(ids).cpu().numpy()  # the one host sync of the batch
        if np.isfinite(sums).all():
            return sums
        if self.loaded.dtype != torch.float32:
            with self._float32():
                sums = self._score_batch(ids).cpu().numpy()
            if np.isfinite(sums).all():
                return sums
        bad = [indices[i] for i in np.flatnonzero(~np.isfinite(sums).all(0))][:10]
        raise ScoringError(
            f"non-finite log-likelihood (NaN/inf) for texts {bad} even in float32: the model's "
            "outputs are not finite (corrupt or overflowing weights?); nothing was stored"
        )

    def score(self, texts: Sequence[str], progress: bool = True,
              partial: PartialScores | None = None) -> Scores:
        """ℓ for every text, in the given order; texts already in ``partial`` are not re-scored."""
        if self.layers is not None:
            raise ValueError("this scorer reads lens layers: call score_layers()")
        partial = partial or PartialScores(None, len(texts))
        return self._score_rows(texts, progress, partial)[0]

    def score_encoded(self, encodings: Sequence[list[int]]) -> np.ndarray:
        """ℓ of token sequences the caller encoded (every token after the first predicted, as
        for texts), not truncated: atlas.calibration puts a start token in front of texts whose
        tokenizer adds none."""
        if self.layers is not None:
            raise ValueError("this scorer reads lens layers: call score_layers()")
        sums = np.empty(len(encodings))
        for batch in length_sorted_batches([len(ids) for ids in encodings], self.batch_size):
            sums[batch] = self._finite_batch([encodings[i] for i in batch], batch)[0]
        return sums

    def score_layers(self, texts: Sequence[str], progress: bool = True,
                     partial: PartialScores | None = None) -> dict[int, Scores]:
        """ℓ through the logit lens for every requested hidden state, from one forward pass per
        batch: {layer: Scores}. The final index is the model's own output (= ``score``)."""
        if self.layers is None:
            raise ValueError("this scorer has no lens layers: pass layers= to Scorer")
        partial = partial or PartialScores(None, len(texts), rows=len(self.layers))
        scores = self._score_rows(texts, progress, partial)
        return dict(zip(self.layers, scores, strict=True))

    def _score_rows(self, texts: Sequence[str], progress: bool,
                    partial: PartialScores) -> list[Scores]:
        tokenized = tokenize(self.tokenizer, texts, self.max_length)
        lengths = [len(ids) for ids in tokenized.ids]
        todo = np.flatnonzero(np.isnan(partial.rows).any(0))
        todo_tokens = sum(lengths[i] for i in todo)
        with _progress(progress, len(todo), todo_tokens) as advance:
            for batch in length_sorted_batches([lengths[i] for i in todo], self.batch_size):
                indices = todo[batch].tolist()
                sums = self._finite_batch([tokenized.ids[i] for i in indices], indices)
                partial.record(indices, sums)
                advance(len(indices), sum(lengths[i] for i in indices))
        provenance = self.provenance(tokenized.n_truncated)
        return [Scores(loglik=row.copy(), n_tokens=np.asarray(lengths, dtype=np.int64),
                       n_truncated=tokenized.n_truncated,
                       provenance={**provenance, **({"lens": self.lens.describe(layer)}
                                                    if self.lens is not None else {})},
                       n_resumed=len(texts) - len(todo), scored_tokens=todo_tokens)
                for row, layer in zip(partial.rows, self.layers or [None], strict=True)]


class PartialScores:
    """The sums of a vector in progress, kept in a side file so a killed run resumes.

    The file lives outside the atlas, so nothing partial is ever visible to a query; it is
    replaced atomically (write, then rename) at most every ``PARTIAL_FLUSH_SECONDS``. NaN marks a
    text not scored yet (scores themselves are never NaN).
    """

    def __init__(self, path: Path | None, n_texts: int, rows: int | None = None) -> None:
        """``rows``: one vector per lens layer ([rows, n_texts]); None: one vector."""
        self.path = path
        self.loglik = np.full(n_texts if rows is None else (rows, n_texts), np.nan)
        if path is not None:
            self._temporary.unlink(missing_ok=True)  # a run killed while saving left it
            stored = _load_partial(path)
            if stored is not None and stored.shape == self.loglik.shape:
                self.loglik = stored
        self._flushed = time.monotonic()
        self._warned = False

    @property
    def _temporary(self) -> Path:
        return self.path.with_suffix(".tmp.npy")

    @property
    def rows(self) -> np.ndarray:
        """The sums as [rows, n_texts] (a view)."""
        return self.loglik.reshape(-1, self.loglik.shape[-1])

    def record(self, indices: list[int], sums: np.ndarray) -> None:
        """``sums``: [len(indices)] or [rows, len(indices)]."""
        self.rows[:, indices] = np.asarray(sums).reshape(self.rows.shape[0], len(indices))
        if time.monotonic() - self._flushed >= PARTIAL_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Save the sums so far. The side file only saves work, so a failed save (disk full)
        is reported once and scoring goes on; the vector itself is written to the atlas."""
        if self.path is None or np.isnan(self.loglik).all():
            return
        self._flushed = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._temporary, "wb") as file:
                np.save(file, self.loglik)
            os.replace(self._temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._temporary.unlink()
            if not self._warned:
                self._warned = True
                warnings.warn(f"{self.path}: cannot save the scores so far ({exc}); scoring "
                              "goes on, but a killed run would start again", stacklevel=2)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self._temporary.unlink(missing_ok=True)


def _load_partial(path: Path) -> np.ndarray | None:
    """The saved sums, or None when there are none or the file is unreadable (then the texts
    are scored again rather than trusted)."""
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError):
        return None


@contextlib.contextmanager
def _progress(enabled: bool, n_texts: int, n_tokens: int) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar over texts that also shows tokens/s."""
    if not enabled:
        yield lambda texts, tokens: None
        return
    with progress_bar("scoring", "{task.fields[rate]}", transient=True) as bar:
        task = bar.add_task("scoring", total=n_texts, rate="")
        done_tokens = 0

        def advance(texts: int, tokens: int) -> None:
            nonlocal done_tokens
            done_tokens += tokens
            elapsed = bar.tasks[0].elapsed or 1e-9
            bar.update(task, advance=texts, rate=f"{done_tokens / elapsed:,.0f} tok/s")

        yield advance
