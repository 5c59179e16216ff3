"""Shared by the tune benchmarks: N fine-tunes of one synthetic Llama (zoo tokenizer, so the zoo's text
tasks run on it) in a folder, a tune recipe over them, and a child process that reports its peak RSS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def build_sources(root: Path, count: int, hidden: int = 512, layers: int = 8, seed: int = 0) -> dict:
    """base + `count` fine-tunes (base plus small noise) of a Llama with the zoo's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlmmerge.zoo.refs import resolve_zoo_ref

    tokenizer = Path(resolve_zoo_ref("zoo:ja_lm"))
    vocab = json.loads((tokenizer / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                         vocab_size=vocab, max_position_embeddings=256, eos_token_id=2, pad_token_id=0,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    base = LlamaForCausalLM(config)
    paths = {}

    def save(model, name):
        folder = root / name
        model.save_pretrained(folder)
        for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
            if (tokenizer / file).exists():
                shutil.copy(tokenizer / file, folder / file)
        return str(folder)

    paths["base"] = save(base, "base")
    state = base.state_dict()
    generator = torch.Generator().manual_seed(seed + 1)
    for i in range(count):
        with torch.no_grad():
            for name, value in base.named_parameters():
                value.copy_(state[name] + 0.01 * torch.randn(value.shape, generator=generator))
        paths[f"ft{i}"] = save(base, f"ft{i}")
        base.load_state_dict(state)
    return paths


def tune_recipe(path: Path, paths: dict, count: int, steps: int, group_size: int | None = None) -> Path:
    recipe = {
        "merge_method": "task_arithmetic", "base_model": paths["base"], "tokenizer_source": paths["ft0"],
        "models": [{"model": paths[f"ft{i}"]} for i in range(count)], "dtype": "float32", "seed": 0,
        "tune": {"granularity": "layer", "init": 0.3, "steps": steps, "batch_size": 4, "examples": 8,
                 "fitness": {"tasks": [{"task": "ja_math", "metric": "accuracy_in_language"}]},
                 **({"group_size": group_size} if group_size else {})},
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


CHILD = """
import json, resource, sys, time, os
import torch
torch.set_num_threads(1)
started = time.perf_counter()
out = {}
exec(sys.argv[1])
out["wall_seconds"] = time.perf_counter() - started
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
"""


def measure(code: str) -> dict:
    """Run `code` (it may fill the dict `out`) in a fresh 1-thread Python; its wall time and peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, code], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])
