"""Make a tiny real Llama model and a LoRA adapter for it, offline and deterministically.

Nothing is downloaded: a byte-level BPE tokenizer is trained with ``tokenizers`` on a fixed
set of the Python standard library's sources, the weights are random from a fixed seed
(numpy) and saved with ``safetensors``; configs are plain JSON in the layout Hugging Face and
vLLM read (``LlamaForCausalLM``, PEFT ``LORA``). The text the model writes is noise; the load
and serving path is real. The adapter has nonzero ``lora_B``, so greedy outputs with the
adapter differ from the base model's: that is how a test sees the adapter was applied.

Output, cached by a hash of this file, the parameters, the corpus and the library versions::

    <cache>/models/<hash>/tiny-llama/          config.json, model.safetensors, tokenizer...
    <cache>/models/<hash>/loras/tiny-lora/     adapter_config.json, adapter_model.safetensors

``<cache>`` is ``e2e.bins.cache_root()``. A build happens in a sibling temporary folder that
is renamed into place after its stamp file is written, so a half-built model is never used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import safetensors
import tokenizers
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from e2e.bins import cache_root

STAMP = ".complete"
MODEL_NAME = "tiny-llama"
LORA_NAME = "tiny-lora"

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK, *ROLE_TOKENS)  # ids 0..6 in this order
# One line per message: the role token, a newline, the content and </s>. Roles other than
# the three above are written as plain text; content must be a string.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Standard library files the tokenizer is trained on (relative to the stdlib folder). Their
# contents are part of the cache key, so another Python version gives another (valid) model.
CORPUS = (
    "argparse.py",
    "ast.py",
    "collections/__init__.py",
    "dataclasses.py",
    "enum.py",
    "functools.py",
    "inspect.py",
    "json/decoder.py",
    "json/encoder.py",
    "logging/__init__.py",
    "pathlib.py",
    "string.py",
    "textwrap.py",
    "typing.py",
)


@dataclass(frozen=True)
class TinyLlama:
    """Parameters of the model and its adapter; all of them are part of the cache key."""

    vocab_size: int = 2048  # tokenizer size (special tokens included) = embedding rows
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim: int = 32
    intermediate_size: int = 512
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    dtype: str = "bfloat16"  # what config.json declares; the file holds float32 (numpy has no bf16)
    seed: int = 0
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = field(default=("q_proj", "v_proj"))
    lora_b_std: float = 0.25  # large enough that the adapter changes greedy outputs


@dataclass(frozen=True)
class Built:
    """Where a build landed and how long ``ensure`` took (0-ish when cached)."""

    root: Path
    model_dir: Path
    lora_dir: Path
    seconds: float
    cached: bool


def _corpus_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [stdlib / rel for rel in CORPUS]


def build_key(spec: TinyLlama) -> str:
    """Hash of everything that decides the output bytes."""
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps(asdict(spec), sort_keys=True).encode())
    h.update(f"numpy {np.__version__} tokenizers {tokenizers.__version__}".encode())
    h.update(f"safetensors {safetensors.__version__}".encode())
    for f in _corpus_files():
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# -- tokenizer --------------------------------------------------------------------------------


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) with the special tokens at ids 0..6 and BOS prepended."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [f.read_text(encoding="utf-8") for f in _corpus_files()]
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)]),
        ]
    )
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab_size}: corpus too small?")
    return tok


def write_tokenizer(tok: Tokenizer, out: Path, max_len: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": UNK,
            "additional_special_tokens": list(ROLE_TOKENS),
            "added_tokens_decoder": added,
            "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "model_max_length": max_len,
            "padding_side": "left",
        },
    )
    _write_json(
        out / "special_tokens_map.json",
        {
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": UNK,
            "additional_special_tokens": list(ROLE_TOKENS),
        },
    )


# -- model ------------------------------------------------------------------------------------


def llama_config(spec: TinyLlama, tok: Tokenizer) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": spec.dtype,
        "bos_token_id": tok.token_to_id(BOS),
        "eos_token_id": tok.token_to_id(EOS),
        "pad_token_id": tok.token_to_id(PAD),
    }


def weight_shapes(spec: TinyLlama) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes exactly as HF ``LlamaForCausalLM`` saves them (out, in)."""
    d, q, kv, ff = (
        spec.hidden_size,
        spec.num_attention_heads * spec.head_dim,
        spec.num_key_value_heads * spec.head_dim,
        spec.intermediate_size,
    )
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab_size, d)}
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.input_layernorm.weight": (d,),
            f"{p}.self_attn.q_proj.weight": (q, d),
            f"{p}.self_attn.k_proj.weight": (kv, d),
            f"{p}.self_attn.v_proj.weight": (kv, d),
            f"{p}.self_attn.o_proj.weight": (d, q),
            f"{p}.post_attention_layernorm.weight": (d,),
            f"{p}.mlp.gate_proj.weight": (ff, d),
            f"{p}.mlp.up_proj.weight": (ff, d),
            f"{p}.mlp.down_proj.weight": (d, ff),
        }
    shapes |= {"model.norm.weight": (d,), "lm_head.weight": (spec.vocab_size, d)}
    return shapes


