"""Monte-Carlo KL between two loaded models: the reference the atlas's estimator is checked by.

The atlas reports Var(ℓ_a − ℓ_b) / (2 B̄ ln 2), an estimate of KL that assumes texts drawn near
the models' own distribution and small differences. Here KL(p_a ‖ p_b) over sequences of
``length`` tokens is measured directly on samples drawn from p_a:

- **Rao-Blackwellised** (models sharing a tokenizer): along each ancestral sample x ~ p_a the
  full next-token KL Σ_v p_a(v | x_<t) (log p_a − log p_b)(v | x_<t) is summed over t. Its mean
  is KL(p_a ‖ p_b) of the length-``length`` marginals, with far less variance than the plain
  form; the plain form log p_a(x) − log p_b(x) of the same samples is kept beside it.
- **Sequence-level** (different tokenizers): log p_a(x) from sampling minus log p_b of the
  decoded text re-tokenised by b. Both are over every token of the text after the model's start
  token: a's samples follow its start token, and b scores [start] + its encoding of the text by
  the scorer's ℓ (which never predicts the first token of an encoding). With a tokenizer that
  adds a BOS, that is b's ℓ of the text; with one that adds none, ℓ alone would leave b's first
  text token unpredicted and log p_b(x) short of a term, so the start token the sampler uses (BOS,
  else EOS) is put in front. An EOS the tokenizer appends is left out: samples are cut at
  ``length`` tokens, not ended.

Sampling is ancestral at temperature 1 over the full vocabulary (the models' generation configs
are not used: no top-k, top-p or repetition penalty), from the tokenizer's BOS (EOS where it has
none) or from the first ``prompt_tokens`` tokens of prompt texts. EOS is an ordinary token:
every sample has exactly ``length`` tokens. All sequences of a batch are sampled together with a
KV cache per model; sums accumulate on the device and come to the host once per batch (the
Gumbel-max draw needs no host sync). Bits/byte divide by the UTF-8 bytes of the decoded samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from atlas.errors import AtlasError
from atlas.loading import LoadedModel
from atlas.scoring import special_token_policy, tokenizer_fingerprint
from atlas.specs import ModelSpec, QuantSpec

PROMPT_TOKENS = 32  # --prompts: each sample continues the first tokens of a text
QUANT_FIELDS = ("method", "bits", "group_size", "qtype", "source_quant")
DEFAULT_BATCH = {"cpu": 16, "cuda": 64, "mps": 32}


class CalibrationError(AtlasError):
    """A calibration that cannot be measured as asked (no start token, prompts too short …)."""


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error, in nats per token and in bits per byte."""

    nats_per_token: float
    se: float
    bits_per_byte: float
    se_bits_per_byte: float

    def as_dict(self) -> dict:
        return {"nats_per_token": self.nats_per_token, "se": self.se,
                "bits_per_byte": self.bits_per_byte, "se_bits_per_byte": self.se_bits_per_byte}


@dataclass(frozen=True)
class Samples:
    """Per-sample sums of one direction: KL(p_a ‖ p_b) on samples drawn from p_a."""

    kl: np.ndarray  # nats per sample: Rao-Blackwellised sums, or the plain form (sequence level)
    log_ratio: np.ndarray  # nats per sample: log p_a(x) − log p_b(x), the plain form
    n_bytes: np.ndarray  # UTF-8 bytes of each decoded sample
    length: int  # tokens sampled per sequence
    method: str  # rao-blackwell | sequence

    def estimate(self, plain: bool = False) -> Estimate:
        return estimate(self.log_ratio if plain else self.kl, self.n_bytes, self.length)


def estimate(per_sample: np.ndarray, n_bytes: np.ndarray, length: int) -> Estimate:
    """Mean KL per token and per byte with SEs; bits/byte is a ratio of means (Σ KL / Σ bytes),
    its SE by the delta method."""
    n = len(per_sample)
    if n < 2:
        raise CalibrationError(f"{n} sample(s): a standard error needs at least 2 samples")
    mean = float(per_sample.mean())
    se = float(per_sample.std(ddof=1) / math.sqrt(n))
    mean_bytes = float(n_bytes.mean())
    ratio = mean / mean_bytes
    residual = per_sample - ratio * n_bytes
    se_ratio = float(residual.std(ddof=1) / math.sqrt(n) / mean_bytes)
    return Estimate(mean / length, se / length, ratio / math.log(2), se_ratio / math.log(2))


