"""Continuous batching over one patched base: every running completion is a row of the same forward
pass, with its fine-tune's delta id (``-1`` = the base).

One engine thread owns the model. Each step it admits waiting completions, makes sure the model is
patched with every fine-tune a running row needs (re-patching from the store's resident set when one
is missing), runs one forward pass over all rows (left-padded, attention mask and position ids from
the mask), picks each row's next token and streams it. Rows leave when they reach ``max_tokens``, an
end-of-sequence token or the model's context length; new rows join at the next step.

Fine-tunes share a pass only when their artifacts pack the same layers (``_admit`` batches rows of one
layout at a time, oldest first). Every step recomputes each row's whole sequence (no KV cache across
steps): exact and simple, and the cost grows with length; a paged KV cache is the next step for long
completions.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from deltazoo.kernels import patch_model, set_active_deltas, unpatch_model

from .store import DeltaStore

MIN_TEMPERATURE = 1e-3  # below it sampling is greedy (logits / 1e-40 overflow to inf)


@dataclass(eq=False)
class Completion:
    """One request's row: its fine-tune (``key``, None = base), prompt, limits and produced tokens.
    ``events`` receives each new token id, then ``None`` when the row has finished."""

    key: str | None
    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: BaseException | None = None
    events: queue.Queue[int | None] = field(default_factory=queue.Queue)
    done: threading.Event = field(default_factory=threading.Event)
    _generator: torch.Generator | None = None

    def next_token(self, logits: torch.Tensor) -> int:
        if self.temperature < MIN_TEMPERATURE:  # 0, or so small that logits / T overflows: greedy
            return int(torch.argmax(logits))
        if self._generator is None:
            self._generator = torch.Generator()
            if self.seed is not None:
                self._generator.manual_seed(self.seed)
            else:
                self._generator.seed()
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def wait(self, timeout: float | None = None) -> Completion:
        if not self.done.wait(timeout):
            raise TimeoutError("the completion did not finish in time")
        return self


class Engine:
    def __init__(self, model: nn.Module, store: DeltaStore, eos_ids: set[int], *, max_positions: int,
                 max_batch: int = 16, backend: str = "auto") -> None:
        self.model = model
        self.store = store
        self.eos_ids = eos_ids
        self.max_positions = max_positions
        self.max_batch = max_batch
        self.backend = backend
        self.device = next(model.parameters()).device
        self.patched: list[str] = []
        self.steps = 0
        self.batch_sizes: list[int] = []  # rows per forward pass, newest last (bounded)
        self.mixed_steps: list[list[str | None]] = []  # keys of the rows of passes that mixed fine-tunes
        self._waiting: list[Completion] = []
        self._active: list[Completion] = []
        self._cv = threading.Condition()
        self._gate = threading.Lock()  # held around each step; hold() pauses the loop between steps
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="deltazoo-host-engine", daemon=True)
        self._thread.start()

    def submit(self, completion: Completion) -> Completion:
        with self._cv:
            if self._stop:
                raise RuntimeError("the engine is stopped")
            self._waiting.append(completion)
            self._cv.notify()
        return completion

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._waiting)

    def hold(self) -> threading.Lock:
        """``with engine.hold(): ...`` pauses the engine between two steps (requests still queue up and
        join together at the next step)."""
        return self._gate

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # --- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._active:
                    self._cv.wait()
                if self._stop:
                    rows = self._waiting + self._active
                    self._waiting, self._active = [], []
                    for c in rows:
                        self._finish(c, "cancelled")
                    return
            with self._gate, self._cv:  # admit after a hold() ends, so held requests join together
                self._admit()
            try:
                with self._gate:
                    self._step()
            except Exception as exc:  # a failed pass ends its rows with the error, the host lives on
                for c in self._active:
                    c.error = exc
                    self._finish(c, "error")
                self._active = []

    def _layout(self, key: str) -> frozenset[str]:
        """The layers ``key``'s artifact packs: fine-tunes run in one pass only when theirs are the same
        (a fine-tune that left a layer frozen packs one layer less)."""
        return frozenset(self.store.artifact(key).packed)

    def _admit(self) -> None:
        """Move waiting rows into the batch, oldest first, while there is room and each one's layout is
        the batch's; the first that differs waits (with every row behind it) until the batch it cannot
        join has finished, so no row waits forever and the model is patched for one layout at a time."""
        keys = [c.key for c in self._active if c.key is not None]
        layout = self._layout(keys[0]) if keys else None
        while self._waiting and len(self._active) < self.max_batch:
            key = self._waiting[0].key
            if key is not None:
                if layout is None:
                    layout = self._layout(key)
                elif self._layout(key) != layout:
                    break
            self._active.append(self._waiting.pop(0))

    def _ensure_patched(self) -> None:
        needed = {c.key for c in self._active if c.key is not None}
        if needed <= set(self.patched):
            return
        layout = self._layout(next(iter(needed)))
        keys = [k for k in self.store.resident() if self._layout(k) == layout]  # the needed and their like
        missing = needed - set(keys)
        if missing:
            raise RuntimeError(f"fine-tunes {sorted(missing)} are running but not resident")
        if self.patched:
            unpatch_model(self.model)
            self.patched = []
        patch_model(self.model, [self.store.artifact(k) for k in keys], backend=self.backend)  # type: ignore[arg-type]
        self.patched = keys

    @torch.no_grad()
    def _step(self) -> None:
        rows = self._active
        self._ensure_patched()
        seqs = [c.prompt + c.tokens for c in rows]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s)
            mask[r, width - len(s) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        delta_ids = [self.patched.index(c.key) if c.key is not None else -1 for c in rows]
        if self.patched:
            set_active_deltas(self.model, delta_ids)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), use_cache=False)
        logits = out.logits[:, -1]
        self.steps += 1
        self.batch_sizes = [*self.batch_sizes[-999:], len(rows)]
        if len({c.key for c in rows}) > 1:
            self.mixed_steps = [*self.mixed_steps[-99:], [c.key for c in rows]]
        still: list[Completion] = []
        for r, c in enumerate(rows):
            try:
                token = c.next_token(logits[r])
            except Exception as exc:  # this row's sampling failed: the others go on
                c.error = exc
                self._finish(c, "error")
                continue
            c.tokens.append(token)
            c.events.put(token)
            if token in self.eos_ids:
                self._finish(c, "stop")
            elif len(c.tokens) >= c.max_tokens or len(c.prompt) + len(c.tokens) >= self.max_positions:
                self._finish(c, "length")
            else:
                still.append(c)
        self._active = still

    def _finish(self, c: Completion, reason: str) -> None:
        c.finish_reason = reason
        if c.key is not None:
            self.store.release(c.key)
        c.events.put(None)
        c.done.set()
