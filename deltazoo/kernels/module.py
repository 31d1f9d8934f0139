"""``DeltaLinear`` and ``patch_model``: serve packed deltas inside a transformers model.

``patch_model(model, artifact)`` swaps every ``nn.Linear`` whose weight is named in
``artifact.packed`` for a ``DeltaLinear`` that keeps the base weight and adds the packed delta on
the fly, then copies the artifact's exact tensors (``artifact.dense``) into the model. State-dict
names are unchanged (the delta buffers are not persistent), so the patched model still loads and
saves base checkpoints.

With several artifacts (one base, many fine-tunes) each layer stacks the deltas and every sequence
names the fine-tune it runs with: ``set_active_deltas(model, [0, 2, -1])`` or the context manager
``active_deltas(model, ids)`` (``-1`` = the base model, ``i`` = ``artifacts[i]``). Exact tensors that
differ between the fine-tunes (embeddings, LM head, norms, biases) are kept per fine-tune and chosen
per row (``on_dense_mismatch="per-row"``, the default; see ``rows.py``), so every row equals its
fine-tune's single-artifact model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from deltazoo.compression.packed import PackedArtifact, PackedDelta, PackedFormatError

from .ops import Backend, batched_delta_add_, linear_with_delta, resolve_backend
from .reference import check_delta_ids
from .rows import PerRowModule, per_row_tables
from .stacked import StackedDeltas, stack_deltas

DENSE_MODES = ("per-row", "keep-base", "error")


class DeltaLinear(nn.Module):
    """``y = x·W_baseᵀ + b + x·ΔŴ[id]ᵀ`` with ``ΔŴ`` kept packed; takes over a base ``nn.Linear``'s
    parameters (same names: ``weight``, ``bias``)."""

    delta_values: torch.Tensor
    delta_indices: torch.Tensor
    delta_scales: torch.Tensor
    delta_ids: torch.Tensor | None
    row_bias: torch.Tensor | None

    def __init__(self, base: nn.Linear, deltas: PackedDelta | StackedDeltas, backend: Backend = "auto",
                 fused: bool = False):
        super().__init__()
        stack = deltas if isinstance(deltas, StackedDeltas) else stack_deltas([deltas])
        if stack.shape != (base.out_features, base.in_features):
            raise PackedFormatError(
                f"delta is {list(stack.shape)} but the linear layer's weight is "
                f"[{base.out_features}, {base.in_features}]"
            )
        resolve_backend(backend, base.weight.device)  # reject a bad name now, not at the first forward
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.backend: Backend = backend
        self.fused = fused  # one Triton kernel for base + delta on one-token inputs; see linear_with_delta
        self._layout = {k: getattr(stack, k) for k in ("shape", "n", "m", "bits", "scale_granularity",
                                                        "group_size")}
        device = base.weight.device
        self.register_buffer("delta_values", stack.values.to(device), persistent=False)
        self.register_buffer("delta_indices", stack.indices.to(device), persistent=False)
        self.register_buffer("delta_scales", stack.scales.to(device), persistent=False)
        self.register_buffer("delta_ids", None, persistent=False)
        self.register_buffer("row_bias", None, persistent=False)

    def set_row_bias(self, table: torch.Tensor) -> None:
        """Per-fine-tune biases ``[1 + num_deltas, out_features]`` (row 0 = base): row ``b`` adds
        ``table[delta_ids[b] + 1]`` instead of ``bias``."""
        if tuple(table.shape) != (self.num_deltas + 1, self.out_features):
            raise PackedFormatError(
                f"per-row bias table is {list(table.shape)}; "
                f"expected [{self.num_deltas + 1}, {self.out_features}]"
            )
        self.row_bias = table.to(self.weight.device)

    @property
    def deltas(self) -> StackedDeltas:
        return StackedDeltas(values=self.delta_values, indices=self.delta_indices, scales=self.delta_scales,
                             **self._layout)

    @property
    def num_deltas(self) -> int:
        return self.delta_values.shape[0]

    def set_delta_ids(self, ids: torch.Tensor | Sequence[int] | None) -> None:
        """Per-sequence ``[batch]`` or per-token ``[batch, seq]`` delta ids; ``None`` = all use delta 0
        (allowed only when one delta is loaded)."""
        if ids is None:
            self.delta_ids = None
            return
        t = torch.as_tensor(ids, device=self.delta_values.device)
        check_delta_ids(t.reshape(-1), t.numel(), self.num_deltas)
        self.delta_ids = t.to(torch.int32)

    def _token_ids(self, lead: torch.Size, device: torch.device) -> torch.Tensor:
        ids = self.delta_ids
        if ids is None:
            if self.num_deltas > 1:
                raise ValueError(
                    f"{self.num_deltas} deltas are loaded: choose one per sequence first with "
                    "deltazoo.kernels.set_active_deltas(model, ids) (-1 = base only)"
                )
            return torch.zeros(lead.numel(), dtype=torch.int32, device=device)
        if len(lead) == 0 or ids.shape[0] != lead[0] or (ids.dim() == 2 and tuple(ids.shape) != tuple(lead)):
            raise ValueError(
                f"active delta ids have shape {list(ids.shape)} but the input batch is {list(lead)}; "
                "give one id per sequence ([batch]) or per token ([batch, seq])"
            )
        if ids.dim() == 1:
            ids = ids.reshape(-1, *([1] * (len(lead) - 1))).expand(lead)
        return ids.reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        ids = self._token_ids(lead, x.device)
        bias = self.bias if self.row_bias is None else None
        if self.fused:
            y = linear_with_delta(x2, self.weight, self.deltas, bias=bias, delta_ids=ids,
                                  backend=self.backend, validate=False, fused=True)
        else:
            y = nn.functional.linear(x2, self.weight, bias)
            batched_delta_add_(y, x2, self.deltas, ids, backend=self.backend, validate=False)
        if self.row_bias is not None:
            y = y + self.row_bias[ids.long() + 1].to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        lay = self._layout
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"deltas={self.num_deltas}, n:m={lay['n']}:{lay['m']}, bits={lay['bits']}, "
                f"scales={lay['scale_granularity']}, backend={self.backend}, fused={self.fused}")


def _linear_for(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Linear]:
    if not name.endswith(".weight"):
        raise PackedFormatError(f"{name}: packed deltas apply to linear weights (names ending in '.weight')")
    path = name[: -len(".weight")]
    parent_path, _, attr = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path) if parent_path else model
        module = getattr(parent, attr)
    except AttributeError as exc:
        raise PackedFormatError(
            f"{name}: the model has no module {path!r}; is it the artifact's base model?"
        ) from exc
    if isinstance(module, DeltaLinear):
        raise PackedFormatError(f"{name}: already patched; patch a fresh base model")
    if not isinstance(module, nn.Linear):
        raise PackedFormatError(f"{name}: {path} is a {type(module).__name__}, not nn.Linear")
    return parent, attr, module


def _shared_dense(artifacts: Sequence[PackedArtifact]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Exact tensors equal in every artifact, and the names of those that differ."""
    names = set().union(*(a.dense.keys() for a in artifacts))
    shared, differing = {}, []
    for name in sorted(names):
        tensors = [a.dense.get(name) for a in artifacts]
        first = tensors[0]
        if first is not None and all(t is not None and t.shape == first.shape and torch.equal(t, first)
                                     for t in tensors[1:]):
            shared[name] = first
        else:
            differing.append(name)
    return shared, differing


