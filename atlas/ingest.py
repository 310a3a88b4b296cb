"""Ingest: load a model, score a stored text set, write the complete vector atomically.

Idempotent: the same variant + text set + scoring config is a no-op decided before any model is
loaded. Resumable: the store is not held open while scoring, and the vector is written in one
transaction at the end, so a killed ingest leaves nothing partial in the atlas; the sums scored so
far are saved beside it (``ATLAS.duckdb.pending/``) every 30 s, and re-running the same ingest
scores only the texts still missing.

With ``layers`` (the logit lens, atlas.lens) one forward pass per batch scores every requested
hidden state, and each is stored as its own variant ``FAMILY-SIZE#LAYER``, one transaction per
vector. Which layers are missing is decided from the model's config before its weights load, so
a re-run loads nothing when every layer is stored, and scores only the missing ones otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from atlas.errors import LockedError, NoSpaceError, StoreError
from atlas.keys import ModelKey
from atlas.layers import (
    LensError,
    LensOverride,
    format_layers,
    layer_count,
    lens_spec,
    model_type_of,
    parse_layers,
    peek_config,
    resolve_layers,
)
from atlas.lens import Lens
from atlas.loading import LoadedModel, load_model, resolve_device, resolve_dtype
from atlas.scoring import PartialScores, Scorer, Scores, check_scoring_options
from atlas.specs import ModelSpec
from atlas.store import Store
from atlas.weights import DEFAULT_DIM, WeightError, WeightSketch, sketch_parameters


@dataclass
class IngestResult:
    key: str
    textset: str
    status: str  # stored | skipped
    seconds: float = 0.0  # the whole ingest
    tokens: int = 0
    n_params: int | None = None
    score_seconds: float = 0.0  # scoring alone, without loading the model
    resumed: int = 0  # texts whose scores came from an interrupted run of the same config
    sketched: bool = False  # a weight sketch was stored with the vector
    sketch_note: str | None = None  # why no sketch was stored (disabled, quantized weights …)
    layers: dict[int, str] = field(default_factory=dict)  # lens runs: layer → stored | skipped
    n_truncated: int = 0  # texts longer than max_length tokens, scored on their first ones
    warnings: list[str] = field(default_factory=list)  # for the user: the CLI prints them

    @property
    def tokens_per_second(self) -> float:
        """Scoring throughput (model loading excluded)."""
        return self.tokens / self.score_seconds if self.score_seconds else 0.0


def normalise_source(source: str) -> str:
    """Local paths become absolute (re-runs from elsewhere match); hub ids stay as they are."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def scoring_config_id(spec: ModelSpec, key: ModelKey, max_length: int | None,
                      lens: LensOverride | None = None) -> str:
    """What makes two scorings of a variant the same, known before loading anything."""
    dtype = resolve_dtype(spec.dtype, resolve_device(spec.device))
    payload = {"source": spec.source, "revision": spec.revision, "quant": key.quant,
               "dtype": str(dtype).removeprefix("torch."), "max_length": max_length}
    if lens is not None and lens.given:  # user-given lens paths make another scoring
        payload["lens"] = lens.as_dict()
    if spec.quantize is not None and spec.quantize.method == "gptq":  # GPTQ depends on them
        payload["calibration"] = spec.calibration or "default text set, training split"
    if spec.allow_missing:  # randomly initialised weights make another model
        payload["allow_missing"] = sorted(set(spec.allow_missing))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def pending_path(db_path: Path, key: ModelKey, suffix: str) -> Path:
    """Files of work in progress sit beside the atlas, in ``ATLAS.duckdb.pending/``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(key))
    return db_path.parent / f"{db_path.name}.pending" / f"{name}{suffix}"


def save_pending(db_path: Path, key: ModelKey, loglik, provenance: dict,
                 fields: dict) -> Path:
    """Keep a scored vector the atlas could not take, as a Parquet file ``atlas import`` reads."""
    import polars as pl

    path = pending_path(db_path, key, ".parquet")
    path.parent.mkdir(exist_ok=True)
    pl.DataFrame({"key": [str(key)], **{name: [value] for name, value in fields.items()},
                  "loglik": [list(map(float, loglik))],
                  "provenance": [json.dumps(provenance)]}).write_parquet(path)
    return path


def load_for_scoring(spec: ModelSpec, texts: Sequence[str]) -> LoadedModel:
    """The model as it is scored: quantized when ``spec.quantize`` says so, GPTQ calibrated on
    texts that are not among the scored ``texts``."""
    if spec.quantize is None:
        return load_model(spec)
    from atlas import quantize

    calibration = quantize.calibration_texts(texts, path=spec.calibration) if (
        spec.quantize.method == "gptq") else None
    return quantize.load_quantized(spec, spec.quantize, calibration)


def vector_provenance(scores: Scores, spec: ModelSpec, loaded: LoadedModel) -> dict:
    """What is stored with a vector: how it was scored, where the model came from, and its
    quantization (the store files that in ``quantizations``)."""
    from atlas.quantize import describe

    allowed = {"allow_missing": {"patterns": sorted(set(spec.allow_missing)),
                                 **loaded.allowed_weights}} if spec.allow_missing else {}
    return {**scores.provenance, "source": spec.source, "revision": spec.revision,
            "quantization": describe(spec, loaded), **allowed}


def _score_resumably(scorer: Scorer, texts: list[str], partial: PartialScores,
                     progress: bool) -> Scores:
    try:
        return scorer.score(texts, progress=progress, partial=partial)
    except BaseException:
        partial.flush()  # an error or Ctrl-C keeps what was scored for the next run
        raise


def _write_or_keep(store: Store, key: ModelKey, textset_id: int, textset: str, scores: Scores,
                   config_id: str, provenance: dict, fields: dict, force: bool) -> bool:
    """Write the vector; if another process holds the atlas, keep it as an importable file."""
    try:
        return store.write_vector(
            key, textset_id=textset_id, loglik=scores.loglik, n_tokens=scores.n_tokens,
            n_truncated=scores.n_truncated, config_id=config_id, provenance=provenance,
            force=force, **fields)
    except (LockedError, NoSpaceError) as exc:
        pending = save_pending(store.path, key, scores.loglik, provenance, fields)
        raise type(exc)(
            f"{exc} The scored vector is kept in {pending}: once the file can be written, run "
            f"`atlas import vectors {pending} --textset {textset}`.") from exc


def _sketch(model, sketch_dim: int, progress: bool,
            quantized: bool = False) -> tuple[WeightSketch | None, str | None]:
    """The weight sketch of the loaded model, or None and why (sketching must not fail ingest)."""
    if sketch_dim <= 0:
        return None, "disabled (sketch_dim 0)"
    if quantized:  # packed integers are not the weights; the float variant carries the sketch
        return None, "quantized weights are not sketched (the unquantized variant's sketch is)"
    try:
        return sketch_parameters(model, dim=sketch_dim, progress=progress), None
    except WeightError as exc:  # quantized or offloaded weights: the vector is still worth it
        return None, str(exc)


def ingest(store: Store, spec: ModelSpec, key: ModelKey, textset: str, *,
           parent: str | None = None, batch_size: int | None = None, max_length: int | None = None,
           force: bool = False, progress: bool = True,
           sketch_dim: int = DEFAULT_DIM, layers: str | Sequence[int] | None = None,
           lens: LensOverride | None = None) -> IngestResult:
    """Score ``spec`` on ``textset`` and store the vector under ``key``.

    With ``sketch_dim`` > 0 the loaded model's weights are also sketched (atlas.weights) and the
    sketch stored beside the vector, so weight distances need no second load of the checkpoint.
    With ``layers`` ("all", "0,6,12" or a list of hidden-state indices) the logit-lens vectors
    of those hidden states are stored instead, each under ``key`` with its layer set
    (``ingest_layers``).
    """
    check_scoring_options(batch_size, max_length)
    if layers is not None:
        return ingest_layers(store, spec, key, textset, layers, lens=lens, parent=parent,
                             batch_size=batch_size, max_length=max_length, force=force,
                             progress=progress)
    if lens is not None and lens.given:
        raise LensError("--lens-norm/--lens-head describe the logit lens: they need --layers")
    spec.source = normalise_source(spec.source)
    stored_set = store.textset(textset)
    config_id = scoring_config_id(spec, key, max_length)
    if not store.needs_vector(str(key), stored_set.textset_id, spec.source, config_id, force):
        return IngestResult(str(key), textset, "skipped")
    run_id = store.start_run(str(key), textset, spec.source)
    started = time.perf_counter()
    try:
        texts = store.texts(stored_set.textset_id)
        store.release()  # let readers in while we score; the write reopens it
        partial_path = pending_path(
            store.path, key, f".{stored_set.textset_id}.{config_id}.partial.npy")
        if force:
            partial_path.unlink(missing_ok=True)  # --force re-scores every text
        partial = PartialScores(partial_path, len(texts))
        loaded = load_for_scoring(spec, texts)
        scorer = Scorer(loaded, batch_size=batch_size, max_length=max_length)
        scoring_started = time.perf_counter()
        scores = _score_resumably(scorer, texts, partial, progress)
        score_seconds = time.perf_counter() - scoring_started
        provenance = vector_provenance(scores, spec, loaded)
        sketch, sketch_note = _sketch(loaded.model, sketch_dim, progress,  # store released
                                      quantized=provenance["quantization"] is not None)
        fields = dict(n_params=loaded.n_params, parent=parent, source=spec.source,
                      revision=spec.revision)
        written = _write_or_keep(store, key, stored_set.textset_id, textset, scores, config_id,
                                 provenance, fields, force)
        partial.discard()
        if written and sketch is not None:
            store.write_sketch(key, sketch)
        elif written and force:
            store.delete_sketch(key)  # it may be of the weights this vector replaced
    except BaseException as exc:
        with contextlib.suppress(StoreError):  # locked, full: marked interrupted next time
            store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}",
                             seconds=time.perf_counter() - started)
        raise
    seconds = time.perf_counter() - started
    tokens = scores.scored_tokens
    status = "stored" if written else "skipped"
    store.finish_run(run_id, "done" if written else "skipped", seconds=seconds, tokens=tokens)
    return IngestResult(str(key), textset, status, seconds, tokens, loaded.n_params,
                        score_seconds, scores.n_resumed, sketched=written and sketch is not None,
                        sketch_note=sketch_note if written else None,
                        **_truncation(scorer, scores, len(texts)))


def _truncation(scorer: Scorer, scores: Scores, n_texts: int) -> dict:
    """IngestResult's truncation fields: the count, and the warning the user must see."""
    warning = scorer.truncation_warning(scores.n_truncated, n_texts)
    return {"n_truncated": scores.n_truncated, "warnings": [warning] if warning else []}


