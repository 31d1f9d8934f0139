"""OpenAI-compatible HTTP API of a host, on the standard library's threading HTTP server (no server
packages): ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (models whose
tokenizer has a chat template), ``"stream": true`` as server-sent events, ``GET /health``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deltazoo.errors import DeltazooError

from .engine import Completion
from .errors import HostError
from .service import Host

MAX_BODY = 1 << 20
UNSUPPORTED = ("stop", "logprobs", "echo", "best_of", "suffix", "tools", "functions", "logit_bias")
MAX_TEMPERATURE = 2.0  # as the OpenAI API: 0 (greedy) to 2


class HostServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], host: Host) -> None:
        super().__init__(address, _Handler)
        self.host = host

    @property
    def url(self) -> str:
        h, p = self.server_address[:2]
        return f"http://{h!s}:{p}"


def _number(body: dict[str, Any], name: str, default: float, kind: type) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    wrong_kind = kind is int and not isinstance(value, int)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or wrong_kind:
        raise HostError(400, "bad_request", f"{name!r} must be {'an integer' if kind is int else 'a number'}")
    return kind(value)


class _Handler(BaseHTTPRequestHandler):
    server: HostServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    # --- plumbing ---------------------------------------------------------------------------------

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: HostError) -> None:
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
        self._send_json(err.status, err.body(), headers)

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise HostError(400, "bad_request", "Content-Length must be an integer") from exc
        if length > MAX_BODY:
            raise HostError(413, "body_too_large", f"request bodies are limited to {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise HostError(400, "bad_json", f"the request body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise HostError(400, "bad_json", "the request body must be a JSON object")
        return body

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        try:
            if self.path in ("/v1/models", "/v1/models/"):
                self._send_json(200, {"object": "list", "data": self.server.host.models()})
            elif self.path == "/health":
                h = self.server.host
                self._send_json(200, {"status": "ok", "base": h.base_ref, "profile": h.settings.profile,
                                      "resident": h.store.resident(), "bytes_used": h.store.used,
                                      "budget_bytes": h.store.budget, "steps": h.engine.steps})
            else:
                raise HostError(404, "not_found", f"no route {self.path}; see /v1/models, /v1/completions")
        except HostError as err:
            self._send_error(err)

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        try:
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                raise HostError(404, "not_found", f"no route {self.path}; POST /v1/completions")
            body = self._body()
            chat = self.path == "/v1/chat/completions"
            self._complete(body, chat)
        except HostError as err:
            self._send_error(err)
        except DeltazooError as err:  # the registry refused or failed while fetching a delta
            self._send_error(HostError(502, "registry_error", f"the registry answered: {err}"))

    # --- completions ------------------------------------------------------------------------------

    def _prompt(self, body: dict[str, Any], chat: bool) -> list[int]:
        tok = self.server.host.tokenizer
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            ):
                raise HostError(400, "bad_messages",
                                "'messages' must be a non-empty list of {role, content}")
            return tok.encode_chat(messages)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return tok.encode(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                       for t in prompt):
            return list(prompt)
        raise HostError(400, "bad_prompt",
                        "'prompt' must be a string (or one string in a list, or token ids)")

    def _complete(self, body: dict[str, Any], chat: bool) -> None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise HostError(400, "missing_model", "'model' must name ORG/NAME[@REV][:PROFILE]")
        for name in UNSUPPORTED:
            if body.get(name) not in (None, False, [], ""):
                raise HostError(400, "unsupported", f"{name!r} is not supported by this host")
        if _number(body, "n", 1, int) != 1:
            raise HostError(400, "unsupported", "'n' must be 1")
        limit_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        max_tokens = _number(body, limit_field, 16, int)
        temperature = _number(body, "temperature", 1.0, float)
        if not 0 <= temperature <= MAX_TEMPERATURE:  # NaN fails this too
            limit = MAX_TEMPERATURE
            raise HostError(400, "bad_request", f"'temperature' must be between 0 (greedy) and {limit}")
        seed = body.get("seed")
        integer = isinstance(seed, int) and not isinstance(seed, bool)
        if seed is not None and not (integer and 0 <= seed < 2**63):
            raise HostError(400, "bad_request", "'seed' must be an integer from 0 to 2**63 - 1")
        prompt = self._prompt(body, chat)
        c = self.server.host.start(model, prompt, max_tokens=max_tokens, temperature=temperature, seed=seed)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.get("stream"):
            self._stream(c, rid, model, chat)
            return
        text = "".join(self._texts(c))
        if c.error is not None:
            raise HostError(500, "generation_failed", f"the forward pass failed: {c.error}")
        usage = {"prompt_tokens": len(c.prompt), "completion_tokens": len(c.tokens),
                 "total_tokens": len(c.prompt) + len(c.tokens)}
        choice: dict[str, Any] = {"index": 0, "finish_reason": c.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        self._send_json(200, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                              "created": int(time.time()), "model": model, "choices": [choice],
                              "usage": usage})

    def _texts(self, c: Completion) -> Iterator[str]:
        """Text pieces as the engine produces tokens (end-of-sequence tokens are not shown)."""
        tok = self.server.host.tokenizer
        decoder = tok.decoder()
        while True:
            token = c.events.get()
            if token is None:
                break
            if token not in tok.eos_ids:
                piece = decoder.feed(token)
                if piece:
                    yield piece
        tail = decoder.flush()
        if tail:
            yield tail

    def _stream(self, c: Completion, rid: str, model: str, chat: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        created = int(time.time())

        def event(piece: str | None, finish: str | None) -> bytes:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["delta"] = {"content": piece} if piece is not None else {}
            else:
                choice.update(text=piece or "", logprobs=None)
            obj = "chat.completion.chunk" if chat else "text_completion"
            data = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
            return f"data: {json.dumps(data)}\n\n".encode()

        try:
            if chat:
                self.wfile.write(event(None, None).replace(b'"delta": {}', b'"delta": {"role": "assistant"}'))
            for piece in self._texts(c):
                self.wfile.write(event(piece, None))
                self.wfile.flush()
            if c.error is not None:
                err = HostError(500, "generation_failed", f"the forward pass failed: {c.error}")
                self.wfile.write(f"data: {json.dumps(err.body())}\n\n".encode())
            else:
                self.wfile.write(event(None, c.finish_reason))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; the row finishes on its own (max_tokens bounds it)


def serve(host: Host, address: str = "127.0.0.1", port: int = 8100) -> HostServer:
    """A started-but-not-serving server; call ``serve_forever()`` (or run it in a thread)."""
    return HostServer((address, port), host)