def _differs_from(model: nn.Module, name: str, value: torch.Tensor) -> bool:
    current = model.state_dict(keep_vars=True).get(name)
    if current is None or tuple(current.shape) != tuple(value.shape):
        return True  # _load_dense / per_row_tables report it with a clear message
    return not torch.equal(current.detach().cpu(), value.to(dtype=current.dtype).cpu())


def _wrap_per_row(model: nn.Module, artifacts: Sequence[PackedArtifact], names: Sequence[str]) -> None:
    """Keep the exact tensors ``names`` per fine-tune: each owning module becomes a ``PerRowModule``
    (a ``DeltaLinear``'s bias becomes its per-row bias table)."""
    tables = per_row_tables(model, [a.dense for a in artifacts], names)
    for path, attrs in tables.items():
        module = model.get_submodule(path) if path else model
        if isinstance(module, DeltaLinear):
            if set(attrs) != {"bias"}:
                raise PackedFormatError(f"{path}: its weight is packed and exact at once")
            module.set_row_bias(attrs["bias"])
            continue
        if any(isinstance(m, (DeltaLinear, PerRowModule)) for m in module.modules()):
            raise PackedFormatError(
                f"{path}: a module holding exact per-fine-tune tensors {sorted(attrs)} contains patched "
                "layers; per-row tensors are supported on leaf modules (norms, embeddings, heads)"
            )
        if not path:
            raise PackedFormatError("exact tensors of the model's root module cannot be chosen per row")
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, PerRowModule(module, attrs))


def _load_dense(model: nn.Module, dense: Mapping[str, torch.Tensor]) -> None:
    state = model.state_dict(keep_vars=True)
    for name, value in dense.items():
        if name not in state:
            raise PackedFormatError(f"{name}: exact tensor of the artifact has no place in this model")
        target = state[name]
        if tuple(target.shape) != tuple(value.shape):
            raise PackedFormatError(
                f"{name}: artifact tensor is {list(value.shape)} but the model's is {list(target.shape)}; "
                "resize the model first (e.g. model.resize_token_embeddings)"
            )
        with torch.no_grad():
            target.copy_(value.to(device=target.device, dtype=target.dtype))


