"""The offline tiny Llama + LoRA builder (e2e/build/model.py): files, shapes, determinism, tokenizer.

That vLLM loads the result and that the adapter changes its greedy output is checked where
vLLM runs; here only what the dev venv can see (tokenizers, safetensors, numpy, jinja2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from safetensors import safe_open
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from e2e.build import model

MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> model.Built:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMSERVICE_CACHE", str(tmp_path_factory.mktemp("cache")))
        return model.ensure()


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_stamp(built: model.Built) -> None:
    assert not built.cached
    assert (built.root / model.STAMP).exists()
    assert built.model_dir == built.root / "tiny-llama"
    assert built.lora_dir == built.root / "loras" / "tiny-lora"
    assert {p.name for p in built.model_dir.iterdir()} == MODEL_FILES
    assert {p.name for p in built.lora_dir.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert not list(built.root.parent.glob("*.tmp-*")), "temporary build folders are cleaned up"


def test_weights_match_config(built: model.Built) -> None:
    cfg = _json(built.model_dir / "config.json")
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    d, v, ff = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    want = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        want |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (ff, d),
            p + "mlp.up_proj.weight": (ff, d),
            p + "mlp.down_proj.weight": (d, ff),
        }
    weights = load_file(built.model_dir / "model.safetensors")
    assert {k: w.shape for k, w in weights.items()} == want
    assert all(np.isfinite(w).all() for w in weights.values())
    with safe_open(built.model_dir / "model.safetensors", framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}  # transformers refuses safetensors without it


def test_lora_matches_base_and_changes_it(built: model.Built) -> None:
    cfg = _json(built.model_dir / "config.json")
    ad = _json(built.lora_dir / "adapter_config.json")
    assert (ad["peft_type"], ad["task_type"]) == ("LORA", "CAUSAL_LM")
    assert (ad["r"], ad["lora_alpha"], ad["target_modules"]) == (8, 16, ["q_proj", "v_proj"])
    r, d = ad["r"], cfg["hidden_size"]
    outs = {
        "q_proj": cfg["num_attention_heads"] * cfg["head_dim"],
        "v_proj": cfg["num_key_value_heads"] * cfg["head_dim"],
    }
    lora = load_file(built.lora_dir / "adapter_model.safetensors")
    base = load_file(built.model_dir / "model.safetensors")
    want = {}
    for i in range(cfg["num_hidden_layers"]):
        for t in ad["target_modules"]:
            p = f"base_model.model.model.layers.{i}.self_attn.{t}."
            want |= {p + "lora_A.weight": (r, d), p + "lora_B.weight": (outs[t], r)}
            # The update scale * B @ A must be a sizeable fraction of the weight it modifies,
            # or greedy outputs would not show that the adapter was applied.
            delta = ad["lora_alpha"] / r * lora[p + "lora_B.weight"] @ lora[p + "lora_A.weight"]
            w = base[f"model.layers.{i}.self_attn.{t}.weight"]
            assert np.linalg.norm(delta) > 0.25 * np.linalg.norm(w)
    assert {k: a.shape for k, a in lora.items()} == want


def test_deterministic_and_cached(built: model.Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSERVICE_CACHE", str(tmp_path))
    again = model.ensure()
    assert again.root.name == built.root.name  # same key
    assert _files(again.root) == _files(built.root)  # same bytes
    warm = model.ensure()
    assert warm.cached and warm.root == again.root and warm.seconds < 1


def test_other_parameters_other_key() -> None:
    assert model.build_key(model.TinyLlama()) != model.build_key(model.TinyLlama(seed=1))


def test_tokenizer_round_trip_and_specials(built: model.Built) -> None:
    tok = Tokenizer.from_file(str(built.model_dir / "tokenizer.json"))
    cfg = _json(built.model_dir / "config.json")
    tcfg = _json(built.model_dir / "tokenizer_config.json")
    assert tok.get_vocab_size() == cfg["vocab_size"] == 2048
    for name in ("bos", "eos", "pad"):
        assert tok.token_to_id(tcfg[f"{name}_token"]) == cfg[f"{name}_token_id"]
    assert tok.token_to_id(tcfg["unk_token"]) is not None
    text = "def hello(name: str) -> str:\n    return f'héllo {name} ✓'\n"
    enc = tok.encode(text)
    assert enc.ids[0] == cfg["bos_token_id"]  # BOS is prepended like Llama's tokenizer does
    assert tok.decode(enc.ids) == text  # specials skipped, bytes round-trip (non-ASCII too)
    assert len(enc.ids) < 0.6 * len(text.encode()), "BPE merges compress Python-like text"


def test_chat_template(built: model.Built) -> None:
    tcfg = _json(built.model_dir / "tokenizer_config.json")
    # Rendered the way transformers does (sandboxed Jinja, trim_blocks + lstrip_blocks).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    rendered = env.from_string(tcfg["chat_template"]).render(
        messages=messages, add_generation_prompt=True, bos_token=tcfg["bos_token"], eos_token=tcfg["eos_token"]
    )
    assert rendered == "<s><|system|>\nBe brief.</s>\n<|user|>\nHi!</s>\n<|assistant|>\n"
    tok = Tokenizer.from_file(str(built.model_dir / "tokenizer.json"))
    ids = tok.encode(rendered, add_special_tokens=False).ids
    specials = [tok.token_to_id(t) for t in ("<s>", "<|system|>", "<|user|>", "<|assistant|>")]
    assert ids[0] == specials[0] and ids.count(specials[0]) == 1
    assert all(ids.count(s) == 1 for s in specials[1:])  # role markers are single tokens
    assert tok.decode(ids, skip_special_tokens=False) == rendered
