"""Public delta operations with one backend switch: Triton on CUDA when installed, torch otherwise.

``backend="auto"`` picks the Triton kernel for CUDA tensors when triton imports, and the torch
reference everywhere else; ``"triton"`` and ``"torch"`` force one (``"triton"`` on CPU tensors needs
``TRITON_INTERPRET=1``, which the CPU tests use).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from deltazoo.compression.packed import PackedDelta

from .reference import batched_delta_matmul_reference, check_delta_ids
from .stacked import StackedDeltas, stack_deltas

Backend = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")
# fused=True runs the one-kernel path up to this many tokens: on an H200 it costs 1.01-1.05x the base
# GEMV alone for one token, but 2x and more from 4 tokens up, where F.linear + BGMV costs 1.6x
FUSED_MAX_TOKENS = 1


def triton_available() -> bool:
    """True when triton can be imported (it is optional: ``pip install 'deltazoo[gpu]'``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton" and not triton_available():
        raise RuntimeError(
            "backend='triton' needs triton: pip install 'deltazoo[gpu]', or use backend='torch'"
        )
    return backend


def _as_stack(deltas: PackedDelta | StackedDeltas) -> StackedDeltas:
    return deltas if isinstance(deltas, StackedDeltas) else stack_deltas([deltas])


def batched_delta_add_(
    y: torch.Tensor, x: torch.Tensor, deltas: PackedDelta | StackedDeltas, delta_ids: torch.Tensor,
    backend: Backend = "auto", validate: bool = True,
) -> torch.Tensor:
    """In place ``y[b] += x[b] @ ΔŴ[delta_ids[b]]ᵀ`` (``-1`` = nothing added); returns ``y``.

    ``x`` is ``[batch, cols]``, ``y`` ``[batch, rows]``, ``delta_ids`` ``[batch]`` integers.
    ``validate=False`` skips the id range check (which synchronises a CUDA stream): use it only with
    ids checked beforehand by ``check_delta_ids``.
    """
    stack = _as_stack(deltas)
    if x.dim() != 2 or x.shape[1] != stack.cols:
        raise ValueError(f"x must be [batch, {stack.cols}]; got {list(x.shape)}")
    if tuple(y.shape) != (x.shape[0], stack.rows):
        raise ValueError(f"y must be [{x.shape[0]}, {stack.rows}]; got {list(y.shape)}")
    if stack.device != x.device:
        raise ValueError(f"deltas are on {stack.device} but x is on {x.device}; move them with .to(device)")
    ids = check_delta_ids(delta_ids, x.shape[0], stack.num_deltas) if validate else delta_ids.to(torch.int32)
    ids = ids.to(x.device)
    if resolve_backend(backend, x.device) == "triton":
        from .triton_delta import delta_bgmv_add_

        return delta_bgmv_add_(y, x, stack, ids.contiguous())
    d = batched_delta_matmul_reference(x, stack, ids)
    y.copy_((y.to(torch.float32) + d).to(y.dtype))
    return y


def delta_matmul(x: torch.Tensor, delta: PackedDelta, backend: Backend = "auto") -> torch.Tensor:
    """``x @ ΔŴᵀ`` in float32, ``[batch, rows]``, read from the packed delta."""
    y = torch.zeros((x.shape[0], delta.rows), dtype=torch.float32, device=x.device)
    ids = torch.zeros(x.shape[0], dtype=torch.int32, device=x.device)
    return batched_delta_add_(y, x, delta, ids, backend=backend)


def linear_with_delta(
    x: torch.Tensor, w_base: torch.Tensor, delta: PackedDelta | StackedDeltas,
    bias: torch.Tensor | None = None, delta_ids: torch.Tensor | None = None, backend: Backend = "auto",
    validate: bool = True, fused: bool = False,
) -> torch.Tensor:
    """``x·W_baseᵀ (+ bias) + x·ΔŴᵀ`` for ``x [..., cols]``, in ``x``'s dtype.

    With a ``StackedDeltas``, ``delta_ids`` (one per row of the flattened ``x``) names each token's
    delta, ``-1`` for the base alone; with one ``PackedDelta`` every token uses it. ``validate=False``
    skips the id range check (a device synchronisation) for ids already checked. ``fused=True`` (Triton
    backend only) computes base and delta in one GEMV-style kernel for inputs of at most
    ``FUSED_MAX_TOKENS`` tokens (a decode step at batch 1), and takes the base GEMM + BGMV path for
    more (prefill, larger batches), where that is faster.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if delta_ids is None:
        if isinstance(delta, StackedDeltas) and delta.num_deltas > 1:
            raise ValueError("several deltas are stacked: pass delta_ids, one per token (-1 = base only)")
        delta_ids = torch.zeros(x2.shape[0], dtype=torch.int32, device=x.device)
        validate = False
    if fused:
        stack = _as_stack(delta)
        if resolve_backend(backend, x.device) != "triton":
            raise ValueError("fused=True needs the Triton backend (CUDA tensors, or TRITON_INTERPRET=1)")
        if x2.shape[1] != stack.cols or tuple(w_base.shape) != stack.shape:
            raise ValueError(f"x [..., {x2.shape[1]}] and W_base {list(w_base.shape)} do not fit a "
                             f"delta of shape {list(stack.shape)}")
        if stack.device != x.device or w_base.device != x.device:
            raise ValueError(f"x is on {x.device}, W_base on {w_base.device}, deltas on {stack.device}: "
                             "move them to one device")
        if x2.shape[0] <= FUSED_MAX_TOKENS:
            ids = delta_ids.reshape(-1)
            ids = check_delta_ids(ids, x2.shape[0], stack.num_deltas) if validate else ids.to(torch.int32)
            from .triton_delta import fused_linear_delta

            y = fused_linear_delta(x2, w_base, bias, stack, ids.to(x.device).contiguous())
            return y.reshape(*lead, y.shape[-1])
    y = F.linear(x2, w_base, bias)
    batched_delta_add_(y, x2, delta, delta_ids.reshape(-1), backend=backend, validate=validate)
    return y.reshape(*lead, y.shape[-1])
