"""A Pythia-like suite of mini GPT-NeoX models, trained on the CPU in minutes.

Like Pythia: one tokenizer for the whole suite, several sizes trained on the same data, several
seeds per size (the seed sets the initialisation and the data order, like PolyPythias),
checkpoints at steps 0, 1, 2, 4, … (log-spaced) then evenly spaced, a learning rate that warms up
and decays by cosine to 10 %. Plus fine-tunes: a final model trained further on one domain of the
training split, with its parent recorded.

Trained weights are cached under a folder named by a hash of everything that determines them (the
suite spec, the training texts, the torch and transformers versions), each run written to a
temporary folder and renamed when complete, so a re-run reuses finished runs and redoes only the
unfinished ones.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from atlas import tiny
from atlas.caching import atomic_dir
from atlas.textsets import TextSet

if TYPE_CHECKING:  # torch loads when a model is trained, not when the demo module is imported
    import torch

STREAM_TOKENS_PER_STEP = 4  # training windows drawn from a stream 4× the tokens trained on


@dataclass(frozen=True)
class Size:
    name: str
    hidden: int
    layers: int
    heads: int


@dataclass(frozen=True)
class FineTune:
    """Train the final model of (size, seed) further, on the training texts of one domain."""

    domain: str
    size: str
    seed: int
    steps: int
    lr: float = 1e-4  # a thirtieth of pretraining's peak, as fine-tunes go


@dataclass(frozen=True)
class SuiteSpec:
    family: str = "minipythia"
    sizes: tuple[Size, ...] = (Size("s", 16, 1, 2), Size("m", 32, 2, 2), Size("l", 48, 2, 4))
    seeds: tuple[int, ...] = (1, 2, 3)
    log_until: int = 32  # checkpoints 0, 1, 2, 4, … up to here
    every: int = 50  # then every this many steps …
    total_steps: int = 400  # … up to here
    diffusion_every: int = 10  # the diffusion run also saves every this many steps after log_until
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 8
    vocab_size: int = 512
    finetunes: tuple[FineTune, ...] = field(default=(
        FineTune("bible", "m", 1, 40), FineTune("dm_mathematics", "m", 1, 40)))

    def __post_init__(self) -> None:
        if self.log_until & (self.log_until - 1) or self.every <= self.log_until:
            raise ValueError("log_until must be a power of two and every larger than it")
        if self.every % self.diffusion_every:
            raise ValueError("every must be a multiple of diffusion_every (the diffusion run's "
                             "checkpoints include every other run's)")

    def schedule(self, dense: bool = False) -> list[int]:
        """Pythia-like checkpoint steps: 0, powers of two to ``log_until``, then evenly spaced.

        ``dense`` (the diffusion run's) adds a step every ``diffusion_every`` after
        ``log_until``: P1 fits starts from the evenly spaced tail with windows of 10 lags, and
        the common tail (8 checkpoints) has no full window. Only one run pays for them.
        """
        steps = {0} | {2**k for k in range(int(math.log2(self.log_until)) + 1)}
        steps |= set(range(self.every, self.total_steps + 1, self.every))
        if dense:
            first = (self.log_until // self.diffusion_every + 1) * self.diffusion_every
            steps |= set(range(first, self.total_steps + 1, self.diffusion_every))
        return sorted(steps)

    def diffusion_run(self) -> tuple[str, int]:
        """(size, seed) of the run the demo fits diffusion on: the largest size, first seed."""
        return self.sizes[-1].name, self.seeds[0]

    def schedule_of(self, size: str, seed: int) -> list[int]:
        return self.schedule(dense=(size, seed) == self.diffusion_run())

    def size(self, name: str) -> Size:
        return next(s for s in self.sizes if s.name == name)

    def finetune_family(self, finetune: FineTune) -> str:
        return f"{self.family}-{finetune.domain.replace('_', '')}"

    def fingerprint(self, train: TextSet) -> str:
        import torch
        import transformers

        payload = {"spec": asdict(self), "train": train.content_hash,
                   "torch": torch.__version__, "transformers": transformers.__version__}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Checkpoint:
    """One saved model of the suite and the key fields it is ingested under."""

    path: Path
    family: str
    size: str
    seed: int
    step: int
    parent: str | None = None  # key of the model a fine-tune started from

    @property
    def key(self) -> str:
        return f"{self.family}-{self.size}/s{self.seed}@step{self.step}"


@dataclass
class Run:
    """A trained run: its checkpoints and the training loss of every step."""

    checkpoints: list[Checkpoint]
    losses: list[float]


def learning_rate(step: int, spec: SuiteSpec, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 % (Pythia's shape)."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, total - spec.warmup)
    return spec.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(model, stream: torch.Tensor, spec: SuiteSpec, steps: int, *, seed: int,
          save_at: dict[int, Path], tokenizer, on_step: Callable[[], None] | None = None,
          ) -> list[float]:
    """Train for ``steps`` on random windows of ``stream``, saving at the steps in ``save_at``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    losses = []
    for step in range(steps + 1):
        if step in save_at:
            model.eval()
            tiny.save(model, tokenizer, save_at[step])
        if step == steps:
            break
        model.train()
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, spec, steps)
        starts = torch.randint(0, len(stream) - spec.seq_len - 1, (spec.batch_size,),
                               generator=generator)
        batch = torch.stack([stream[s : s + spec.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step()
    model.eval()
    return losses


class Suite:
    """Trains (or finds in the cache) every run of a ``SuiteSpec`` on a training split."""

    def __init__(self, spec: SuiteSpec, train_texts: TextSet, cache_dir: Path) -> None:
        self.spec = spec
        self.train_texts = train_texts
        self.root = Path(cache_dir) / f"{spec.family}-{spec.fingerprint(train_texts)}"
        self._tokenizer = None
        self._streams: dict[str | None, torch.Tensor] = {}

    def __getstate__(self) -> dict:
        """Workers get the spec and texts; each reads the tokenizer from the cache itself."""
        return {**self.__dict__, "_tokenizer": None, "_streams": {}}

    # what gets trained -------------------------------------------------------------------------
    def runs(self) -> list[tuple[Size, int]]:
        return [(size, seed) for size in self.spec.sizes for seed in self.spec.seeds]

    def total_steps(self) -> int:
        """Optimiser steps still to train (cached runs cost nothing): for progress bars."""
        pretrain = [self.spec.total_steps for size, seed in self.runs()
                    if not self._done(self._run_dir(size.name, seed))]
        finetune = [f.steps for f in self.spec.finetunes if not self._done(self._ft_dir(f))]
        return sum(pretrain) + sum(finetune)

    def _run_dir(self, size: str, seed: int) -> Path:
        return self.root / f"{size}-seed{seed}"

    def _ft_dir(self, finetune: FineTune) -> Path:
        return self.root / f"ft-{finetune.domain}-{finetune.size}-seed{finetune.seed}"

    @staticmethod
    def _done(directory: Path) -> bool:
        return (directory / "run.json").is_file()

    # data ----------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """One BPE tokenizer for the suite, trained on the training split (cached)."""
        return self.prepare()

    def prepare(self):
        """Train (or read) the tokenizer; done once in the parent so workers only read it."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            folder = self.root / "tokenizer"
            if not (folder / "tokenizer.json").is_file():
                tokenizer = tiny.train_tokenizer(self.train_texts.texts,
                                                 vocab_size=self.spec.vocab_size)
                atomic_dir(folder, tokenizer.save_pretrained)
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
        return self._tokenizer

    def stream(self, domain: str | None = None) -> torch.Tensor:
        """The training split (or one domain of it) as one token stream, texts joined by EOS.

        Only as many texts are tokenized as give ``STREAM_TOKENS_PER_STEP`` × the tokens a run
        trains on: the split is shuffled, so its head is a fair sample, and tokenizing all of it
        would cost more than training the small sizes.
        """
        if domain not in self._streams:
            split = self.train_texts
            texts = [t for t, d in zip(split.texts, split.domains, strict=True)
                     if domain is None or d == domain]
            if not texts:
                raise ValueError(f"no training texts of domain {domain!r}")
            wanted = STREAM_TOKENS_PER_STEP * self.spec.total_steps * self.spec.batch_size * (
                self.spec.seq_len)
            eos, ids = self.tokenizer.eos_token_id, []
            for start in range(0, len(texts), 256):
                for row in self.tokenizer(texts[start : start + 256])["input_ids"]:
                    ids.extend((*row, eos))
                if len(ids) >= wanted:
                    break
            import torch

            self._streams[domain] = torch.tensor(ids)
        return self._streams[domain]

    # training ------------------------------------------------------------------------------------
    def pretrain(self, size: Size, seed: int, on_step: Callable[[], None] | None = None) -> Run:
        directory = self._run_dir(size.name, seed)
        steps = self.spec.schedule_of(size.name, seed)
        if not self._done(directory):
            def work(tmp: Path) -> None:
                config = tiny.tiny_config("gpt_neox", self.tokenizer, hidden=size.hidden,
                                          layers=size.layers, heads=size.heads, max_positions=2048)
                model = tiny.build_model(config, seed=seed)
                losses = train(model, self.stream(), self.spec, self.spec.total_steps,
                               seed=seed, tokenizer=self.tokenizer, on_step=on_step,
                               save_at={s: tmp / f"step{s}" for s in steps})
                (tmp / "run.json").write_text(json.dumps({"losses": losses}))
            atomic_dir(directory, work)
        return Run([Checkpoint(directory / f"step{s}", self.spec.family, size.name, seed, s)
                    for s in steps], self._losses(directory))

    def finetune(self, finetune: FineTune, on_step: Callable[[], None] | None = None) -> Run:
        parent_steps = self.spec.schedule()[-1]
        parent_dir = self._run_dir(finetune.size, finetune.seed) / f"step{parent_steps}"
        parent = f"{self.spec.family}-{finetune.size}/s{finetune.seed}@step{parent_steps}"
        directory = self._ft_dir(finetune)
        if not self._done(directory):
            def work(tmp: Path) -> None:
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(parent_dir)
                spec = replace(self.spec, lr=finetune.lr)
                losses = train(model, self.stream(finetune.domain), spec, finetune.steps,
                               seed=finetune.seed + 10_000, tokenizer=self.tokenizer,
                               on_step=on_step, save_at={finetune.steps: tmp / "final"})
                (tmp / "run.json").write_text(json.dumps({"losses": losses}))
            atomic_dir(directory, work)
        checkpoint = Checkpoint(directory / "final", self.spec.finetune_family(finetune),
                                finetune.size, finetune.seed, finetune.steps, parent=parent)
        return Run([checkpoint], self._losses(directory))

    @staticmethod
    def _losses(directory: Path) -> list[float]:
        return json.loads((directory / "run.json").read_text())["losses"]


def train_suite(suite: Suite, on_step: Callable[[], None] | None = None) -> list[Run]:
    """Every pretraining run, then every fine-tune (which needs its parent's final step)."""
    runs = [suite.pretrain(size, seed, on_step) for size, seed in suite.runs()]
    return runs + [suite.finetune(f, on_step) for f in suite.spec.finetunes]


def final_losses(runs: Sequence[Run]) -> dict[str, tuple[float, float]]:
    """First and last training loss of each run, keyed by its last checkpoint."""
    return {run.checkpoints[-1].key: (run.losses[0], run.losses[-1]) for run in runs}
