"""Tiny safetensors checkpoints for tests: a Llama-shaped base and a fine-tune of it.

The shapes match the ``config.json`` written next to them, so ``transformers`` can build the model
(vocabulary 64, hidden 32, one layer): about 15 k parameters, 30 KB in bf16.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN = 32
INTERMEDIATE = 64
VOCAB = 64
HEADS = 4

TINY_LLAMA_CONFIG: dict[str, object] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": 1,
    "num_attention_heads": HEADS,
    "num_key_value_heads": HEADS,
    "vocab_size": VOCAB,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}

TINY_LLAMA_SHAPES: dict[str, tuple[int, ...]] = {
    "model.embed_tokens.weight": (VOCAB, HIDDEN),
    "model.layers.0.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.self_attn.k_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.self_attn.v_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.self_attn.o_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
    "model.layers.0.mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
    "model.layers.0.mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
    "model.layers.0.input_layernorm.weight": (HIDDEN,),
    "model.layers.0.post_attention_layernorm.weight": (HIDDEN,),
    "model.norm.weight": (HIDDEN,),
    "lm_head.weight": (VOCAB, HIDDEN),
}

# The one tensor a fine-tune made by make_base_and_finetune leaves untouched (encoding "same").
UNCHANGED_TENSOR = "model.norm.weight"


def random_tensors(
    shapes: dict[str, tuple[int, ...]], *, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Normal(0, 0.02) tensors (norm weights around 1, as in a real model), reproducible by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        values = torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02
        if len(shape) == 1:
            values += 1.0
        out[name] = values.to(dtype)
    return out


def make_checkpoint(
    directory: Path | str,
    tensors: dict[str, torch.Tensor],
    config: dict[str, object] | None = None,
    *,
    filename: str = "model.safetensors",
) -> Path:
    """Write ``tensors`` as ``directory/filename`` (and ``config.json`` when given); return the dir."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(directory / filename))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def finetune_of(
    base: dict[str, torch.Tensor], *, seed: int = 1, noise: float = 0.05, unchanged: str = UNCHANGED_TENSOR
) -> dict[str, torch.Tensor]:
    """``base`` + Normal(0, ``noise`` × the tensor's RMS) on every tensor but ``unchanged``.

    ``unchanged`` stays bit-identical. The noise is relative so that bf16 norm weights near 1.0
    (whose representable step is 2⁻⁷) really change too.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in base.items():
        if name == unchanged:
            out[name] = tensor.clone()
            continue
        values = tensor.float()
        scale = noise * float(values.pow(2).mean().sqrt())
        out[name] = (values + torch.randn(values.shape, generator=gen) * scale).to(tensor.dtype)
    return out


@dataclass(frozen=True)
class CheckpointPair:
    base: Path
    finetune: Path
    base_tensors: dict[str, torch.Tensor]
    finetune_tensors: dict[str, torch.Tensor]


def make_base_and_finetune(
    root: Path | str, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> CheckpointPair:
    """A tiny Llama base under ``root/base`` and a fine-tune of it under ``root/finetune``.

    The fine-tune differs by small noise on every tensor except UNCHANGED_TENSOR; both directories
    hold ``model.safetensors`` and the same ``config.json`` (with ``torch_dtype`` set to ``dtype``).
    """
    root = Path(root)
    config = {**TINY_LLAMA_CONFIG, "torch_dtype": str(dtype).removeprefix("torch.")}
    base = random_tensors(TINY_LLAMA_SHAPES, dtype=dtype, seed=seed)
    finetune = finetune_of(base, seed=seed + 1)
    return CheckpointPair(
        base=make_checkpoint(root / "base", base, config),
        finetune=make_checkpoint(root / "finetune", finetune, config),
        base_tensors=base,
        finetune_tensors=finetune,
    )


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(directory: Path | str) -> dict[str, str]:
    """{relative path: sha256} of every file under ``directory``: compare two trees bit for bit."""
    directory = Path(directory)
    return {
        str(p.relative_to(directory)): file_sha256(p) for p in sorted(directory.rglob("*")) if p.is_file()
    }
