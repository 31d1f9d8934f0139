"""Format 5 against ZipNN on the XOR, the two side by side in rounds: best over the rounds.

    python benchmarks/exact_vs_zipnn.py ZOO_DIR [--rounds 8]

Each round runs, per fine-tune, each of the two coders 5 times in a row to compress and 5 times to
decompress (as benchmarks/exact.py does once); the best wall and process CPU time over all rounds is kept.
On a shared machine one run of benchmarks/exact.py catches each coder in whatever load it meets, and
ZipNN's decode moves most from run to run; the best over rounds compares the two at their quietest.
The round trip is checked by sha256 in every round.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exact import coders, read_safetensors  # noqa: E402

PEERS = ("ZipNN on the XOR with base", "deltazoo delta vs base (format 5)")


def run(zoo: Path, rounds: int) -> str:
    base_file, _, base_t = read_safetensors(zoo / "base" / "model.safetensors")
    lines = [
        "| fine-tune | coder | compress MB/s (wall / CPU) | decompress MB/s (wall / CPU) |",
        "| --- | --- | --- | --- |",
    ]
    for ft in ("coder", "writer"):
        data, header, tensors = read_safetensors(zoo / ft / "model.safetensors")
        digest = hashlib.sha256(data).hexdigest()
        table = coders(base_file, base_t, header, tensors)
        best = {name: [float("inf")] * 4 for name in PEERS}  # compress wall, CPU; decompress wall, CPU
        for _ in range(rounds):
            for name in PEERS:
                enc, dec = table[name]
                b = best[name]
                for _ in range(5):
                    t, c = time.perf_counter(), time.process_time()
                    payload = enc(data)
                    b[0], b[1] = min(b[0], time.perf_counter() - t), min(b[1], time.process_time() - c)
                for _ in range(5):
                    t, c = time.perf_counter(), time.process_time()
                    out = dec(payload)
                    b[2], b[3] = min(b[2], time.perf_counter() - t), min(b[3], time.process_time() - c)
                if hashlib.sha256(bytes(out)).hexdigest() != digest:
                    raise SystemExit(f"{name} did not round-trip {ft}")
        mb = len(data) / 1e6
        for name in PEERS:
            b = best[name]
            speeds = f"{mb / b[0]:.0f} / {mb / b[1]:.0f} | {mb / b[2]:.0f} / {mb / b[3]:.0f}"
            lines.append(f"| {ft} | {name} | {speeds} |")
        z, d = best[PEERS[0]], best[PEERS[1]]
        lines.append(f"| {ft} | format 5 / ZipNN (CPU) | {z[1] / d[1]:.2f}× | {z[3] / d[3]:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    print(run(args.zoo, args.rounds))


if __name__ == "__main__":
    main()
