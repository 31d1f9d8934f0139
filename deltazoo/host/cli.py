"""``deltazoo host``: the CLI command, kept apart from deltazoo/cli.py (heavy imports happen only
when the command runs)."""

from __future__ import annotations

import argparse
import re
from typing import Any

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "t": 10**12, "tb": 10**12}


def parse_bytes(text: str) -> int:
    """``"512MiB"``, ``"2GB"``, ``"1000000"`` → bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 512MiB, 2GB or 1000000")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def positive_int(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def port_number(text: str) -> int:
    value = int(text) if text.strip().isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535; 0 picks a free one)")
    return value


def serving_profile(text: str) -> str:
    """A profile as the host compares it: canonical (``deltadq:bits=4,m=32,n=1`` is ``n=1,m=32,bits=4``)."""
    from deltazoo.compression.deltadq import parse_profile

    try:
        return str(parse_profile(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a serving profile: {exc}") from None


def add_host_command(sub: Any) -> None:
    help_ = "serve fine-tunes of one resident base over an OpenAI-compatible API (deltas fetched on demand)"
    sp = sub.add_parser("host", help=help_, description=help_)
    sp.set_defaults(func=cmd_host)
    sp.add_argument("base", help="ORG/NAME[@REV] of the base to hold resident")
    sp.add_argument("--profile", type=serving_profile, default="deltadq:n=1,m=32,bits=4",
                    help="serving profile of the fine-tunes")
    sp.add_argument("--budget", type=parse_bytes, default=2 << 30,
                    help="memory for fine-tunes' deltas and exact tensors, e.g. 4GiB (default 2GiB)")
    sp.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=port_number, default=8100)
    sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    sp.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")
    sp.add_argument("--max-batch", type=positive_int, default=16, help="rows per forward pass (default 16)")
    sp.add_argument("--build-missing", action="store_true",
                    help="ask the server to build a fine-tune's missing profile and wait for it")


def cmd_host(args: argparse.Namespace) -> int:
    import torch

    from deltazoo.client import Client
    from deltazoo.errors import UsageError

    from .http import serve
    from .service import Host, HostSettings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine's torch sees no CUDA GPU; use --device cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    settings = HostSettings(base=args.base, profile=args.profile, budget_bytes=args.budget, device=device,
                            dtype=dtype, max_batch=args.max_batch, build_missing=args.build_missing)
    client = Client(url=args.url, token=args.token)
    try:
        host = Host(client, settings)
    except ValueError as exc:  # a base that cannot be served here: say why, no traceback
        client.close()
        raise UsageError(f"cannot host {args.base}: {exc}", code="host_unavailable") from exc
    server = serve(host, args.bind, args.port)
    print(f"serving {host.base_ref} and its fine-tunes ({settings.profile}) on {server.url}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        host.close()
        client.close()
    return 0