def random_weights(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Norms are ones; matrices N(0, 1/fan_in) so activations keep unit scale and logits are peaked."""
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = np.ones(shape, dtype=np.float32)
        else:
            fan_in = shape[1] if not name.endswith("embed_tokens.weight") else 1
            out[name] = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)
    return out


def lora_shapes(spec: TinyLlama) -> dict[str, tuple[int, ...]]:
    """PEFT names: ``base_model.model.<module>.lora_A.weight`` (r, in) and ``lora_B.weight`` (out, r)."""
    out_dims = {
        "q_proj": spec.num_attention_heads * spec.head_dim,
        "k_proj": spec.num_key_value_heads * spec.head_dim,
        "v_proj": spec.num_key_value_heads * spec.head_dim,
        "o_proj": spec.hidden_size,
    }
    in_dims = {"o_proj": spec.num_attention_heads * spec.head_dim}
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(spec.num_hidden_layers):
        for target in spec.lora_targets:
            p = f"base_model.model.model.layers.{i}.self_attn.{target}"
            shapes[f"{p}.lora_A.weight"] = (spec.lora_rank, in_dims.get(target, spec.hidden_size))
            shapes[f"{p}.lora_B.weight"] = (out_dims[target], spec.lora_rank)
    return shapes


def lora_weights(spec: TinyLlama, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, shape in lora_shapes(spec).items():
        std = 1 / np.sqrt(shape[1]) if ".lora_A." in name else spec.lora_b_std
        out[name] = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
    return out


def adapter_config(spec: TinyLlama) -> dict[str, object]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": MODEL_NAME,
        "r": spec.lora_rank,
        "lora_alpha": spec.lora_alpha,
        "lora_dropout": 0.0,
        "target_modules": list(spec.lora_targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }


# -- build + cache ----------------------------------------------------------------------------


def build(spec: TinyLlama, root: Path) -> None:
    """Write the model and the adapter under ``root`` (which must be empty or missing)."""
    model_dir, lora_dir = root / MODEL_NAME, root / "loras" / LORA_NAME
    model_dir.mkdir(parents=True)
    lora_dir.mkdir(parents=True)

    tok = train_tokenizer(spec.vocab_size)
    write_tokenizer(tok, model_dir, spec.max_position_embeddings)
    config = llama_config(spec, tok)
    _write_json(model_dir / "config.json", config)
    _write_json(
        model_dir / "generation_config.json",
        {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    )
    rng = np.random.default_rng(spec.seed)
    save_file(random_weights(weight_shapes(spec), rng), str(model_dir / "model.safetensors"), {"format": "pt"})

    _write_json(lora_dir / "adapter_config.json", adapter_config(spec))
    lora_rng = np.random.default_rng(spec.seed + 1)
    save_file(lora_weights(spec, lora_rng), str(lora_dir / "adapter_model.safetensors"), {"format": "pt"})
    for f in root.rglob("*"):  # safetensors writes 0600; pods may read as another user
        f.chmod(0o755 if f.is_dir() else 0o644)


def ensure(spec: TinyLlama | None = None) -> Built:
    """Build the model and adapter unless a finished build with the same key is cached."""
    spec = spec or TinyLlama()
    start = time.monotonic()
    key = build_key(spec)
    final = cache_root() / "models" / key
    cached = (final / STAMP).exists()
    if not cached:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=final.parent))
        try:
            build(spec, tmp / "out")
            (tmp / "out" / STAMP).write_text(f"{key}\n")
            if final.exists() and not (final / STAMP).exists():
                shutil.rmtree(final)  # an older interrupted build without a stamp
            try:
                os.rename(tmp / "out", final)
            except OSError:
                if not (final / STAMP).exists():  # not a concurrent builder that won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Built(final, final / MODEL_NAME, final / "loras" / LORA_NAME, time.monotonic() - start, cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    built = ensure()
    state = "cached" if built.cached else "built"
    print(f"model {built.model_dir}\nlora  {built.lora_dir}\n{state} in {built.seconds:.2f}s", flush=True)


if __name__ == "__main__":
    main()
