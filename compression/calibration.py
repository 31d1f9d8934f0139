"""Calibration statistics for activation-aware delta fitting: per-linear-layer input Hessians.

For every ``nn.Linear`` of a causal LM, ``H = XᵀX / N`` where the rows of ``X`` are the N inputs the
layer sees while the model reads a calibration text (fp32, ``[in_features, in_features]``). The
output error of replacing a weight row ``w`` by ``ŵ`` on those inputs is ``(w − ŵ)ᵀ H (w − ŵ)``,
which is what ``fit=refit|gptq|obs`` in ``compression.deltadq`` minimises.

Tokens and windows follow ``compression.quality``: byte-level ids when ``tokenizer`` is None, BOS
prepended to each window of ``window − 1`` tokens when the model has a ``bos_token_id``.
Pure: a model and a text in, tensors out.
"""

from __future__ import annotations

from typing import Any

import torch
from deltazoo.compression.quality import DEFAULT_WINDOW, config_int, token_ids

DEFAULT_MAX_TOKENS = 32768


@torch.no_grad()
def collect_hessians(
    model: Any,
    text: str,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    device: str | torch.device = "cpu",
    tokenizer: Any | None = None,
    window: int | None = None,
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """``{"<module>.weight": H}`` for every ``nn.Linear`` of ``model``, from at most ``max_tokens`` tokens."""
    if not text:
        raise ValueError("cannot calibrate on an empty text")
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be ≥ 1")
    vocab = config_int(model, "vocab_size") or 0
    window = window or config_int(model, "max_position_embeddings") or DEFAULT_WINDOW
    if window < 2:
        raise ValueError(f"window={window} must be ≥ 2")
    bos = config_int(model, "bos_token_id")
    ids = torch.tensor(token_ids(tokenizer, text, vocab)[:max_tokens], dtype=torch.long)
    span = window - 1 if bos is not None else window
    windows = list(torch.split(ids, span))
    prefix = torch.tensor([bos] if bos is not None else [], dtype=torch.long)
    # The BOS position reads the same input in every window: it would weigh as one token seen
    # thousands of times (and often carries outsized "attention sink" activations), so it is left out.
    skip = len(prefix)

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def accumulate(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            x = inputs[0].detach()[:, skip:].reshape(-1, inputs[0].shape[-1]).to(torch.float32)
            # fp32 products per batch (fast), summed across batches in fp64 (no drift over many tokens)
            xtx = (x.T @ x).to(torch.float64)
            sums[name] = sums[name] + xtx if name in sums else xtx
            counts[name] = counts.get(name, 0) + x.shape[0]

        return accumulate

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_hook(hook(f"{name}.weight")))
    if not hooks:
        raise ValueError("the model has no nn.Linear layers to calibrate")
    model.eval()
    model.to(device)
    try:
        # Full windows batch together; a shorter last window runs alone (no padding enters H).
        full = [w for w in windows if len(w) == span]
        rest = [w for w in windows if len(w) != span]
        batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in rest]
        for batch in batches:
            seqs = torch.stack([torch.cat([prefix, w]) for w in batch]).to(device)
            model(input_ids=seqs)
    finally:
        for h in hooks:
            h.remove()
    return {name: (sums[name] / counts[name]).to(torch.float32).cpu() for name in sums}
