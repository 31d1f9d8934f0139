"""Bits-per-byte of a causal language model on a text (seed 004), and "gain kept" of a lossy profile.

bpb = (total cross-entropy of the text's tokens, in bits) / (number of UTF-8 bytes of the text).
8 / bpb is the compression ratio an arithmetic coder driven by the model would reach.

Tokens: with a tokenizer, its ``input_ids`` for the text; with ``tokenizer=None`` the model is taken
as byte-level (vocabulary ≥ 256, token id = byte value), as the zoo models built by
``benchmarks/build_zoo.py`` are.

Windows: the text is cut into consecutive, non-overlapping windows of ``window - 1`` tokens (stride =
window − 1); each window is fed as ``[BOS] + tokens`` when the model has a ``bos_token_id`` so that
every token is predicted, from the context of its own window only. With ``stride`` smaller than that,
each window carries ``window − 1 − stride`` tokens of context before the ``stride`` tokens it scores
(sliding evaluation: every token is scored once, with more context, so bpb is lower, for about
``window / stride`` times the compute). A model without BOS cannot predict the text's first token: it
is charged log2(vocab_size) bits (a uniform guess), so every byte is always paid for.
Assumption (documented, checked against the zoo README figures): the zoo models were trained on
byte windows that start with BOS = 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

DEFAULT_WINDOW = 256


class NotEvaluable(ValueError):
    """The model cannot be built or evaluated here (unknown architecture, weights that do not fit)."""


def gain_kept(bpb_base: float, bpb_finetune: float, bpb_profile: float) -> float:
    """Fraction of the fine-tune's bpb gain over its base that a profile keeps (1.0 = all of it).

    Defined only where the fine-tune gained (lower bpb than its base): on a text the fine-tune made
    worse, the ratio of two negative numbers would read as a high "kept" share for a profile worse
    than both, so it raises ``ValueError`` instead.
    """
    gain = bpb_base - bpb_finetune
    if gain <= 0:
        raise ValueError(
            f"the fine-tune did not gain on this text (bpb {bpb_finetune:.4f} vs its base's {bpb_base:.4f}): "
            "there is no gain to keep"
        )
    return (bpb_base - bpb_profile) / gain


def token_ids(tokenizer: Any, text: str, vocab_size: int) -> list[int]:
    """Token ids of ``text`` without special tokens (BOS is added per window)."""
    if tokenizer is None:
        if vocab_size < 256:
            raise NotEvaluable(
                f"byte-level evaluation needs a vocabulary of at least 256, the model has {vocab_size}"
            )
        return list(text.encode("utf-8"))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def config_int(model: Any, key: str) -> int | None:
    value = getattr(getattr(model, "config", None), key, None)
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if value is not None else None


@torch.no_grad()
def bits_per_byte(
    model: Any,
    tokenizer: Any | None,
    text: str,
    window: int | None = None,
    device: str | torch.device = "cpu",
    stride: int | None = None,
    batch_size: int = 8,
) -> float:
    """Bits-per-byte of ``model`` on ``text`` (see the module docstring for windows and BOS)."""
    n_bytes = len(text.encode("utf-8"))
    if n_bytes == 0:
        raise ValueError("cannot compute bits-per-byte of an empty text")
    vocab = config_int(model, "vocab_size") or 0
    window = window or config_int(model, "max_position_embeddings") or DEFAULT_WINDOW
    bos = config_int(model, "bos_token_id")
    if bos is not None and vocab and not 0 <= bos < vocab:
        raise NotEvaluable(
            f"config.json's bos_token_id {bos} is outside its vocabulary of {vocab} tokens; fix the config"
        )
    ids = token_ids(tokenizer, text, vocab)
    span = window - 1  # tokens scored per window at most: one position is BOS or the first context token
    stride = stride or span
    if window < 2 or not 1 <= stride <= span:
        raise ValueError(f"window={window} must be ≥ 2 and stride={stride} between 1 and window - 1 = {span}")
    tokens = torch.tensor(ids, dtype=torch.long)
    total_bits = 0.0
    first = 0  # first token of the text not scored yet
    if bos is None:
        total_bits += math.log2(max(vocab, 2))  # the unpredictable first token
        first = 1
    # Each job: (start of the context, first scored token, end); its sequence fits the window.
    jobs: list[tuple[int, int, int]] = []
    while first < len(ids):
        end = min(first + stride, len(ids))
        # context before the first scored token: span - stride tokens (plus BOS), or one more without BOS
        start = max(0, first - (span - stride) - (0 if bos is not None else 1))
        jobs.append((start, first, end))
        first = end
    model.eval()
    model.to(device)
    for i in range(0, len(jobs), batch_size):
        total_bits += _score_batch(model, tokens, jobs[i : i + batch_size], bos, device)
    return total_bits / n_bytes


def _score_batch(
    model: Any, tokens: torch.Tensor, jobs: list[tuple[int, int, int]], bos: int | None, device: Any
) -> float:
    """Bits of the scored tokens of a batch of windows (right-padded, padding never scored)."""
    prefix = [bos] if bos is not None else []
    seqs = [torch.cat([torch.tensor(prefix, dtype=torch.long), tokens[s:e]]) for s, _, e in jobs]
    length = max(len(s) for s in seqs)
    batch = torch.zeros((len(seqs), length), dtype=torch.long)
    attention = torch.zeros_like(batch)
    for row, seq in enumerate(seqs):
        batch[row, : len(seq)] = seq
        attention[row, : len(seq)] = 1
    logits = model(input_ids=batch.to(device), attention_mask=attention.to(device)).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = batch[:, 1:].to(device)
    nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # nats, [batch, length - 1]
    mask = torch.zeros_like(nll, dtype=torch.bool)
    for row, (s, f, e) in enumerate(jobs):
        # token j of the text sits at position j - s + len(prefix); it is predicted at index pos - 1
        lo = f - s + len(prefix) - 1
        mask[row, lo : e - s + len(prefix) - 1] = True
    return float(nll[mask].sum().item()) / math.log(2)


def _check_size_fits(
    auto_model: Any, config: Any, model_type: str, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Refuse a config whose model is far larger than the weights stored for it before allocating it.

    A config.json that names an architecture but not its sizes (``{"model_type": "llama"}``) gets that
    architecture's defaults: billions of parameters, allocated for a checkpoint of a few kilobytes. The
    model is built on the meta device first (no memory), and its parameter count compared with the
    state dict's elements.
    """
    try:
        with torch.device("meta"):
            probe = auto_model.from_config(config)
        wanted = sum(p.numel() for p in probe.parameters())
    except (ValueError, KeyError, ImportError, TypeError):
        raise
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on meta: no probe
        return
    stored = sum(t.numel() for t in state_dict.values())
    if wanted > 2 * stored + (1 << 20):
        raise NotEvaluable(
            f"config.json of model_type {model_type!r} describes {wanted:,} parameters but the checkpoint "
            f"holds {stored:,} weights; give the config the checkpoint's sizes"
        )


