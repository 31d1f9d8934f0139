"""DeltaDQ serving profiles: fine-tune deltas as packed N:M low-bit sparse tensors (seed 001).

A profile string names the recipe, e.g. ``deltadq:n=1,m=32,bits=4`` (the paper's recipe, the default
meaning of every option) or ``deltadq:n=1,m=32,bits=4,scale=row,rescale=sum``. Options:

=============  ==========================  =====================================================
key            values (default first)      meaning
=============  ==========================  =====================================================
n, m           1 ≤ n ≤ m ≤ 1024 (1, 32)    keep n of every m consecutive columns of a row
bits           4, 2, 3, 8                  k-bit uniform symmetric codes
scale          tensor, row, group          one fp16 min-max scale per tensor / row / group
group_size     multiple of m               columns per scale when ``scale=group`` (only then)
select         random, magnitude, obs,     which n of a group survive: seeded random (paper's
               importance, search          balanced dropout), the largest |Δ| (biased), the
                                           largest OBS saliency Δ_j² / [H⁻¹]_jj (calibrated), or
                                           one per m/n sub-block drawn ∝ |Δ| and stored as the
                                           unbiased Horvitz–Thompson value (deltadq_alloc.py); or
                                           (calibrated) the best of ``draws`` such draws per group
                                           on the layer's inputs (deltadq_search.py)
mix            0–100 (0)                   select=importance|search: % of uniform mixed into ∝ |Δ|
draws          1–256 (16)                  select=search only: importance draws tried per group
ridge          integer ≥ 0 (500)           select=search only: the search minimises
                                           eᵀ(H + ridge/100 · mean diag H · I)e per row
rescale        mn, none, sum               kept values × m/n (paper); unchanged; or shifted so
                                           each group's sum equals the dense group's sum
fit            minmax, lsq, refit, gptq,   scale = max|x| / (2^(k−1)−1) (paper), or refined by
               obs                         least squares on the kept values (Lloyd steps); or,
                                           calibrated (compression/deltadq_fit.py): kept values
                                           refit to the layer's inputs; + GPTQ rounding; + a
                                           scale grid search on output error
anchor         integer ≥ 0 (0)             calibrated fits only: pull the refit toward the paper's
                                           m/n-rescaled values with weight anchor/100 · mean diag H
alloc          none, sensitivity           sensitivity: per-layer n, m, bits chosen on the
                                           calibration inputs within the bytes that n:m/bits would
                                           take on every layer (deltadq_alloc.py; calibrated)
include        linear, all                 pack decoder linear weights only, or also 2-D
                                           embeddings / lm_head
seed           integer ≥ 0 (0)             dropout seed; each tensor uses seed + hash(name)
=============  ==========================  =====================================================

Calibrated options (``fit=refit|gptq|obs``, ``select=obs|search``, ``alloc=sensitivity``) need
``calibration``: a mapping from linear weight names to their input Hessians ``H = XᵀX / N``
(``compression.calibration``); with the calibrated fits the kept values replace ``rescale`` (which must
stay at its default). ``select=search`` only chooses among unbiased importance draws (values are not
refit); its ``ridge`` weighs the weight-space error so that the choice does not fit the calibration
text alone (zoo writer, 1:32 4-bit: see benchmarks/results/lossy_full_writer.md).

``str(profile)`` is canonical: ``n``, ``m``, ``bits`` always, then only the options that differ from
their default, in the order above. Everything here is pure: tensors in, ``PackedArtifact`` out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch
from deltazoo.compression.deltadq_alloc import CANDIDATES, allocate, importance_keep, layer_choices
from deltazoo.compression.deltadq_fit import damped, obs_positions, quantize_fitted, refit
from deltazoo.compression.deltadq_search import MAX_DRAWS, search_keep
from deltazoo.compression.packed import PackedArtifact, PackedDelta, index_bits, pack_code_rows

DELTADQ_VERSION = 1
PREFIX = "deltadq"
ALLOWED_BITS = (2, 3, 4, 8)
MAX_M = 1024
_CHOICES = {
    "scale": ("tensor", "row", "group"),
    "select": ("random", "magnitude", "obs", "importance", "search"),
    "rescale": ("mn", "none", "sum"),
    "fit": ("minmax", "lsq", "refit", "gptq", "obs"),
    "alloc": ("none", "sensitivity"),
    "include": ("linear", "all"),
}
_INT_KEYS = ("n", "m", "bits", "group_size", "mix", "draws", "ridge", "anchor", "seed")
# 2-D weights that are not linear layers of the decoder: token / position embeddings and the output head.
_EMBEDDING_NAME = re.compile(r"(embed|lm_head|wte|wpe|embed_out|word_embeddings|shared)", re.IGNORECASE)
_LSQ_STEPS = 4
CALIBRATED_FITS = ("refit", "gptq", "obs")
DEFAULT_DRAWS = 16
DEFAULT_RIDGE = 500


@dataclass(frozen=True)
class DeltaDQProfile:
    """A parsed ``deltadq:`` profile; build one with ``parse_profile``."""

    n: int = 1
    m: int = 32
    bits: int = 4
    scale: str = "tensor"
    group_size: int = 0
    select: str = "random"
    mix: int = 0
    draws: int = DEFAULT_DRAWS
    ridge: int = DEFAULT_RIDGE
    rescale: str = "mn"
    fit: str = "minmax"
    anchor: int = 0
    alloc: str = "none"
    include: str = "linear"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.m <= MAX_M:
            raise ValueError(f"m={self.m} must be between 1 and {MAX_M}")
        if not 1 <= self.n <= self.m:
            raise ValueError(f"n={self.n} must be between 1 and m={self.m} (keep n of every m)")
        if self.bits not in ALLOWED_BITS:
            raise ValueError(f"bits={self.bits} is not supported; use one of {list(ALLOWED_BITS)}")
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"{key}={getattr(self, key)!r} is not one of {list(choices)}")
        if self.scale == "group":
            if self.group_size <= 0 or self.group_size % self.m:
                raise ValueError(
                    f"scale=group needs group_size=G, a positive multiple of m={self.m} (e.g. {4 * self.m})"
                )
        elif self.group_size:
            raise ValueError(f"group_size is only meaningful with scale=group (got scale={self.scale})")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be ≥ 0")
        if self.select == "obs" and self.fit not in CALIBRATED_FITS:
            raise ValueError("select=obs keeps what a refit can use; add fit=refit, fit=gptq or fit=obs")
        if self.anchor and self.fit not in CALIBRATED_FITS:
            raise ValueError(f"anchor={self.anchor} only applies to fit=refit, fit=gptq or fit=obs")
        if self.select in ("importance", "search"):
            if self.m % self.n or self.fit in CALIBRATED_FITS or self.rescale != "mn":
                raise ValueError(
                    f"select={self.select} draws one entry per m/n sub-block and stores its unbiased "
                    f"value: it needs n dividing m (n={self.n}, m={self.m}), fit=minmax|lsq and rescale=mn"
                )
            if self.mix > 100:
                raise ValueError(f"mix={self.mix} is a percentage: use 0..100")
        elif self.mix:
            raise ValueError(f"mix={self.mix} only applies to select=importance or select=search")
        if self.select != "search" and (self.draws, self.ridge) != (DEFAULT_DRAWS, DEFAULT_RIDGE):
            raise ValueError("draws and ridge only apply to select=search")
        if not 1 <= self.draws <= MAX_DRAWS:
            raise ValueError(f"draws={self.draws} must be between 1 and {MAX_DRAWS}")
        if self.alloc == "sensitivity" and (self.fit in CALIBRATED_FITS or self.scale == "group"):
            raise ValueError(
                "alloc=sensitivity picks n, m, bits per layer: "
                "use it with fit=minmax|lsq and scale=tensor|row"
            )
        if self.fit in CALIBRATED_FITS and self.rescale != "mn":
            raise ValueError(f"fit={self.fit} refits the kept values itself; drop rescale={self.rescale}")

    def __str__(self) -> str:
        defaults = DeltaDQProfile()
        parts = [f"n={self.n}", f"m={self.m}", f"bits={self.bits}"]
        for f in fields(self):
            if f.name in ("n", "m", "bits"):
                continue
            value = getattr(self, f.name)
            if value != getattr(defaults, f.name):
                parts.append(f"{f.name}={value}")
        return f"{PREFIX}:" + ",".join(parts)

    @property
    def kept_fraction(self) -> float:
        return self.n / self.m

    @property
    def needs_calibration(self) -> bool:
        """True when building this profile needs per-layer input Hessians (``calibration``)."""
        return self.fit in CALIBRATED_FITS or self.alloc == "sensitivity" or self.select == "search"


def parse_profile(text: str) -> DeltaDQProfile:
    """Parse ``deltadq:n=1,m=32,bits=4[,key=value...]``; ``ValueError`` says what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"a profile is a string like 'deltadq:n=1,m=32,bits=4', got {type(text).__name__}")
    head, sep, body = text.strip().partition(":")
    if head != PREFIX:
        raise ValueError(f"profile {text!r} is not a deltadq profile; write 'deltadq:n=1,m=32,bits=4'")
    values: dict[str, int | str] = {}
    known = [f.name for f in fields(DeltaDQProfile)]
    for item in body.split(",") if sep and body.strip() else []:
        key, eq, raw = (s.strip() for s in item.partition("="))
        if not eq or not key or not raw:
            raise ValueError(f"profile {text!r}: {item!r} is not key=value")
        if key not in known:
            raise ValueError(f"profile {text!r}: unknown option {key!r}; known options are {known}")
        if key in values:
            raise ValueError(f"profile {text!r}: option {key!r} given twice")
        if key in _INT_KEYS:
            if not re.fullmatch(r"\d+", raw):
                raise ValueError(f"profile {text!r}: {key}={raw!r} must be a non-negative integer")
            values[key] = int(raw)
        else:
            values[key] = raw
    try:
        return DeltaDQProfile(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"profile {text!r}: {exc}") from None


