"""Build a small real model zoo offline: a byte-level Llama base and two full fine-tunes.

    python benchmarks/build_zoo.py OUT_DIR [--tiny] [--base-steps 600] [--ft-steps 250]

Text comes from this machine only (no network):

* prose: the docstrings of the Python standard library (``ast.get_docstring`` of every module,
  class and function under ``sysconfig.get_paths()["stdlib"]``) and, when present, the licence
  texts in /usr/share/common-licenses;
* code: the standard library's own ``*.py`` source.

Modules are split by a hash of their name into train / eval so the eval texts are never trained on.
The base is trained on prose (licences + the first half of the docstrings); ``coder`` is the base fully
fine-tuned on code, ``writer`` on the other half of the docstrings. OUT_DIR gets base/, coder/,
writer/ (model.safetensors in bf16 + config.json, loadable by transformers) and eval_code.txt,
eval_docs.txt (held out, up to 200 kB each).

Models are byte-level (vocab 256, token id = byte value); training windows start with BOS = 1, which
is how compression/quality.py evaluates them. Default sizes match /work/shared/zoo (hidden 512,
2 layers, 8 heads, context 256); ``--tiny`` trains a 64-wide model for a few steps in seconds.

``--dtype float32`` saves every model in float32 at full mantissa (what most Hub checkpoints are) and
fine-tunes from the f32 base as saved; it adds ``coder-chain/`` (``coder`` fine-tuned again on prose: a
fine-tune of a fine-tune, parent ``coder``) and ``f32-of-bf16/`` (an f32 fine-tune of the base rounded to
bf16, saved with ``base-bf16/``, its parent). Each fine-tune folder gets a ``parent.txt`` naming its
parent folder, which ``benchmarks/exact.py`` reads.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sysconfig
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

BOS = 1
EVAL_CHARS = 200_000


def _held_out(name: str) -> bool:
    return hashlib.sha256(name.encode()).digest()[0] < 26  # about 10 % of modules


def _docstrings(tree: ast.AST) -> list[str]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
    return [d for n in nodes if (d := ast.get_docstring(n))]  # type: ignore[arg-type]


def collect_corpora(limit: int) -> dict[str, str]:
    """Train and eval texts: prose_a, prose_b (train docstrings), code, licences, eval_code, eval_docs."""
    parts: dict[str, list[str]] = {k: [] for k in ("prose_a", "prose_b", "code", "eval_code", "eval_docs")}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for i, path in enumerate(sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py"))):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            docs = "\n\n".join(_docstrings(ast.parse(source))) + "\n\n"
        except SyntaxError:
            continue
        if _held_out(path.name):
            parts["eval_code"].append(source)
            parts["eval_docs"].append(docs)
        else:
            parts["code"].append(source)
            parts["prose_a" if i % 2 else "prose_b"].append(docs)
    licences = Path("/usr/share/common-licenses")
    lic = [p.read_text(errors="replace") for p in sorted(licences.glob("*")) if p.is_file()]
    out = {k: "".join(v)[:limit] for k, v in parts.items()}
    out["licences"] = "".join(lic)[:limit]
    out["eval_code"], out["eval_docs"] = out["eval_code"][:EVAL_CHARS], out["eval_docs"][:EVAL_CHARS]
    return out


def make_config(tiny: bool) -> dict:
    size = (64, 1, 2, 160, 64) if tiny else (512, 2, 8, 1376, 256)
    hidden, layers, heads, inter, ctx = size
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "head_dim": hidden // heads, "intermediate_size": inter,
        "max_position_embeddings": ctx, "bos_token_id": BOS, "eos_token_id": 2, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "hidden_act": "silu", "dtype": "bfloat16",
    }


def train(model: torch.nn.Module, text: str, steps: int, lr: float, batch: int, ctx: int, seed: int) -> float:
    """AdamW on random [BOS] + (ctx − 1)-byte windows of ``text``; returns the last loss (nats)."""
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    if len(data) <= ctx:
        raise ValueError(f"training text has {len(data)} bytes; need more than the context {ctx}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        starts = torch.randint(0, len(data) - ctx, (batch,), generator=gen)
        windows = torch.stack([data[s : s + ctx - 1] for s in starts.tolist()])
        ids = torch.cat([torch.full((batch, 1), BOS), windows], dim=1)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, steps // 10))
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return loss.item()


def save(
    model: torch.nn.Module, config: dict, folder: Path, dtype: torch.dtype = torch.bfloat16, parent: str = ""
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    name = {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]
    (folder / "config.json").write_text(json.dumps({**config, "dtype": name}, indent=2) + "\n")
    if parent:
        (folder / "parent.txt").write_text(parent + "\n")


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="a 64-wide model, a few steps: seconds")
    ap.add_argument("--base-steps", type=int, default=None)
    ap.add_argument("--ft-steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="saved dtype")
    args = ap.parse_args(argv)
    base_steps = args.base_steps if args.base_steps is not None else (30 if args.tiny else 600)
    ft_steps = args.ft_steps if args.ft_steps is not None else (15 if args.tiny else 250)
    batch = args.batch or (4 if args.tiny else 16)

    t0 = time.time()
    corpora = collect_corpora(limit=300_000 if args.tiny else 20_000_000)
    config = make_config(args.tiny)
    ctx = config["max_position_embeddings"]
    torch.manual_seed(args.seed)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    loss = train(base, corpora["licences"] + corpora["prose_a"], base_steps, 1e-3, batch, ctx, args.seed)
    print(f"base: {base_steps} steps, last loss {loss:.3f} nats/byte", flush=True)
    f32 = args.dtype == "float32"
    dtype = getattr(torch, args.dtype)
    save(base, config, args.out / "base", dtype)
    # fine-tune from the weights as saved, so untouched tensors stay bit-equal to the base
    base_state = {k: v.to(dtype).float() for k, v in base.state_dict().items()}
    runs = [
        ("coder", corpora["code"], base_state, "base"),
        ("writer", corpora["prose_b"], base_state, "base"),
    ]
    if f32:
        bf16_state = {k: v.to(torch.bfloat16).float() for k, v in base_state.items()}
        base.load_state_dict(bf16_state)
        save(base, config, args.out / "base-bf16", torch.bfloat16)
        runs.append(("f32-of-bf16", corpora["code"], bf16_state, "base-bf16"))
    for i, (name, text, start, parent) in enumerate(runs):
        base.load_state_dict(start)
        loss = train(base, text, ft_steps, 3e-4, batch, ctx, args.seed + 1 + i * f32)
        print(f"{name}: {ft_steps} steps, last loss {loss:.3f} nats/byte", flush=True)
        save(base, config, args.out / name, dtype, parent if f32 else "")
        if f32 and name == "coder":  # a fine-tune of this fine-tune, from its weights as saved
            chain_start = {k: v.to(dtype).float() for k, v in base.state_dict().items()}
            base.load_state_dict(chain_start)
            loss = train(base, corpora["prose_b"], ft_steps, 3e-4, batch, ctx, args.seed + 7)
            print(f"coder-chain: {ft_steps} steps, last loss {loss:.3f} nats/byte", flush=True)
            save(base, config, args.out / "coder-chain", dtype, "coder")
    for name in ("eval_code", "eval_docs"):
        (args.out / f"{name}.txt").write_text(corpora[name], encoding="utf-8")
    print(f"zoo in {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
