"""``deltazoo.load_model`` of a PEFT adapter stored under its base, against a real embedded server: the
base and the adapter are pulled and combined with peft, with outputs equal to loading the two locally."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import deltazoo
from deltazoo import Client, UsageError
from tests.checkpoints import CheckpointPair

pytest.importorskip("peft", reason="peft is in the [dev] extras")


def make_lora_adapter(base_dir: Path, dest: Path) -> Path:
    """A LoRA adapter of the base, with non-zero B matrices so that it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), torch_dtype="auto")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(3)
    get_peft_model(model, config).save_pretrained(str(dest))
    return dest


def local_logits(base_dir: Path, adapter_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), torch_dtype="auto")
    combined = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    with torch.no_grad():
        return combined(tokens).logits


def test_load_model_puts_an_adapter_onto_its_base(
    embedded_server: str, checkpoint_pair: CheckpointPair, unique_org: str, tmp_path: Path
) -> None:
    adapter_dir = make_lora_adapter(checkpoint_pair.base, tmp_path / "adapter")
    assert {p.name for p in adapter_dir.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    tokens = torch.tensor([[1, 5, 9, 2, 33, 7]])
    with Client(embedded_server, cache_dir=tmp_path / "cache") as c:
        base = c.push(checkpoint_pair.base, f"{unique_org}/base", quiet=True)
        adapter = c.push(adapter_dir, f"{unique_org}/lora", base=base.ref, relation="adapter", quiet=True)
        assert adapter.relation == "adapter" and adapter.parent == base.ref
        model = deltazoo.load_model(f"{unique_org}/lora@{adapter.revision}", client=c).eval()
        plain = deltazoo.load_model(base.ref, client=c).eval()
    with torch.no_grad():
        got, without = model(tokens).logits, plain(tokens).logits
    want = local_logits(checkpoint_pair.base, adapter_dir, tokens)
    assert torch.equal(got, want)
    assert not torch.equal(got, without)  # the adapter is really applied


def test_an_adapter_without_peft_says_what_to_install(
    embedded_server: str,
    checkpoint_pair: CheckpointPair,
    unique_org: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter_dir = make_lora_adapter(checkpoint_pair.base, tmp_path / "adapter")
    with Client(embedded_server, cache_dir=tmp_path / "cache") as c:
        base = c.push(checkpoint_pair.base, f"{unique_org}/base", quiet=True)
        c.push(adapter_dir, f"{unique_org}/lora", base=base.ref, relation="adapter", quiet=True)
        monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
        with pytest.raises(UsageError, match="pip install peft") as missing:
            deltazoo.load_model(f"{unique_org}/lora", client=c)
    assert missing.value.code == "missing_dependency"
