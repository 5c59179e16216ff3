"""Bad input through the command line (issue 11, item 13).

Every case runs `vlmmerge merge | evolve | eval | inspect` in-process and asserts the same four
things: a non-zero exit; exactly one line on stderr, `error: ...`, naming the file, tensor or
key at fault (no traceback); no output folder and no temporary sibling left; and every file the
user had (models, recipes, eval sets, an existing output) byte-for-byte as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from core_helpers import make_world
from vlmmerge.cli import main


@dataclass
class Case:
    """What one bad-input case needs: its own folder, the shared (read-only) world, a place for output."""

    dir: Path
    world: dict[str, Path]
    out: Path
    monkeypatch: pytest.MonkeyPatch

    def recipe(self, data: dict | None = None, text: str | None = None, name: str = "recipe.yaml", **changes) -> str:
        path = self.dir / name
        if text is None:
            data = {**good_recipe(self.world), **changes} if data is None else data
            text = yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False)
        path.write_text(text)
        return str(path)

    def merge(self, *args, **changes) -> list[str]:
        return ["merge", self.recipe(**changes), str(self.out), "--quiet", *args]

    def copy_model(self, name: str = "ft_a") -> Path:
        return Path(shutil.copytree(self.world[name], self.dir / f"{name}-copy"))

    def merge_with(self, model: Path) -> list[str]:
        """A merge whose second model is `model` (a broken copy of ft_a)."""
        recipe = good_recipe(self.world)
        recipe["models"][1]["model"] = str(model)
        return self.merge(**recipe)

    def eval_set(self, fitness: list[dict], test: list[dict], images: tuple[str, ...] = ()) -> Path:
        folder = self.dir / "evalset"
        (folder / "images").mkdir(parents=True)
        (folder / "task.yaml").write_text(yaml.safe_dump({"name": "toy", "task": "caption", "language": "en",
                                                          "modality": "image", "metrics": ["exact_match"]}))
        for name in images:
            (folder / "images" / name).write_bytes(PNG_1x1)
        for split, rows in (("fitness", fitness), ("test", test)):
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return folder

    def eval(self, task: str, *args: str) -> list[str]:
        return ["eval", str(self.world["vlm"]), "--task", task, "--out", str(self.out), "--no-progress", *args]


PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8ffff3f0005fe02fe"
    "a7d6a4f40000000049454e44ae426082"
)


def good_recipe(world: dict[str, Path]) -> dict:
    return {
        "merge_method": "task_arithmetic",
        "base_model": str(world["base"]),
        "models": [{"model": str(world["vlm"]), "parameters": {"weight": 1.0}},
                   {"model": str(world["ft_a"]), "parameters": {"weight": 0.5}}],
        "dtype": "float32",
    }


def item(i: int, image: str | None = "a.png", **extra) -> dict:
    return {"id": f"x{i}", "image": f"images/{image}" if image else None, "reference": "a cat",
            "prompt": f"describe {i}", **extra}


def rewrite_tensor(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def first_weight(tensors: dict[str, torch.Tensor], part: str = "mlp.up_proj") -> str:
    return sorted(k for k in tensors if part in k)[0]


def lm_variant(world_root: Path, name: str, **config_changes) -> Path:
    """A text LM shaped like the world's, but with other config values (layers, sizes)."""
    import transformers

    from vlmmerge.testing import save_model, tiny_config
    from vlmmerge.testing.configs import matching_lm_config

    config = matching_lm_config(tiny_config("llava"))
    for key, value in config_changes.items():
        setattr(config, key, value)
    torch.manual_seed(5)
    model = getattr(transformers, config.architectures[0])(config).eval()
    return save_model(model, world_root / name)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_that_runs_code(case: Case) -> list[str]:
    model = case.copy_model()
    (model / "model.safetensors").unlink()
    # torch.save's zip format, as a real checkpoint would be; loading it unsafely runs os.system
    torch.save({"model.embed_tokens.weight": _Evil(case.dir / "PWNED")}, model / "pytorch_model.bin")
    return case.merge_with(model)


