"""Per-row exact tensors: every row of a mixed batch runs with its own fine-tune's dense tensors.

A full fine-tune changes more than its linear layers: embeddings, the LM head, norm weights and
biases differ too, and the serving profile keeps them exact (``PackedArtifact.dense``). When one
batch mixes fine-tunes, ``patch_model`` wraps each module owning such a tensor in a ``PerRowModule``
that holds a table ``[1 + num_deltas, *shape]`` per parameter (row 0 = the base's own tensor, row
``i + 1`` = artifact ``i``'s) and runs the module once per distinct delta id of the batch with that
id's tensors (``torch.func.functional_call``): rows are computed exactly as the single-artifact
model computes them. Embeddings are gathered directly (one indexed read, no per-id pass).

Tied parameters (e.g. ``lm_head.weight`` is ``embed_tokens.weight``) share one table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from deltazoo.compression.packed import PackedFormatError

from .reference import check_delta_ids


class PerRowModule(nn.Module):
    """Runs ``inner`` with per-row parameters: ``tables[attr][d + 1]`` for a row with delta id ``d``
    (``-1`` = base). The first positional argument's leading dimension(s) are the batch (``[batch]``
    ids) or batch and sequence (``[batch, seq]`` ids)."""

    delta_ids: torch.Tensor | None
    inner: nn.Module

    def __init__(self, inner: nn.Module, tables: Mapping[str, torch.Tensor]):
        super().__init__()
        if not tables:
            raise ValueError("PerRowModule needs at least one per-row parameter table")
        counts = {t.shape[0] for t in tables.values()}
        if len(counts) != 1:
            raise ValueError(f"per-row tables disagree on the number of rows: {sorted(counts)}")
        if list(inner.children()):
            raise PackedFormatError(
                f"{type(inner).__name__} has submodules; per-row exact tensors are kept on leaf modules"
            )
        # Not a submodule: the wrapper shows the inner module's own parameters under their own names,
        # so the patched model's state dict keeps the base model's names.
        object.__setattr__(self, "inner", inner)
        for name, p in inner.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in inner.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.attrs = tuple(tables)
        for attr, table in tables.items():
            current = getattr(inner, attr)
            if tuple(table.shape[1:]) != tuple(current.shape):
                raise ValueError(
                    f"per-row table for {attr!r} is {list(table.shape[1:])} per row but the module's is "
                    f"{list(current.shape)}"
                )
            self.register_buffer(f"rows_{attr}", table, persistent=False)
        self.register_buffer("delta_ids", None, persistent=False)

    @property
    def num_deltas(self) -> int:
        return int(self.table(self.attrs[0]).shape[0]) - 1

    def table(self, attr: str) -> torch.Tensor:
        t = getattr(self, f"rows_{attr}")
        assert isinstance(t, torch.Tensor)
        return t

    def set_delta_ids(self, ids: torch.Tensor | Sequence[int] | None) -> None:
        if ids is None:
            self.delta_ids = None
            return
        t = torch.as_tensor(ids, device=self.table(self.attrs[0]).device)
        check_delta_ids(t.reshape(-1), t.numel(), self.num_deltas)
        self.delta_ids = t.to(torch.int64)

    def _params(self, d: int) -> dict[str, torch.Tensor]:
        return {attr: self.table(attr)[d + 1] for attr in self.attrs}

    def _ids(self, x: torch.Tensor) -> torch.Tensor | None:
        ids = self.delta_ids
        if ids is None:
            if self.num_deltas > 1:
                raise ValueError(
                    f"{self.num_deltas} fine-tunes are loaded: choose one per sequence first with "
                    "deltazoo.kernels.set_active_deltas(model, ids) (-1 = base only)"
                )
            return None
        if tuple(x.shape[: ids.dim()]) != tuple(ids.shape):
            raise ValueError(
                f"active delta ids have shape {list(ids.shape)} but the input batch is "
                f"{list(x.shape[: ids.dim()])}; give one id per sequence ([batch]) "
                "or per token ([batch, seq])"
            )
        return ids

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        ids = self._ids(x)
        if ids is None:
            return functional_call(self.inner, self._params(0), (x, *args), kwargs)
        if type(self.inner) is nn.Embedding and not args and not kwargs and self.attrs == ("weight",):
            table = self.table("weight")
            rows = (ids + 1).reshape(*ids.shape, *([1] * (x.dim() - ids.dim())))
            return table[rows.expand(x.shape), x]
        distinct = torch.unique(ids).tolist()
        if len(distinct) == 1:
            return functional_call(self.inner, self._params(int(distinct[0])), (x, *args), kwargs)
        out: torch.Tensor | None = None
        for d in distinct:
            sel = ids == d
            part = functional_call(self.inner, self._params(int(d)), (x[sel], *args), kwargs)
            if out is None:
                out = part.new_empty((*ids.shape, *part.shape[1:]))
            out[sel] = part
        return out

    def extra_repr(self) -> str:
        return f"per_row={list(self.attrs)}, deltas={self.num_deltas}"


def per_row_tables(
    model: nn.Module, denses: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]
) -> dict[str, dict[str, torch.Tensor]]:
    """``{module path: {attr: table}}`` for the exact tensors ``names``: row 0 the model's current
    (base) value, row ``i + 1`` ``denses[i][name]`` (or the base value where artifact ``i`` lacks it).
    Tied parameters get one shared table, listed under every module that holds them."""
    owners: dict[int, list[str]] = {}
    params: dict[str, torch.Tensor] = {}
    for full, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(full)
        params[full] = p
    for full, b in model.named_buffers(remove_duplicate=False):
        owners.setdefault(id(b), []).append(full)
        params[full] = b
    tables: dict[int, torch.Tensor] = {}
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name in names:
        if name not in params:
            raise PackedFormatError(f"{name}: exact tensor of the artifact has no place in this model")
        base = params[name]
        key = id(base)
        if key not in tables:
            rows = [base.detach()]
            for dense in denses:
                value = dense.get(name)
                if value is None:
                    value = next((dense[o] for o in owners[key] if o in dense), base.detach())
                if tuple(value.shape) != tuple(base.shape):
                    raise PackedFormatError(
                        f"{name}: artifact tensor is {list(value.shape)} but the model's is "
                        f"{list(base.shape)}; resize the model first (e.g. model.resize_token_embeddings)"
                    )
                rows.append(value.to(device=base.device, dtype=base.dtype))
            tables[key] = torch.stack(rows)
        for full in owners[key]:
            path, _, attr = full.rpartition(".")
            out.setdefault(path, {})[attr] = tables[key]
    return out