def tensor_seed(seed: int, name: str) -> int:
    """The generator seed of one tensor: profile seed + a stable (sha256) hash of its name."""
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return (seed + h) % (1 << 63)


def _select(delta3: torch.Tensor, profile: DeltaDQProfile, seed: int) -> torch.Tensor:
    """In-group positions ``[rows, groups, n]`` (ascending) of the kept entries."""
    if profile.n == profile.m:
        pos = torch.arange(profile.m).expand(delta3.shape)
        return pos.contiguous()
    if profile.select == "random":
        gen = torch.Generator(device="cpu").manual_seed(seed)
        keys = torch.rand(delta3.shape, generator=gen, dtype=torch.float32)
    else:
        keys = delta3.abs()
    pos = keys.topk(profile.n, dim=-1, sorted=False).indices
    return pos.sort(dim=-1).values


def _rescale(kept: torch.Tensor, delta3: torch.Tensor, profile: DeltaDQProfile) -> torch.Tensor:
    if profile.rescale == "mn":
        return kept * (profile.m / profile.n)
    if profile.rescale == "sum":
        missing = delta3.sum(-1, keepdim=True) - kept.sum(-1, keepdim=True)
        return kept + missing / profile.n
    return kept


def _scale_view(values: torch.Tensor, profile: DeltaDQProfile) -> torch.Tensor:
    """``values [rows, kept]`` viewed as ``[rows, scales_per_row, kept_per_scale]``."""
    rows, kept = values.shape
    if profile.scale == "tensor":
        return values.reshape(1, 1, -1)
    if profile.scale == "row":
        return values.reshape(rows, 1, kept)
    per_scale = profile.group_size // profile.m * profile.n
    return values.reshape(rows, kept // per_scale, per_scale)


def quantize(values: torch.Tensor, profile: DeltaDQProfile, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform symmetric k-bit codes of ``values [rows, kept]``: (signed levels int32, fp16 scales)."""
    qmax = (1 << (profile.bits - 1)) - 1
    view = _scale_view(values, profile)
    scale = view.abs().amax(-1, keepdim=True) / qmax
    if profile.fit == "lsq":
        for _ in range(_LSQ_STEPS):
            q = _levels(view, scale, qmax)
            num = (q * view).sum(-1, keepdim=True)
            den = (q * q).sum(-1, keepdim=True)
            scale = torch.where(den > 0, num / den.clamp_min(1e-30), scale)
    scale16 = _fp16_scales(scale, values, name)
    q = _levels(view, scale16.to(torch.float32), qmax)
    return q.reshape(values.shape).to(torch.int32), scale16.reshape(_scales_shape(view, profile))


def _scales_shape(view: torch.Tensor, profile: DeltaDQProfile) -> tuple[int, ...]:
    return {"tensor": (1,), "row": (view.shape[0],)}.get(profile.scale, tuple(view.shape[:2]))


def _fp16_scales(scale: torch.Tensor, values: torch.Tensor, name: str) -> torch.Tensor:
    scale16 = scale.to(torch.float16)
    if not torch.isfinite(scale16).all():
        biggest = values.abs().max().item()
        raise ValueError(f"{name}: delta too large for fp16 scales (max |Δ| = {biggest:.3g})")
    return scale16


def _quantize_calibrated(
    delta3: torch.Tensor, pos: torch.Tensor, h: torch.Tensor, profile: DeltaDQProfile, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit the kept values to the layer's inputs, then quantize them (``fit=refit|gptq|obs``)."""
    rows, groups, m = delta3.shape
    columns = (torch.arange(groups).reshape(1, groups, 1) * m + pos).reshape(rows, -1)
    anchor = delta3.gather(-1, pos).reshape(rows, -1) * (profile.m / profile.n)
    strength = profile.anchor / 100
    values = refit(delta3.reshape(rows, -1), columns, h, anchor, strength)
    mu = strength * h.diagonal().mean().item()
    if profile.fit == "refit":
        return quantize(values, profile, name)
    qmax = (1 << (profile.bits - 1)) - 1
    view = _scale_view(values, profile)
    scales = _fp16_scales(view.abs().amax(-1) / qmax, values, name).reshape(_scales_shape(view, profile))
    kept = values.shape[1]

    def per_entry(sc: torch.Tensor) -> torch.Tensor:
        if profile.scale == "tensor":
            return sc.reshape(1, 1).expand(rows, kept)
        if profile.scale == "row":
            return sc.reshape(rows, 1).expand(rows, kept)
        return sc.repeat_interleave(kept // sc.shape[1], dim=1)

    q, chosen = quantize_fitted(values, columns, h, scales, per_entry, qmax, grid=profile.fit == "obs", mu=mu)
    return q, _fp16_scales(chosen.to(torch.float32), values, name)


def _levels(view: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(view / safe).clamp_(-qmax, qmax)
    return torch.where(scale > 0, q, torch.zeros_like(q))


def compress_delta(
    finetune: torch.Tensor,
    base: torch.Tensor,
    profile: DeltaDQProfile | str,
    name: str,
    hessian: torch.Tensor | None = None,
) -> PackedDelta:
    """DeltaDQ of one 2-D weight: Group-wise Balanced Dropout then Delta Quantization, packed.

    ``hessian`` (the layer's input ``XᵀX / N``, ``[cols, cols]``) is required by calibrated profiles.
    """
    profile = parse_profile(profile) if isinstance(profile, str) else profile
    if profile.alloc != "none":
        raise ValueError(f"{name}: alloc={profile.alloc} chooses per layer: build the whole artifact")
    if profile.needs_calibration and hessian is None:
        raise ValueError(
            f"{name}: profile {profile} needs calibration (the layer's input Hessian); "
            "collect it with compression.calibration.collect_hessians"
        )
    if finetune.dim() != 2:
        raise ValueError(f"{name}: DeltaDQ packs 2-D weights; this tensor has shape {list(finetune.shape)}")
    if tuple(finetune.shape) != tuple(base.shape):
        raise ValueError(
            f"{name}: fine-tune shape {list(finetune.shape)} differs from base {list(base.shape)}"
        )
    if finetune.dtype != base.dtype:
        raise ValueError(f"{name}: fine-tune dtype {finetune.dtype} differs from base dtype {base.dtype}")
    if not (finetune.is_floating_point() and base.is_floating_point()):
        raise ValueError(f"{name}: DeltaDQ needs floating-point weights, got {finetune.dtype}")
    rows, cols = finetune.shape
    if cols % profile.m:
        raise ValueError(
            f"{name}: m={profile.m} does not divide the row length {cols}; pad or choose m dividing {cols}"
        )
    if profile.scale == "group" and cols % profile.group_size:
        raise ValueError(f"{name}: group_size={profile.group_size} does not divide the row length {cols}")
    delta3 = (finetune.detach().cpu().to(torch.float32) - base.detach().cpu().to(torch.float32))
    delta3 = delta3.reshape(rows, cols // profile.m, profile.m)
    seed = tensor_seed(profile.seed, name)
    if profile.select == "importance":
        pos, kept3 = importance_keep(delta3, profile.n, profile.mix, seed)
        q, scales = quantize(kept3.reshape(rows, -1), profile, name)
    elif profile.select == "search":
        assert hessian is not None
        try:
            pos, kept3 = search_keep(
                delta3, hessian, profile.n, profile.mix, seed, profile.draws, profile.ridge
            )
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        q, scales = quantize(kept3.reshape(rows, -1), profile, name)
    elif profile.fit in CALIBRATED_FITS:
        assert hessian is not None
        h = damped(hessian, cols, name)
        obs = profile.select == "obs"
        pos = obs_positions(delta3, h, profile.n) if obs else _select(delta3, profile, seed)
        q, scales = _quantize_calibrated(delta3, pos, h, profile, name)
    else:
        pos = _select(delta3, profile, seed)
        kept = _rescale(delta3.gather(-1, pos), delta3, profile).reshape(rows, -1)
        q, scales = quantize(kept, profile, name)
    return PackedDelta(
        shape=(rows, cols), n=profile.n, m=profile.m, bits=profile.bits,
        values=pack_code_rows(q + (1 << (profile.bits - 1)), profile.bits),
        indices=pack_code_rows(pos.reshape(rows, -1), index_bits(profile.m)),
        scales=scales, scale_granularity=profile.scale, group_size=profile.group_size, seed=seed,
        dtype=str(finetune.dtype).removeprefix("torch."),
    )


def is_packable(
    name: str, finetune: torch.Tensor, base: torch.Tensor | None, profile: DeltaDQProfile
) -> bool:
    """True when ``name`` becomes a packed delta under ``profile`` (see ``build_artifact``)."""
    return (
        base is not None
        and name.endswith(".weight")
        and finetune.dim() == 2
        and tuple(finetune.shape) == tuple(base.shape)
        and finetune.dtype == base.dtype
        and finetune.is_floating_point()
        and finetune.shape[1] % profile.m == 0
        and (profile.scale != "group" or finetune.shape[1] % profile.group_size == 0)
        and (profile.include == "all" or not _EMBEDDING_NAME.search(name))
    )


def build_artifact(
    base_state: Mapping[str, torch.Tensor],
    finetune_state: Mapping[str, torch.Tensor],
    profile: str | DeltaDQProfile,
    calibration: Mapping[str, torch.Tensor] | None = None,
) -> PackedArtifact:
    """The ``profile`` serving artifact of a fine-tune against its base.

    2-D ``*.weight`` tensors present in both with the same shape and dtype, a row length divisible by
    m (and by group_size) and, unless ``include=all``, not an embedding or output head, become packed
    deltas. Every other tensor that differs from the base (or is new, reshaped or retyped) is kept
    exact in ``dense``; tensors equal to the base are omitted. Tensors of the base missing from the
    fine-tune are listed in ``metadata["removed"]``. Calibrated profiles need ``calibration``: the
    input Hessian of every packed weight, by name (``compression.calibration.collect_hessians``).
    """
    profile = parse_profile(profile) if isinstance(profile, str) else profile
    if profile.needs_calibration and calibration is None:
        raise ValueError(
            f"profile {profile} needs calibration: pass calibration=collect_hessians(base model, text)"
        )
    to_pack: list[str] = []
    dense: dict[str, torch.Tensor] = {}
    for name, ft in finetune_state.items():
        base = base_state.get(name)
        same_kind = base is not None and base.shape == ft.shape and base.dtype == ft.dtype
        if same_kind and base is not None and torch.equal(base, ft):
            continue
        if is_packable(name, ft, base, profile):
            if profile.needs_calibration and name not in (calibration or {}):
                raise ValueError(
                    f"profile {profile}: no calibration matrix for {name}; calibrate every linear "
                    "layer (embeddings have none: use include=linear)"
                )
            to_pack.append(name)
        else:
            dense[name] = ft.detach().cpu().contiguous()
    hessians = {k: calibration[k] for k in to_pack} if calibration is not None else {}
    layer_profiles = (
        _allocated(base_state, finetune_state, profile, hessians)
        if profile.alloc != "none"
        else dict.fromkeys(to_pack, profile)
    )
    packed = {
        k: compress_delta(finetune_state[k], base_state[k], p, k, hessians.get(k))
        for k, p in layer_profiles.items()
    }
    removed = sorted(set(base_state) - set(finetune_state))
    metadata = {
        "method": PREFIX,
        "deltadq_version": str(DELTADQ_VERSION),
        "seed": str(profile.seed),
        "removed": json.dumps(removed),
    }
    return PackedArtifact(profile=str(profile), packed=packed, dense=dense, metadata=metadata)


def _allocated(
    base_state: Mapping[str, torch.Tensor],
    finetune_state: Mapping[str, torch.Tensor],
    profile: DeltaDQProfile,
    hessians: Mapping[str, torch.Tensor],
) -> dict[str, DeltaDQProfile]:
    """``alloc=sensitivity``: per-layer n, m, bits within the bytes of the profile's (deltadq_alloc)."""
    own = (profile.n, profile.m, profile.bits)
    choices = {}
    for k, h in hessians.items():
        ft, base = finetune_state[k], base_state[k]

        def build(
            n: int, m: int, bits: int, k: str = k, ft: torch.Tensor = ft, base: torch.Tensor = base,
            h: torch.Tensor = h,
        ):
            layer = replace(profile, n=n, m=m, bits=bits, alloc="none")
            return compress_delta(ft, base, layer, k, h if layer.needs_calibration else None)

        options = [o for o in dict.fromkeys((own, *CANDIDATES)) if ft.shape[1] % o[1] == 0]
        choices[k] = layer_choices(k, ft, base, h, options, build)
    budget = sum(c.nbytes for cs in choices.values() for c in cs if (c.n, c.m, c.bits) == own)
    chosen = allocate(choices, budget)
    return {k: replace(profile, n=c.n, m=c.m, bits=c.bits, alloc="none") for k, c in chosen.items()}