def build_causal_lm(
    config_json: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> Any:
    """A transformers causal LM from a config.json dict and a state dict; never touches the hub.

    Raises ``NotEvaluable`` when transformers cannot build the architecture or the weights do not fit.
    """
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as exc:  # pragma: no cover - transformers is in the [server] extra
        raise NotEvaluable("transformers is not installed; install deltazoo[server]") from exc
    config_dict = dict(config_json)
    model_type = config_dict.pop("model_type", None)
    if not model_type:
        raise NotEvaluable("config.json has no 'model_type'; cannot tell which architecture to build")
    try:
        config = AutoConfig.for_model(model_type, **config_dict)
        _check_size_fits(AutoModelForCausalLM, config, model_type, state_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, KeyError, ImportError, TypeError) as exc:
        why = " ".join(str(exc).split())  # transformers may list every model type it knows: keep it short
        raise NotEvaluable(
            f"transformers cannot build a causal LM of model_type {model_type!r}: "
            + (why if len(why) <= 300 else why[:300] + "...")
        ) from exc
    result = model.load_state_dict(dict(state_dict), strict=False)
    missing = set(result.missing_keys)
    if getattr(config, "tie_word_embeddings", False):
        missing.discard("lm_head.weight")
        model.tie_weights()
    if missing or result.unexpected_keys:
        raise NotEvaluable(
            f"weights do not fit {model_type!r}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    return model.eval()