def patch_model(
    model: nn.Module, artifacts: PackedArtifact | Sequence[PackedArtifact], *,
    backend: Backend = "auto", on_dense_mismatch: str = "per-row", fused: bool = False,
) -> nn.Module:
    """Patch ``model`` (a base model) in place to run one fine-tune, or several side by side.

    Each ``nn.Linear`` named in the artifacts' ``packed`` becomes a ``DeltaLinear``. Exact tensors
    (``dense``) follow ``on_dense_mismatch``:

    * ``"per-row"`` (default): every exact tensor that an artifact changes is kept per fine-tune and
      chosen per row (``PerRowModule``, per-row biases), so each row equals its single-artifact
      model and the base rows (``-1``) the base model; state-dict names and values stay the base's;
    * ``"keep-base"``: the base's tensors are kept where the artifacts differ. Every row then loses
      its fine-tune's embeddings, head and norms: on the zoo's fine-tunes this kept 79 % / 61 % of
      the gain where the profile alone keeps 91 % / 78 % (BENCHMARKS.md, Serving);
    * ``"error"``: refuse artifacts whose exact tensors differ.

    With ``"keep-base"`` and ``"error"`` the tensors equal in every artifact are copied into the
    model (so base rows run with them too).

    ``backend`` and ``fused`` are passed to every ``DeltaLinear``. Returns ``model``.
    """
    arts = [artifacts] if isinstance(artifacts, PackedArtifact) else list(artifacts)
    if not arts:
        raise ValueError("patch_model needs at least one artifact")
    if on_dense_mismatch not in DENSE_MODES:
        raise ValueError(f"on_dense_mismatch must be one of {DENSE_MODES}; got {on_dense_mismatch!r}")
    names = list(arts[0].packed)
    for i, a in enumerate(arts[1:], start=1):
        if set(a.packed) != set(names):
            missing = sorted(set(names) ^ set(a.packed))[:5]
            raise PackedFormatError(
                f"artifact {i} packs different layers than artifact 0 (e.g. {missing}); "
                "deltas served together must come from one profile of one base"
            )
    shared, differing = _shared_dense(arts)
    if differing and on_dense_mismatch == "error":
        raise PackedFormatError(
            f"the artifacts carry different exact tensors for {differing[:5]}"
            f"{' ...' if len(differing) > 5 else ''}; on_dense_mismatch='per-row' keeps each fine-tune's "
            "per row, 'keep-base' keeps the base's (at a quality cost)"
        )
    targets = [(name, *_linear_for(model, name)) for name in names]  # check every name before changing any
    per_row: list[str] = []
    if on_dense_mismatch == "per-row":
        changed = set(differing) | {n for n, v in shared.items() if _differs_from(model, n, v)}
        per_row = sorted(changed)
        per_row_tables(model, [a.dense for a in arts], per_row)  # check shapes and names first
    for name, parent, attr, linear in targets:
        stack = stack_deltas([a.packed[name] for a in arts], name=name).to(linear.weight.device)
        setattr(parent, attr, DeltaLinear(linear, stack, backend=backend, fused=fused))
    if on_dense_mismatch == "per-row":
        _wrap_per_row(model, arts, per_row)
    else:
        _load_dense(model, shared)
    return model


def unpatch_model(model: nn.Module) -> nn.Module:
    """Undo ``patch_model`` in place: every ``DeltaLinear`` becomes an ``nn.Linear`` on the same base
    weight and bias, every ``PerRowModule`` its original module (the base's tensors). Exact tensors
    that were copied into the model (one artifact with ``keep-base`` / ``error``) are not restored.
    Returns ``model``, ready to be patched with another set of fine-tunes."""
    for path, module in list(model.named_modules()):
        if not isinstance(module, (DeltaLinear, PerRowModule)) or not path:
            continue
        if isinstance(module, DeltaLinear):
            restored: nn.Module = nn.Linear(module.in_features, module.out_features,
                                            bias=module.bias is not None, device="meta")
            restored.weight = module.weight
            restored.bias = module.bias
        else:
            restored = module.inner
        parent_path, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, attr, restored)
    return model


def delta_layers(model: nn.Module) -> list[DeltaLinear | PerRowModule]:
    """The modules that choose a fine-tune per row: ``DeltaLinear`` and ``PerRowModule``."""
    return [m for m in model.modules() if isinstance(m, (DeltaLinear, PerRowModule))]


def set_active_deltas(model: nn.Module, ids: torch.Tensor | Sequence[int] | None) -> None:
    """Choose each sequence's fine-tune for the following forward passes (and ``generate``):
    ``ids[b]`` indexes the artifacts given to ``patch_model``, ``-1`` = the base model."""
    layers = delta_layers(model)
    if not layers:
        raise ValueError("model has no DeltaLinear layers: call deltazoo.kernels.patch_model first")
    for layer in layers:
        layer.set_delta_ids(ids)


@contextmanager
def active_deltas(model: nn.Module, ids: torch.Tensor | Sequence[int]) -> Iterator[nn.Module]:
    """``with active_deltas(model, [0, 1, -1]): model.generate(...)``; restores the previous choice."""
    layers = delta_layers(model)
    previous = [layer.delta_ids for layer in layers]
    set_active_deltas(model, ids)
    try:
        yield model
    finally:
        for layer, ids_before in zip(layers, previous, strict=True):
            layer.delta_ids = ids_before