def same_tokenizer(a: LoadedModel, b: LoadedModel) -> bool:
    """Token-level KL needs equal vocabularies and the same start policy."""
    return (tokenizer_fingerprint(a.tokenizer) == tokenizer_fingerprint(b.tokenizer)
            and special_token_policy(a.tokenizer) == special_token_policy(b.tokenizer))


def start_token(tokenizer) -> int:
    """The token samples start from and sequence-level scores condition on: BOS, else EOS."""
    start = tokenizer.bos_token_id
    start = tokenizer.eos_token_id if start is None else start
    if start is None:
        raise CalibrationError("the tokenizer has neither a BOS nor an EOS token to start "
                               "samples from; pass --prompts TEXTSET")
    return start


def start_ids(tokenizer, n: int, prompts: Sequence[str] | None = None,
              prompt_tokens: int = PROMPT_TOKENS) -> torch.Tensor:
    """[n, P] start tokens: BOS (EOS when there is none), or the first tokens of the prompts
    (cycled), all cut to the shortest so that no sequence needs padding."""
    if not prompts:
        return torch.full((n, 1), start_token(tokenizer), dtype=torch.long)
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    width = min(prompt_tokens, *(len(ids) for ids in encoded))
    if width < 1:
        raise CalibrationError("--prompts: a text of the set has no tokens")
    rows = [encoded[i % len(encoded)][:width] for i in range(n)]
    return torch.tensor(rows, dtype=torch.long)


class _Stepper:
    """One model's incremental forward pass over a batch, with its own KV cache."""

    def __init__(self, loaded: LoadedModel, vocab: int) -> None:
        self.model, self.vocab, self.cache = loaded.model, vocab, None

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (float32, [B, vocab]) of the next token after ``ids``."""
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1, : self.vocab].float().log_softmax(-1)


def _vocab(loaded: LoadedModel) -> int:
    return loaded.model.get_output_embeddings().weight.shape[0]


def _gumbel_draw(logp: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A token from each row of ``logp`` (exponential race = Gumbel-max; no host sync)."""
    race = torch.empty_like(logp).exponential_(generator=generator)
    return (logp - race.log()).argmax(-1, keepdim=True)


