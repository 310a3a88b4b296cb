"""The logit lens: every hidden state read through the model's own final norm and unembedding.

method.md §4: hidden state l (0 = the embeddings, l = the output of block l) → the model's own
final norm → its unembedding (→ any post-logit transform, e.g. Gemma's
``final_logit_softcapping``) → log-probs. The last index L (= the number of blocks) is the model's
real final hidden state, which the model has already normalised: it goes straight to the
unembedding, so it is the model's own output and its vector equals the plain vector. Never
normalise twice.

A *lens description* (``LensSpec``) says where, in one architecture, the final norm and the
unembedding live, as module paths relative to the ``…ForCausalLM`` model. The norm is a chain of
modules applied in order: the final norm, then anything the model applies between it and the
unembedding (OPT's ``project_out``). We always call the model's own modules, so what a norm does
(LayerNorm, RMSNorm, Gemma's RMSNorm with ``1 + w``) is the model's business, not ours. Unknown
architectures take user-given paths (``--lens-norm`` / ``--lens-head``).

Nothing is trusted: on load, ``Lens.verify`` runs a probe through the model and checks that the
lens applied to the last block's output reproduces the model's logits, that the model returns
``n_layers + 1`` hidden states and that index l is the output of block l. A wrong description is
an error, never a wrong vector.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from atlas.layers import (
    LensError,
    LensOverride,
    LensSpec,
    layer_count,
    lens_spec,
    model_type_of,
    text_config,
)


def logit_transform(config) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The post-unembedding transform the config asks for (on float32 logits), and its name."""
    config = text_config(config)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    names = ([f"scale {scale:g}"] if scale else []) + ([f"softcap {softcap:g}"] if softcap else [])

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale:
            logits = logits * scale
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return transform, " then ".join(names) or "none"


def _module_at(model: torch.nn.Module, path: str, optional: bool) -> torch.nn.Module | None:
    target = model
    for part in path.split("."):
        if target is None:
            break
        if isinstance(target, (torch.nn.ModuleList, torch.nn.Sequential)) and part.isdigit():
            index = int(part)
            target = target[index] if index < len(target) else _missing(model, path)
            continue
        if not hasattr(target, part):
            _missing(model, path)
        target = getattr(target, part)
    if target is None:
        if optional:
            return None
        _missing(model, path, "holds None")
    if not isinstance(target, torch.nn.Module):
        _missing(model, path, f"is a {type(target).__name__}, not a module")
    return target


def _missing(model: torch.nn.Module, path: str, why: str = "does not exist") -> None:
    names = [n for n, m in model.named_modules() if n and not re.search(r"\.\d+(\.|$)", n)
             and (re.search(r"norm|ln_f|ln_out", n, re.I) or n.split(".")[-1] in (
                 "lm_head", "embed_out", "output"))]
    raise LensError(
        f"{type(model).__name__}: module path {path!r} {why}; candidates outside the blocks: "
        f"{', '.join(names[:12]) or 'none found'} (pass --lens-norm/--lens-head)")


def _find_blocks(model: torch.nn.Module, n_layers: int) -> torch.nn.ModuleList | None:
    """The one ModuleList of ``n_layers`` entries, if exactly one exists."""
    found = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)
             and len(m) == n_layers]
    return found[0] if len(found) == 1 else None


