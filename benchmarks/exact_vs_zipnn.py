"""deltazoo's delta against ZipNN on the XOR, the two side by side in rounds: best over the rounds.

    python benchmarks/exact_vs_zipnn.py ZOO_DIR [--rounds 8] [--plain] [--version5]

``--plain`` adds ZipNN on the file and deltazoo plain; ``--version5`` adds deltazoo's delta as written
with ``version=5`` (F32 in format 4, before format 6). Fine-tunes and parents as in benchmarks/exact.py.

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
from exact import coders, fine_tunes, read_safetensors  # noqa: E402

PEERS = ("ZipNN on the XOR with base", "deltazoo delta vs parent")
PLAIN = ("ZipNN on the file", "deltazoo plain (no parent)")
VERSION5 = ("deltazoo delta, version 5 (F32 in format 4)",)


def run(zoo: Path, rounds: int, plain: bool = False, version5: bool = False) -> str:
    peers = PEERS + (PLAIN if plain else ()) + (VERSION5 if version5 else ())
    lines = [
        "| fine-tune | coder | compress MB/s (wall / CPU) | decompress MB/s (wall / CPU) |",
        "| --- | --- | --- | --- |",
    ]
    for folder, parent in fine_tunes(zoo):
        ft = f"{folder.name} (parent {parent})"
        base_file, _, base_t = read_safetensors(zoo / parent / "model.safetensors")
        data, header, tensors = read_safetensors(folder / "model.safetensors")
        digest = hashlib.sha256(data).hexdigest()
        table = coders(base_file, base_t, header, tensors)
        best = {name: [float("inf")] * 4 for name in peers}  # compress wall, CPU; decompress wall, CPU
        for _ in range(rounds):
            for name in peers:
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
        for name in peers:
            b = best[name]
            speeds = f"{mb / b[0]:.0f} / {mb / b[1]:.0f} | {mb / b[2]:.0f} / {mb / b[3]:.0f}"
            lines.append(f"| {ft} | {name} | {speeds} |")
        z, d = best[PEERS[0]], best[PEERS[1]]
        ratio = f"{z[1] / d[1]:.2f}× | {z[3] / d[3]:.2f}×"
        lines.append(f"| {ft} | deltazoo delta / ZipNN on the XOR (CPU) | {ratio} |")
        if plain:
            z, d = best[PLAIN[0]], best[PLAIN[1]]
            ratio = f"{z[1] / d[1]:.2f}× | {z[3] / d[3]:.2f}×"
            lines.append(f"| {ft} | deltazoo plain / ZipNN on the file (CPU) | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--plain", action="store_true", help="also ZipNN on the file and deltazoo plain")
    ap.add_argument("--version5", action="store_true", help="also deltazoo delta with version=5")
    args = ap.parse_args()
    print(run(args.zoo, args.rounds, args.plain, args.version5))


if __name__ == "__main__":
    main()
