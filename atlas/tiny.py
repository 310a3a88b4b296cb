"""Tiny real models built from configs, with a tokenizer trained locally: no hub, no network.

They are saved with ``save_pretrained`` (safetensors + tokenizer files) and loaded back through the
same ``from_pretrained`` path as any hub model, so examples and tests exercise the real loading
code. Architectures: GPT-NeoX (Pythia's), GPT-2 and Llama.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

ARCHITECTURES = ("gpt_neox", "gpt2", "llama")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, bos: bool = False):
    """A byte-level BPE tokenizer trained on ``texts``; ``bos`` makes it prepend <|bos|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|bos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if bos:
        bos_id = tokenizer.token_to_id("<|bos|>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", special_tokens=[("<|bos|>", bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|bos|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|pad|>")


def tiny_config(architecture: str, tokenizer, hidden: int = 32, layers: int = 2,
                heads: int = 2, max_positions: int = 2048):
    """A small config of one of ``ARCHITECTURES`` (sizes scale with ``hidden`` and ``layers``)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    special = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if architecture == "gpt_neox":
        return GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, intermediate_size=4 * hidden,
                             max_position_embeddings=max_positions, rotary_pct=0.25,
                             tie_word_embeddings=False, **special)
    if architecture == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
                          **special)
    if architecture == "llama":
        return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads,
                           intermediate_size=2 * hidden, max_position_embeddings=max_positions,
                           **special)
    raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")


def build_model(config, seed: int = 0):
    """A randomly initialised causal LM of ``config``, deterministic in ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def train_steps(model, tokenizer, texts: Sequence[str], steps: int, *, lr: float = 3e-3,
                batch_size: int = 8, seq_len: int = 128, seed: int = 0) -> list[float]:
    """Plain next-token training on ``texts`` (AdamW), returning the loss of each step."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    stream = torch.tensor([t for text in texts for t in tokenizer(text)["input_ids"]])
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, max(1, len(stream) - seq_len - 1), (batch_size,),
                               generator=generator)
        batch = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    model.eval()
    return losses


def save(model, tokenizer, directory: str | Path) -> Path:
    """Save as a hub-style directory (safetensors weights, config, tokenizer files)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