def _tokenizer_disagrees(case: Case) -> list[str]:
    model = case.copy_model()
    doc = json.loads((model / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    (a, ia), (b, ib) = sorted(vocab.items(), key=lambda kv: kv[1])[40:42]
    vocab[a], vocab[b] = ib, ia  # two shared ids now mean different tokens
    (model / "tokenizer.json").write_text(json.dumps(doc))
    return case.merge_with(model)


def _unwritable(case: Case) -> list[str]:
    parent = case.dir / "locked"
    parent.mkdir()
    os.chmod(parent, 0o500)
    if os.geteuid() == 0:  # root writes through 0500: refuse the mkdir the way the kernel would
        from vlmmerge.checkpoint import output

        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if Path(path).parent == parent:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_mkdir(path, *args, **kwargs)

        case.monkeypatch.setattr(output.os, "mkdir", mkdir)
    case.out = parent / "out"
    return case.merge()


def _disk_full(case: Case) -> list[str]:
    from vlmmerge.checkpoint import writer

    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    case.monkeypatch.setattr(writer, "pwrite", pwrite)
    return case.merge()


def _existing_output(case: Case) -> list[str]:
    case.out.mkdir()
    (case.out / "notes.txt").write_text("mine")
    return case.merge()


def _output_is_file(case: Case, *flags: str) -> list[str]:
    case.out.write_text("not a folder")
    return case.merge(*flags)


def _under_a_file(case: Case) -> list[str]:
    (case.dir / "afile").write_text("x")
    case.out = case.dir / "afile" / "sub" / "out"
    return case.merge()


def _models(world: dict[str, Path], *names: str, **params) -> list[dict]:
    return [{"model": str(world[n]), **({"parameters": params} if params else {})} for n in names]


# (id, build the argv for one case, substrings the error line must hold)
CASES: list[tuple[str, Callable[[Case], list[str]], tuple[str, ...]]] = [
    # recipes
    ("recipe-missing", lambda c: ["merge", str(c.dir / "nope.yaml"), str(c.out)], ("nope.yaml",)),
    ("recipe-yaml-syntax", lambda c: ["merge", c.recipe(text="merge_method: [linear\nmodels: x\n"), str(c.out)],
     ("recipe.yaml", "line 2")),
    ("recipe-not-mapping", lambda c: ["merge", c.recipe(text="- linear\n- ties\n"), str(c.out)],
     ("recipe.yaml", "mapping")),
    ("recipe-unknown-key", lambda c: c.merge(merge_methods="ties"), ("recipe.yaml", "merge_methods")),
    ("recipe-unknown-method", lambda c: c.merge(merge_method="frobnicate"), ("frobnicate",)),
    ("recipe-unknown-parameter", lambda c: c.merge(models=_models(c.world, "vlm", "ft_a", wieght=1.0)), ("wieght",)),
    ("recipe-unknown-global-parameter", lambda c: c.merge(parameters={"lambada": 1.0}), ("lambada",)),
    ("recipe-density-negative", lambda c: c.merge(merge_method="ties", models=_models(c.world, "vlm", "ft_a", weight=1.0, density=-0.5)),
     ("density",)),
    ("recipe-threads-zero", lambda c: c.merge(options={"threads": 0}), ("recipe.yaml", "options.threads")),
    ("recipe-weight-not-number", lambda c: c.merge(models=_models(c.world, "vlm", "ft_a", weight="heavy")), ("weight", "heavy")),
    ("recipe-seed-not-int", lambda c: c.merge(seed="abc"), ("recipe.yaml", "seed")),
    ("recipe-models-empty", lambda c: c.merge(models=[]), ("recipe.yaml", "models")),
    ("recipe-slerp-three-models", lambda c: c.merge(merge_method="slerp", parameters={"t": 0.5},
                                                    models=_models(c.world, "vlm", "ft_a", "ft_b")), ("slerp", "4")),
    ("recipe-missing-base", lambda c: c.merge(base_model=None), ("base_model",)),
    ("recipe-unknown-dtype", lambda c: c.merge(dtype="float7"), ("dtype", "float7")),
    ("recipe-bad-shard-size", lambda c: c.merge("--max-shard-size", "lots"), ("lots",)),
    ("recipe-host-not-a-model", lambda c: c.merge(host="/elsewhere/model"), ("/elsewhere/model",)),
    # evolve
    ("evolve-unknown-key", lambda c: ["evolve", c.recipe(evolve={"params": ["weight"], "bogus": 1}), "--out", str(c.out)],
     ("evolve.bogus",)),
    ("evolve-bounds-reversed", lambda c: ["evolve", c.recipe(evolve={
        "params": ["weight"], "bounds": {"weight": [2, 1]}, "fitness": {"tasks": [{"task": "ja_vqa"}]}}),
        "--out", str(c.out)], ("bounds.weight",)),
    ("evolve-no-section", lambda c: ["evolve", c.recipe(), "--out", str(c.out)], ("evolve",)),
    # checkpoints
    ("model-missing", lambda c: c.merge_with(c.dir / "no-such-model"), ("no-such-model",)),
    ("model-no-weights", lambda c: c.merge_with(_without_weights(c)), ("ft_a-copy", "no weights")),
    ("model-truncated-safetensors", lambda c: c.merge_with(_truncated(c)), ("ft_a-copy/model.safetensors",)),
    ("model-corrupt-safetensors", lambda c: c.merge_with(_corrupt(c)), ("ft_a-copy/model.safetensors",)),
    ("model-invalid-config", lambda c: c.merge_with(_bad_config(c)), ("ft_a-copy/config.json",)),
    ("model-index-missing-shard", lambda c: c.merge_with(_index_with_missing_shard(c)),
     ("model.safetensors.index.json", "model-00002-of-00002.safetensors")),
    ("model-unsupported-architecture", lambda c: c.merge_with(_bert(c)), ("BertForMaskedLM",)),
    ("model-pickle-runs-code", _pickle_that_runs_code, ("ft_a-copy/pytorch_model.bin", "system")),
    ("model-nan", lambda c: c.merge_with(_poisoned(c, float("nan"))), ("model.", "mlp.up_proj", "NaN")),
    ("model-inf", lambda c: c.merge_with(_poisoned(c, float("inf"))), ("model.", "mlp.up_proj")),
    ("model-shape-mismatch", lambda c: c.merge_with(lm_variant(c.dir, "wide", intermediate_size=96)), ("mlp", "96")),
    ("model-depth-mismatch", lambda c: c.merge_with(lm_variant(c.dir, "deep", num_hidden_layers=3)), ("layers",)),
    ("model-vocab-larger-than-host", lambda c: c.merge_with(lm_variant(c.dir, "bigvocab", vocab_size=4000)), ("4000",)),
    ("model-tokenizers-disagree", _tokenizer_disagrees, ("ft_a-copy", "id 40")),
    ("inspect-missing", lambda c: ["inspect", str(c.dir / "gone")], ("gone",)),
    ("inspect-invalid-config", lambda c: ["inspect", str(_bad_config(c))], ("config.json",)),
    # eval sets
    ("eval-unknown-task", lambda c: c.eval("no_such_task"), ("no_such_task",)),
    ("eval-empty-split", lambda c: c.eval(str(c.eval_set([item(1)], [], images=("a.png",)))), ("test",)),
    ("eval-malformed-jsonl", lambda c: c.eval(_malformed_jsonl(c)), ("test.jsonl:2",)),
    ("eval-overlapping-splits", lambda c: c.eval(str(c.eval_set([item(1)], [item(1)], images=("a.png",)))), ("x1",)),
    ("eval-missing-image", lambda c: c.eval(str(c.eval_set([item(1)], [item(2, image="gone.png")], images=("a.png",)))),
     ("gone.png",)),
    ("eval-unknown-metric", lambda c: c.eval(_jsonl_task(c), "--metric", "bleurt9000"), ("bleurt9000",)),
    # outputs
    ("output-exists-not-empty", _existing_output, ("out", "already exists")),
    ("output-is-a-file", _output_is_file, ("out", "not a folder")),
    ("output-is-a-file-overwrite", lambda c: _output_is_file(c, "--overwrite"), ("out", "not a folder")),
    ("output-under-a-file", _under_a_file, ("afile", "not a folder")),
    ("output-unwritable", _unwritable, ("locked", "ermission denied")),
    ("output-disk-full", _disk_full, ("case/out", "No space left", ".safetensors")),
]


def _without_weights(case: Case) -> Path:
    model = case.copy_model()
    (model / "model.safetensors").unlink()
    return model


def _truncated(case: Case) -> Path:
    model = case.copy_model()
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return model


def _corrupt(case: Case) -> Path:
    model = case.copy_model()
    (model / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
    return model


def _bad_config(case: Case) -> Path:
    model = case.copy_model()
    (model / "config.json").write_text('{"architectures": ["MistralForCausalLM"], ')
    return model


def _index_with_missing_shard(case: Case) -> Path:
    model = case.copy_model()
    keys = list(load_file(model / "model.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys}
    weight_map[keys[-1]] = "model-00002-of-00002.safetensors"
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return model


def _bert(case: Case) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    BertForMaskedLM(config).save_pretrained(case.dir / "bert")
    return case.dir / "bert"


def _poisoned(case: Case, value: float) -> Path:
    model = case.copy_model()

    def poison(tensors):
        tensors[first_weight(tensors)][0, 0] = value

    rewrite_tensor(model, poison)
    return model


def _malformed_jsonl(case: Case) -> str:
    folder = case.eval_set([item(1)], [item(2)], images=("a.png",))
    with open(folder / "test.jsonl", "a") as fh:
        fh.write('{"id": "x3", "reference": \n')
    return str(folder)


def _jsonl_task(case: Case) -> str:
    path = case.dir / "items.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"q{i}", "reference": "a", "split": s}) + "\n"
                            for i, s in enumerate(["fitness", "test"])))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("bad-inputs") / "world")


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """Every path under `roots` with its mode and content hash (folders: mode only)."""
    state = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            mode = path.lstat().st_mode
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            state[str(path)] = (mode, digest)
    return state


@pytest.mark.parametrize("build,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly(build, expected, world, tmp_path, capsys, monkeypatch):
    case = Case(tmp_path / "case", world, tmp_path / "case" / "out", monkeypatch)
    case.dir.mkdir()
    argv = build(case)
    world_root = world["base"].parent
    before = snapshot(case.dir, world_root)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    after = snapshot(case.dir, world_root)
    assert after == before, sorted(set(after) ^ set(before))  # nothing written, nothing changed
    assert not (case.dir / "PWNED").exists()


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30
    assert {argv_command(c) for c in CASES} >= {"merge", "evolve", "eval", "inspect"}


def argv_command(case) -> str:
    name = case[0].split("-")[0]
    return {"recipe": "merge", "model": "merge", "output": "merge"}.get(name, name)


def test_debug_shows_the_traceback(tmp_path, capsys):
    from vlmmerge.errors import RecipeError

    with pytest.raises(RecipeError, match="nope.yaml"):
        main(["--debug", "merge", str(tmp_path / "nope.yaml"), str(tmp_path / "out")])
    with pytest.raises(RecipeError, match="nope.yaml"):
        main(["merge", str(tmp_path / "nope.yaml"), str(tmp_path / "out"), "--debug"])


def test_command_line_prints_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vlmmerge.cli", "merge", str(tmp_path / "nope.yaml"), str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: recipe file not found: {tmp_path / 'nope.yaml'}"]
    assert list(tmp_path.iterdir()) == []
