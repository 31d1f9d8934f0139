"""The host: one resident base from a deltazoo server, fine-tunes resolved, checked and fetched on
demand, completions run by the batching engine."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from deltazoo.compression.packed import PackedArtifact, load_artifact
from deltazoo.errors import ClientError, DeltazooError, NotFoundError
from deltazoo.models import VersionInfo
from deltazoo.refs import Ref

from .engine import Completion, Engine
from .errors import HostError
from .store import DeltaStore
from .tokens import Tokenizer, load_tokenizer

DEFAULT_PROFILE = "deltadq:n=1,m=32,bits=4"


@dataclass(frozen=True)
class HostSettings:
    base: str  # ORG/NAME[@REV] of the resident base
    profile: str = DEFAULT_PROFILE  # the serving profile of every fine-tune (one layout per batch)
    budget_bytes: int = 2 << 30  # packed deltas + exact tensors held in memory
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    dtype: str = "float32"
    backend: str = "auto"
    max_batch: int = 16
    build_missing: bool = False  # ask the server to build a missing profile and wait for it
    build_timeout: float = 600.0
    max_tokens_limit: int = 4096


def split_model(model: str) -> tuple[str, str | None]:
    """``org/name[@rev][:profile]`` → (``org/name[@rev]``, profile or None)."""
    name, sep, profile = model.partition(":")
    return name, (profile if sep else None)


def canonical_profile(text: str) -> str:
    """``text`` as the registry spells it (``deltadq:bits=4,m=32,n=1`` is ``deltadq:n=1,m=32,bits=4``)."""
    from deltazoo.compression.deltadq import parse_profile

    try:
        return str(parse_profile(text))
    except ValueError as exc:
        raise HostError(400, "invalid_profile", f"profile {text!r} is not valid: {exc}") from None


class Host:
    def __init__(self, client: Any, settings: HostSettings) -> None:
        self.client = client
        try:
            settings = replace(settings, profile=canonical_profile(settings.profile))
        except HostError as exc:
            raise ValueError(exc.message) from None
        if settings.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1 (got {settings.max_batch})")
        self.settings = settings
        base = client.version_info(settings.base)
        if base.status != "ready":
            raise ValueError(f"the base {base.ref} is {base.status}; wait until it is ready")
        self.base_ref: str = base.ref
        folder = Path(client.snapshot(self.base_ref, quiet=True))  # every file checked by sha256
        self.config: dict[str, Any] = json.loads((folder / "config.json").read_text())
        self.tokenizer: Tokenizer = load_tokenizer(folder, self.config)
        self.model = _load_model(folder, settings)
        positions = int(self.config.get("max_position_embeddings") or 2048)
        self.store = DeltaStore(settings.budget_bytes, self._load)
        self.engine = Engine(self.model, self.store, self.tokenizer.eos_ids, max_positions=positions,
                             max_batch=settings.max_batch, backend=settings.backend)
        self.max_positions = positions
        # what a served artifact must fit: the base's linear weights and every tensor, by name
        self._shapes = {name: tuple(t.shape) for name, t in self.model.state_dict().items()}
        modules = self.model.named_modules()
        self._linears = {f"{name}.weight" for name, m in modules if isinstance(m, torch.nn.Linear)}
        self.created = int(time.time())

    def close(self) -> None:
        self.engine.close()

    # --- names ------------------------------------------------------------------------------------

    def _version(self, name: str) -> VersionInfo:
        try:
            Ref.parse(name)
        except (DeltazooError, ValueError) as exc:
            raise HostError(400, "bad_model",
                            f"model {name!r}: {exc}; write ORG/NAME[@REV][:PROFILE]") from exc
        try:
            return self.client.version_info(name)  # type: ignore[no-any-return]
        except NotFoundError as exc:
            raise HostError(404, "model_not_found", f"{name} is not on the registry: {exc}") from exc
        except ClientError as exc:
            raise HostError(400, "bad_model", f"{name}: {exc}") from exc

    def resolve(self, model: str) -> str | None:
        """The store key ``org/name@rev:profile`` of a request's ``model``, None for the base itself."""
        name, asked = split_model(model.strip())
        profile = canonical_profile(asked) if asked else self.settings.profile
        version = self._version(name)
        if version.ref == self.base_ref:
            return None
        if version.status != "ready":
            raise HostError(409, "version_not_ready", f"{version.ref} is {version.status}; retry when ready")
        if version.parent != self.base_ref:
            # a serving profile is a delta against the version's parent: on another base it is not the
            # fine-tune (a fine-tune of a fine-tune would run as base + its own delta, silently wrong)
            code = "not_a_child" if self.base_ref in version.chain else "not_a_descendant"
            raise HostError(
                400, code,
                f"{version.ref} is not a fine-tune of this host's base {self.base_ref}: its delta is taken "
                f"against its parent {version.parent or '(none: it is a root)'}; serve it from a host "
                f"started on that (`deltazoo host {version.parent or version.ref}`), or pull it dense",
            )
        if profile != self.settings.profile:
            raise HostError(
                400, "profile_not_served",
                f"this host serves profile {self.settings.profile} (one layout per batch); ask for "
                f"{version.ref} with that profile or start a host with --profile {profile}",
            )
        return f"{version.ref}:{profile}"

    # --- deltas -----------------------------------------------------------------------------------

    def _load(self, key: str) -> PackedArtifact:
        ref, profile = split_model(key)
        assert profile is not None
        version = self.client.version_info(ref)
        art = version.artifact(profile)
        status = art.status if art is not None else "missing"
        if status == "failed":
            raise HostError(409, "profile_failed", f"profile {profile} of {ref} failed to build; rebuild it")
        if status != "ready":
            if not self.settings.build_missing:
                hint = ("it is being built; retry shortly" if status != "missing" else
                        f"build it (deltazoo push ... --profile {profile}, or POST its artifacts) or "
                        "start the host with --build-missing")
                raise HostError(409, "profile_not_built", f"profile {profile} of {ref} is not built: {hint}",
                                retry_after=5 if status != "missing" else None)
            if art is None:
                self.client.request_profile(ref, profile)
        try:
            path = self.client.fetch_delta_file(ref, profile, timeout=self.settings.build_timeout, quiet=True)
        except TimeoutError as exc:
            raise HostError(503, "profile_building", f"profile {profile} of {ref} is still building; retry",
                            retry_after=10) from exc
        artifact = load_artifact(path, device=self.settings.device)
        problem = self._misfit(artifact)
        if problem is not None:  # refused before it is resident: it would fail every pass it joined
            raise HostError(409, "incompatible_artifact", f"{ref} cannot run on {self.base_ref}: {problem}")
        return artifact

    def _misfit(self, artifact: PackedArtifact) -> str | None:
        """Why ``artifact`` cannot patch this base (None: it can): a packed layer that is not one of its
        linear layers of that shape, or an exact tensor it has no place of that shape for (a grown
        vocabulary, an embedding packed by ``include=all``)."""
        for name, delta in artifact.packed.items():
            if name not in self._linears:
                return f"{name} is packed, and the base has no linear layer {name!r}"
            if self._shapes[name] != tuple(delta.shape):
                return f"{name} is {list(delta.shape)} in the delta, {list(self._shapes[name])} in the base"
        for name, tensor in artifact.dense.items():
            if name not in self._shapes:
                return f"{name} is a tensor the base does not have"
            if (base := self._shapes[name]) != tuple(tensor.shape):
                return f"{name} is {list(tensor.shape)} in the fine-tune, {list(base)} in the base"
        return None

    # --- requests ---------------------------------------------------------------------------------

    def start(self, model: str, prompt: list[int], *, max_tokens: int = 16, temperature: float = 0.0,
              seed: int | None = None) -> Completion:
        """Resolve ``model``, fetch its delta when needed and queue the completion (returns at once)."""
        if not prompt:
            raise HostError(400, "empty_prompt", "the prompt has no tokens")
        if not 1 <= max_tokens <= self.settings.max_tokens_limit:
            limit = self.settings.max_tokens_limit
            raise HostError(400, "bad_max_tokens",
                            f"max_tokens must be between 1 and {limit}; got {max_tokens}")
        if len(prompt) >= self.max_positions:
            raise HostError(400, "prompt_too_long", f"the prompt has {len(prompt)} tokens; the model's "
                            f"context is {self.max_positions}")
        vocab = int(self.config.get("vocab_size") or 0)
        if vocab and not all(0 <= t < vocab for t in prompt):
            raise HostError(400, "bad_token", f"prompt token ids must lie in [0, {vocab})")
        key = self.resolve(model)
        if key is not None:
            self.store.acquire(key)
        completion = Completion(key=key, prompt=list(prompt), max_tokens=max_tokens,
                                temperature=temperature, seed=seed)
        try:
            return self.engine.submit(completion)
        except Exception:
            if key is not None:
                self.store.release(key)
            raise

    def complete(self, model: str, text: str, *, max_tokens: int = 16, temperature: float = 0.0,
                 timeout: float | None = 600) -> str:
        """The completion text of ``text`` (blocking), for scripts and tests."""
        c = self.start(model, self.tokenizer.encode(text), max_tokens=max_tokens, temperature=temperature)
        c.wait(timeout)
        if c.error is not None:
            raise c.error
        decoder = self.tokenizer.decoder()
        return "".join(decoder.feed(t) for t in c.tokens if t not in self.tokenizer.eos_ids) + decoder.flush()

    def models(self) -> list[dict[str, Any]]:
        """The base, the fine-tunes in memory and the base's descendants on the registry."""
        resident = {k.partition(":")[0] for k in self.store.resident()}
        names = [self.base_ref, *sorted(resident)]
        try:
            lineage = self.client.lineage(self.base_ref)
            children = {e.child for e in lineage.edges if e.parent == self.base_ref}  # what it can serve
            names += [d for d in lineage.descendants if d in children and d not in names]
        except DeltazooError:
            pass
        out = []
        for name in names:
            is_base = name == self.base_ref
            extra = {"base": self.base_ref, "profile": None if is_base else self.settings.profile,
                     "resident": is_base or name in resident}
            out.append({"id": name, "object": "model", "created": self.created,
                        "owned_by": name.split("/")[0], "deltazoo": extra})
        return out


def _load_model(folder: Path, settings: HostSettings) -> torch.nn.Module:
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as exc:  # pragma: no cover - transformers comes with deltazoo[host]
        raise ValueError("the host needs transformers: pip install 'deltazoo[host]'") from exc
    dtype = getattr(torch, settings.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"--dtype must name a torch dtype (float32, bfloat16, float16); "
                         f"got {settings.dtype!r}")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return model.eval().to(settings.device)