@dataclass
class Lens:
    """A lens resolved on one loaded model: modules to call, and what to record about them."""

    architecture: str
    n_layers: int
    spec: LensSpec
    norm_paths: tuple[str, ...]  # those that exist in this model (optional ones may not)
    norms: tuple[torch.nn.Module, ...]
    head_path: str
    unembed: torch.nn.Module
    transform: Callable[[torch.Tensor], torch.Tensor]
    transform_name: str
    blocks: torch.nn.ModuleList | None = field(default=None, repr=False)

    @classmethod
    def of(cls, model: torch.nn.Module, override: LensOverride | None = None) -> Lens:
        architecture = model_type_of(model.config)
        spec = lens_spec(architecture, override)
        paths, norms = [], []
        for path in spec.norm:
            module = _module_at(model, path, optional=path in spec.optional)
            if module is not None:
                paths.append(path)
                norms.append(module)
        if spec.head is None:
            unembed = model.get_output_embeddings()
            head_path = next((n for n, m in model.named_modules() if m is unembed), None)
            if unembed is None or head_path is None:
                raise LensError(f"{type(model).__name__} has no output embeddings; pass "
                                "--lens-head")
        else:
            head_path, unembed = spec.head, _module_at(model, spec.head, optional=False)
        n_layers = layer_count(model.config)
        blocks = (_module_at(model, spec.blocks, optional=True) if spec.blocks
                  else _find_blocks(model, n_layers))
        if blocks is not None and not (isinstance(blocks, torch.nn.ModuleList)
                                       and len(blocks) == n_layers):
            blocks = None
        transform, transform_name = logit_transform(model.config)
        return cls(architecture, n_layers, spec, tuple(paths), tuple(norms), head_path, unembed,
                   transform, transform_name, blocks)

    def head(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Hidden state of a block (not the final one) → float32 logits: norm, unembed, transform.

        The final index must not come here: the model has normalised it already.
        """
        norms, unembed, transform = self.norms, self.unembed, self.transform

        def lens_head(hidden: torch.Tensor) -> torch.Tensor:
            for module in norms:
                hidden = module(hidden)
            return transform(unembed(hidden).float())

        return lens_head

    def describe(self, layer: int) -> dict:
        """Provenance of the vector of hidden state ``layer``."""
        final = layer == self.n_layers
        return {
            "layer": layer, "n_layers": self.n_layers, "final": final,
            "architecture": self.architecture, "description": self.spec.source,
            "norm": [] if final else list(self.norm_paths),
            "unembedding": self.head_path, "transform": self.transform_name,
            "path": ("the model's own final hidden state (already normalised) → unembedding"
                     if final else ("embeddings" if layer == 0 else f"output of block {layer}")
                     + " → " + " → ".join([*self.norm_paths, self.head_path])),
        }

    def verify(self, model: torch.nn.Module, device: torch.device) -> dict:
        """Check the lens on a probe against the model's own forward pass; raise if it is wrong.

        The tolerance is the plain head check's (1e-3 absolute and relative on log-probs) in
        float32, and 4 machine epsilons in 16-bit dtypes, where a model may apply its transform
        (e.g. softcapping) to 16-bit logits while we apply it in float32. A wrong module path
        misses by orders of magnitude more. Returns what was checked (for tests).
        """
        dtype = next(self.unembed.parameters()).dtype
        tolerance = 1e-3 if dtype == torch.float32 else max(1e-3, 4 * torch.finfo(dtype).eps)
        config = text_config(model.config)
        probe = (torch.arange(1, 9, device=device) % config.vocab_size).unsqueeze(0)
        captured: dict[str, torch.Tensor] = {}

        def keep(name: str, value) -> None:
            if isinstance(value, (tuple, list)):
                value = value[0]
            if isinstance(value, torch.Tensor):
                captured.setdefault(name, value.detach().clone())

        first = self.norms[0] if self.norms else self.unembed
        handles = [first.register_forward_pre_hook(lambda m, args: keep("lens_input", args))]
        if self.blocks is not None:
            last = self.blocks[-1]
            handles.append(last.register_forward_hook(lambda m, a, out: keep("last_block", out)))
            handles.append(last.register_forward_pre_hook(
                lambda m, args, kwargs: keep("last_block_input",
                                             args if args else kwargs.get("hidden_states")),
                with_kwargs=True))
        try:
            with torch.inference_mode():
                output = model(input_ids=probe, output_hidden_states=True)
        finally:
            for handle in handles:
                handle.remove()
        states = output.hidden_states
        name = f"{self.architecture} lens ({' → '.join([*self.norm_paths, self.head_path])})"
        if states is None or len(states) != self.n_layers + 1:
            raise LensError(
                f"{name}: the model returns {0 if states is None else len(states)} hidden states "
                f"for {self.n_layers} blocks (expected {self.n_layers + 1}): no logit lens")
        if "lens_input" not in captured:
            first_path = self.norm_paths[0] if self.norms else self.head_path
            raise LensError(f"{name}: {first_path} is never called by the model's forward pass; "
                            "pass --lens-norm/--lens-head with the modules it does use")
        pre_norm = captured.get("last_block", captured["lens_input"])
        with torch.inference_mode():
            expected = output.logits.float().log_softmax(-1)
            ours = self.head()(pre_norm).log_softmax(-1)
        same = ours.shape == expected.shape
        gap = float((ours - expected).abs().max()) if same else float("inf")
        if not (same and torch.allclose(ours, expected, atol=tolerance, rtol=tolerance)):
            raise LensError(
                f"{name} does not reproduce the model's logits from the last block's output "
                f"(max |Δ log p| = {gap:.3g}): the module paths are wrong for "
                f"{type(model).__name__}; pass --lens-norm/--lens-head")
        if "last_block_input" in captured and self.n_layers >= 1 and not torch.equal(
                states[self.n_layers - 1], captured["last_block_input"]):
            raise LensError(f"{name}: hidden state {self.n_layers - 1} is not the input of the "
                            "last block; this model numbers its hidden states otherwise")
        return {"max_abs_logprob_gap": gap, "checked_blocks": self.blocks is not None}