@torch.inference_mode()
def sample_batch(a: LoadedModel, b: LoadedModel | None, starts: torch.Tensor, length: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample ``length`` tokens from a after ``starts``; returns (tokens [B, length], Σ KL(a‖b)
    per sequence, Σ log p_a(x_t) − log p_b(x_t) per sequence) — b None: only log p_a, KL 0."""
    vocab = _vocab(a) if b is None else min(_vocab(a), _vocab(b))
    step_a = _Stepper(a, vocab)
    step_b = None if b is None else _Stepper(b, vocab)
    ids = starts.to(a.device)
    kl = torch.zeros(ids.shape[0], dtype=torch.float64, device=a.device)
    log_ratio = torch.zeros_like(kl)
    tokens = []
    for _ in range(length):
        logp_a = step_a(ids)
        logp_b = step_b(ids.to(b.device)).to(a.device) if step_b is not None else None
        ids = _gumbel_draw(logp_a, generator)
        drawn = logp_a.gather(-1, ids).squeeze(-1)
        if logp_b is not None:
            kl += (logp_a.exp() * (logp_a - logp_b)).sum(-1).double()
            drawn = drawn - logp_b.gather(-1, ids).squeeze(-1)
        log_ratio += drawn.double()
        tokens.append(ids)
    return torch.cat(tokens, 1), kl, log_ratio


def _utf8_bytes(tokenizer, tokens: np.ndarray) -> tuple[list[str], np.ndarray]:
    texts = tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
    return texts, np.array([len(t.encode("utf-8")) for t in texts], dtype=np.float64)


def monte_carlo(a: LoadedModel, b: LoadedModel, *, samples: int = 64, length: int = 128,
                seed: int = 0, prompts: Sequence[str] | None = None,
                batch_size: int | None = None,
                score_b: Callable[[list[str]], np.ndarray] | None = None,
                advance: Callable[[int], None] | None = None) -> Samples:
    """KL(p_a ‖ p_b) on ``samples`` ancestral samples of ``length`` tokens from a.

    Token-level (Rao-Blackwellised) when the tokenizers agree; otherwise sequence-level, with
    ``score_b`` giving b's log-likelihood of each decoded text (atlas.scoring.Scorer's ℓ).
    ``advance`` is told how many samples each finished batch holds (a progress bar).
    """
    if samples < 2 or length < 1:
        raise CalibrationError(f"--samples {samples} --length {length}: give at least 2 samples "
                               "of at least 1 token")
    token_level = same_tokenizer(a, b)
    if not token_level and (score_b is None or prompts):
        raise CalibrationError("the two models tokenize differently: the sequence-level KL "
                               "needs a scorer for the second model, and starts from BOS "
                               "(leave out --prompts)")
    batch_size = batch_size or DEFAULT_BATCH.get(a.device.type, 16)
    generator = torch.Generator(device=a.device).manual_seed(seed)
    starts = start_ids(a.tokenizer, samples, prompts)
    kl, ratio, n_bytes = [], [], []
    for first in range(0, samples, batch_size):
        batch = starts[first : first + batch_size]
        tokens, kl_sum, ratio_sum = sample_batch(a, b if token_level else None, batch, length,
                                                 generator)
        sums = torch.stack([kl_sum, ratio_sum]).cpu().numpy()  # the batch's one transfer
        texts, sizes = _utf8_bytes(a.tokenizer, tokens.cpu().numpy())
        if not token_level:
            sums[1] -= score_b(texts)
            sums[0] = sums[1]
        kl.append(sums[0])
        ratio.append(sums[1])
        n_bytes.append(sizes)
        if advance is not None:
            advance(len(batch))
    return Samples(np.concatenate(kl), np.concatenate(ratio), np.concatenate(n_bytes), length,
                   "rao-blackwell" if token_level else "sequence")


# -- from stored variants to a measurement ------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """What the atlas recorded about how a variant was loaded (its models and quantizations
    rows)."""

    key: str
    source: str | None
    revision: str | None
    layer: int | None
    quantization: dict | None  # method, bits, group_size, qtype, source_quant; None: float


def variant_spec(variant: Variant, device: str, dtype: str) -> ModelSpec:
    """The spec ingest loaded ``variant`` from, with the quantization it applied: the recorded
    one, unless that is the source's own (a GGUF type, a GPTQ checkpoint's config)."""
    from atlas.quantize import source_label

    if variant.layer is not None:
        raise CalibrationError(f"{variant.key} is a logit-lens layer, not a model one can sample "
                               "from; calibrate model outputs (keys without #LAYER)")
    if not variant.source:
        raise CalibrationError(f"{variant.key} has no recorded source (an imported vector?); "
                               "calibrate needs variants ingested from a loadable model")
    spec = ModelSpec(source=variant.source, revision=variant.revision, device=device,
                     dtype=dtype)
    if variant.quantization is not None:
        fields = {name: variant.quantization.get(name) for name in QUANT_FIELDS}
        recorded = QuantSpec(**fields)
        if recorded.label != source_label(spec):
            spec.quantize = recorded
    return spec


def load_variant(spec: ModelSpec, texts: Sequence[str]) -> LoadedModel:
    """Loaded as ingest loads it (GPTQ calibrated on texts outside ``texts``), torchao's weights
    dequantized once (``dequantize_once``). A float GGUF source loads from the float checkpoint
    its quantized variants are made from (``dequantized_gguf``, cached): transformers would
    dequantize the file again on every load."""
    from atlas.quantize import dequantized_gguf, load_for_scoring

    if spec.gguf_file is not None and spec.quantize is None:
        spec = dequantized_gguf(spec)
    loaded = load_for_scoring(spec, texts)
    if spec.quantize is not None and spec.quantize.method == "torchao":
        dequantize_once(loaded.model)
    return loaded


def dequantize_once(model: torch.nn.Module) -> int:
    """Replace torchao weight-only integer weights by the float weights they stand for.

    torchao's linear for these weights is ``F.linear(x, weight.dequantize(), bias)``: it
    dequantizes every weight on every call, which made an int8 SmolLM2 step 3× slower than a
    float one on the CPU. Sampling calls each linear once per token, so dequantizing once gives
    the same numbers (the same float weights, the same ``F.linear``) at the float speed. Weights
    with activation quantization are left alone. Returns how many were replaced."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    replaced = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, IntxUnpackedToInt8Tensor) and (
                weight.activation_quantization is None):
            module.weight = torch.nn.Parameter(weight.dequantize(), requires_grad=False)
            replaced += 1
    return replaced