def _lens_plan(spec: ModelSpec, requested: str | list[int], lens: LensOverride | None,
               config=None) -> tuple[list[int], int, str]:
    """(layers to score, number of blocks, architecture) from the config; raises on a layer
    the model does not have or an architecture without a lens, before the weights load."""
    if config is None:
        gguf = spec.gguf_file
        config = peek_config(str(gguf.parent) if gguf else spec.source, spec.revision,
                             spec.trust_remote_code, gguf.name if gguf else None)
        if config is None:  # unreadable without the weights: decided after loading
            return [], -1, ""
    architecture = model_type_of(config)
    lens_spec(architecture, lens)  # an architecture we cannot read fails here, loading nothing
    if lens is not None and lens.given:  # a user-given module path that does not exist too
        skeleton = _weightless(config, spec.trust_remote_code)
        if skeleton is not None:
            Lens.of(skeleton, lens)
    n_layers = layer_count(config)
    return resolve_layers(requested, n_layers, spec.source), n_layers, architecture


def _weightless(config, trust_remote_code: bool):
    """The model ``config`` describes, on the meta device: its modules without weights or memory
    (None if transformers cannot build it from the config alone; loading explains why)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, OSError, ImportError):
        return None


def ingest_layers(store: Store, spec: ModelSpec, key: ModelKey, textset: str,
                  layers: str | Sequence[int], *, lens: LensOverride | None = None,
                  parent: str | None = None, batch_size: int | None = None,
                  max_length: int | None = None, force: bool = False,
                  progress: bool = True) -> IngestResult:
    """Score the hidden states ``layers`` through the logit lens in one forward pass per batch
    and store each as the variant ``key`` with ``layer`` set, one transaction per vector.

    Layers already stored with the same config are skipped (all stored: nothing is loaded).
    Lens variants get no weight sketch: they share the weights of the model output variant.
    """
    check_scoring_options(batch_size, max_length)
    if key.layer is not None:
        raise LensError(f"{key}: the key of a layers run has no #LAYER; each layer sets its own")
    requested = parse_layers(layers)
    spec.source = normalise_source(spec.source)
    stored_set = store.textset(textset)
    config_id = scoring_config_id(spec, key, max_length, lens)
    wanted, n_layers, _ = _lens_plan(spec, requested, lens)

    def missing_of(indices: list[int]) -> list[int]:
        return [layer for layer in indices if store.needs_vector(
            str(replace(key, layer=layer)), stored_set.textset_id, spec.source, config_id, force)]

    missing = missing_of(wanted)
    if n_layers >= 0 and not missing:
        return IngestResult(str(key), textset, "skipped",
                            layers={layer: "skipped" for layer in wanted})
    run_label = f"{key}#{format_layers(wanted) if wanted else requested}"
    run_id = store.start_run(run_label, textset, spec.source)
    started = time.perf_counter()
    try:
        texts = store.texts(stored_set.textset_id)
        store.release()  # let readers in while we score; the writes reopen it
        loaded = load_for_scoring(spec, texts)
        if n_layers < 0:  # the config could not be read on its own: decide now
            wanted, n_layers, _ = _lens_plan(spec, requested, lens, loaded.model.config)
            missing = missing_of(wanted)
            store.release()
        written: dict[int, str] = {layer: "skipped" for layer in wanted}
        scores, score_seconds, tokens, resumed, truncation = {}, 0.0, 0, 0, {}
        if missing:
            partial_path = pending_path(
                store.path, key, f".{stored_set.textset_id}.{config_id}."
                f"layers-{format_layers(missing)}.partial.npy")
            if force:
                partial_path.unlink(missing_ok=True)
            partial = PartialScores(partial_path, len(texts), rows=len(missing))
            scorer = Scorer(loaded, batch_size=batch_size, max_length=max_length,
                            layers=missing, lens=lens)
            scoring_started = time.perf_counter()
            try:
                scores = scorer.score_layers(texts, progress=progress, partial=partial)
            except BaseException:
                partial.flush()
                raise
            score_seconds = time.perf_counter() - scoring_started
            fields = dict(n_params=loaded.n_params, parent=parent, source=spec.source,
                          revision=spec.revision)
            _write_layers(store, key, stored_set.textset_id, textset, scores, config_id,
                          lambda layer_scores: vector_provenance(layer_scores, spec, loaded),
                          fields, force, written)
            partial.discard()
            first = next(iter(scores.values()))
            tokens, resumed = first.scored_tokens, first.n_resumed
            truncation = _truncation(scorer, first, len(texts))
    except BaseException as exc:
        with contextlib.suppress(StoreError):
            store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}",
                             seconds=time.perf_counter() - started)
        raise
    seconds = time.perf_counter() - started
    any_stored = "stored" in written.values()
    store.finish_run(run_id, "done" if any_stored else "skipped", seconds=seconds, tokens=tokens)
    return IngestResult(str(key), textset, "stored" if any_stored else "skipped", seconds, tokens,
                        loaded.n_params, score_seconds, resumed, sketched=False,
                        sketch_note=("lens layers share the weights of the model output "
                                     "variant: ingest it without --layers for a weight sketch")
                        if any_stored else None, layers=written, **truncation)


def _write_layers(store: Store, key: ModelKey, textset_id: int, textset: str,
                  scores: dict, config_id: str, provenance_of: Callable[[Scores], dict],
                  fields: dict, force: bool, written: dict[int, str]) -> None:
    """One transaction per layer; if the atlas is taken meanwhile, keep the rest as files."""
    for layer, layer_scores in scores.items():
        layer_key = replace(key, layer=layer)
        provenance = provenance_of(layer_scores)
        try:
            stored = store.write_vector(
                layer_key, textset_id=textset_id, loglik=layer_scores.loglik,
                n_tokens=layer_scores.n_tokens, n_truncated=layer_scores.n_truncated,
                config_id=config_id, provenance=provenance, force=force, **fields)
        except (LockedError, NoSpaceError) as exc:
            kept = [save_pending(store.path, replace(key, layer=other), later.loglik,
                                 provenance_of(later), fields)
                    for other, later in scores.items() if written[other] != "stored"]
            raise type(exc)(
                f"{exc} The {len(kept)} layer vectors not yet stored are kept in "
                f"{kept[0].parent}: once the file can be written, run `atlas import vectors FILE "
                f"--textset {textset}` for each of {', '.join(p.name for p in kept)}.") from exc
        written[layer] = "stored" if stored else "skipped"


# building blocks for other writers of vectors (atlas.bulk) ----------------------------------------
def sketch_weights(model, sketch_dim: int = DEFAULT_DIM, progress: bool = False,
                   quantized: bool = False) -> tuple[WeightSketch | None, str | None]:
    """The weight sketch ingest stores with a model-output vector, or None and why not."""
    return _sketch(model, sketch_dim, progress, quantized)


def lens_layers(spec: ModelSpec, layers: str | Sequence[int],
                lens: LensOverride | None = None) -> list[int] | None:
    """The hidden states ``layers`` names for ``spec``'s model, from its config alone (None when
    the config cannot be read without the weights); raises ``LensError`` as ingest would."""
    wanted, n_layers, _ = _lens_plan(spec, parse_layers(layers), lens)
    return wanted if n_layers >= 0 else None