def sequence_loglik(model: LoadedModel) -> Callable[[list[str]], np.ndarray]:
    """log p(text) under ``model``, every token of the text predicted after the start token
    (the sequence-level form's log p_b; see the module docstring)."""
    from atlas.scoring import Scorer

    scorer, start = Scorer(model), start_token(model.tokenizer)

    def score(texts: list[str]) -> np.ndarray:
        encoded = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return scorer.score_encoded([[start, *ids] for ids in encoded])

    return score


def measure(a: LoadedModel, b: LoadedModel, *, samples: int, length: int, seed: int,
            prompts: Sequence[str] | None = None, batch_size: int | None = None,
            progress: bool = True) -> tuple[Samples, Samples]:
    """KL(a‖b) on samples of a and KL(b‖a) on samples of b (seeds ``seed``, ``seed + 1``)."""
    from atlas.progress import progress_bar

    def scorer(model: LoadedModel) -> Callable[[list[str]], np.ndarray] | None:
        return None if same_tokenizer(a, b) else sequence_loglik(model)

    options = dict(samples=samples, length=length, prompts=prompts, batch_size=batch_size)
    with progress_bar("sampling", transient=True, disable=not progress) as bar:
        task = bar.add_task("sampling", total=2 * samples)

        def advance(n: int) -> None:
            bar.update(task, advance=n)

        ab = monte_carlo(a, b, seed=seed, score_b=scorer(b), advance=advance, **options)
        ba = monte_carlo(b, a, seed=seed + 1, score_b=scorer(a), advance=advance, **options)
    return ab, ba


def versions() -> dict:
    import transformers

    from atlas import __version__

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "lm_atlas": __version__}


def check_floor_dtype(dtype: str) -> None:
    if dtype not in ("bfloat16", "float16"):
        raise CalibrationError(f"--dtype {dtype}: the floor compares float32 with a lower "
                               "precision; give --dtype bfloat16 or float16")


def precision_floor(spec: ModelSpec, texts: Sequence[str], mean_bytes: float, *,
                    dtype: str = "bfloat16", batch_size: int | None = None,
                    progress: bool = True) -> dict:
    """KL (bits/byte, with SE) between the model's vectors scored in float32 and in ``dtype``,
    and between float32 vectors scored at two batch sizes (padding and kernel choice): the
    rounding under which a KL means nothing."""
    from dataclasses import replace

    from atlas.kl import kl_bpb, kl_se_bpb
    from atlas.scoring import Scorer

    check_floor_dtype(dtype)
    exact = load_variant(spec, texts)
    reference = Scorer(exact, batch_size=batch_size)
    sizes = [reference.batch_size, 8 if reference.batch_size != 8 else 1]
    ell = reference.score(texts, progress=progress).loglik
    batched = Scorer(exact, batch_size=sizes[1]).score(texts, progress=progress).loglik
    del exact, reference
    low = load_variant(replace(spec, dtype=dtype), texts)
    ell_low = Scorer(low, batch_size=batch_size).score(texts, progress=progress).loglik
    return {"dtype": str(low.dtype).removeprefix("torch."),
            "kl_bpb": kl_bpb(ell, ell_low, mean_bytes),
            "se": kl_se_bpb(ell, ell_low, mean_bytes),
            "batch_kl_bpb": kl_bpb(ell, batched, mean_bytes),
            "batch_sizes": sizes,
            "device": low.device.type, "versions": versions()}


def calibration_row(result: dict) -> dict:
    """The ``calibrations`` row of an ``Atlas.calibrate`` result."""
    import json

    row = {name: result[name] for name in ("key_a", "key_b", "method", "samples", "length",
                                           "prompts", "seed", "ratio", "device", "dtype",
                                           "seconds")}
    for direction in ("mc_ab", "mc_ba"):
        found = result[direction]
        row |= {f"{direction}_nats": found["nats_per_token"], f"{direction}_se": found["se"],
                f"{direction}_bpb": found["bits_per_byte"],
                f"{direction}_se_bpb": found["se_bits_per_byte"]}
    estimator = result["estimator"]
    row |= {"estimator_bpb": estimator["bits_per_byte"], "estimator_se": estimator["se"],
            "textset": estimator["textset"], "versions": json.dumps(result["versions"])}
    return row


def floor_row(floor: dict) -> dict:
    """The ``precision_floors`` row of an ``Atlas.precision_floor`` result."""
    import json

    row = {name: floor[name] for name in ("key", "dtype", "textset", "kl_bpb", "se",
                                          "batch_kl_bpb", "device")}
    return row | {"batch_size": floor["batch_sizes"][0], "versions": json.dumps(floor["versions"])}
