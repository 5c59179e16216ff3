"""Checkpoint reading: every family, every layout and format, read by runtime name."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from core_helpers import disk_keys
from vlmmerge.anatomy import Anatomy
from vlmmerge.checkpoint import Checkpoint, ShardedSafetensorsWriter, atomic_output_dir, output, parse_size
from vlmmerge.errors import CheckpointError, UnsupportedArchitectureError, VlmMergeError
from vlmmerge.testing.tiny import FAMILIES, build_tiny_model, save_model


@pytest.mark.parametrize("family", FAMILIES)
def test_runtime_names_and_tensors_match_the_model(family, tmp_path):
    model = build_tiny_model(family, seed=0)
    folder = save_model(model, tmp_path / family)
    checkpoint = Checkpoint(folder)
    state = model.state_dict()
    tied = Anatomy(checkpoint).tied
    expected = {name for name in state if not (tied and name == "lm_head.weight")}
    assert set(checkpoint.names) == expected
    for name in checkpoint.names:
        assert torch.equal(checkpoint.get(name), state[name]), name
        assert checkpoint.info(name).shape == tuple(state[name].shape)
    # The reverse mapping reproduces exactly the keys save_pretrained wrote.
    assert {checkpoint.mapper.to_disk(name) for name in checkpoint.names} == disk_keys(folder)


@pytest.mark.parametrize(
    "family,layout,prefixes",
    [
        ("llava", "hub_llava", ("language_model.model.", "vision_tower.vision_model.")),
        ("qwen2_vl", "qwen2_vl_original", ("model.layers.", "visual.")),
        ("llava", "runtime", ("model.language_model.", "model.vision_tower.")),
        ("qwen2_vl", "runtime", ("model.language_model.", "model.visual.")),
    ],
)
def test_other_layouts_read_the_same(family, layout, prefixes, tmp_path):
    model = build_tiny_model(family, seed=0)
    reference = Checkpoint(save_model(model, tmp_path / "default"))
    folder = save_model(model, tmp_path / layout, layout=layout)
    keys = disk_keys(folder)
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in keys), (prefix, sorted(keys)[:5])
    checkpoint = Checkpoint(folder)
    assert set(checkpoint.names) == set(reference.names)
    for name in checkpoint.names:
        assert torch.equal(checkpoint.get(name), reference.get(name)), name


@pytest.mark.parametrize("fmt,shard", [("safetensors", "20KB"), ("bin", None), ("bin", "20KB")])
def test_formats_and_shards(fmt, shard, tmp_path):
    model = build_tiny_model("llava", seed=0)
    folder = save_model(model, tmp_path / "m", fmt=fmt, max_shard_size=shard)
    if shard:
        index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
        assert (folder / index).exists()
    checkpoint = Checkpoint(folder)
    assert checkpoint.files.fmt == fmt
    state = model.state_dict()
    for name in checkpoint.names:
        assert torch.equal(checkpoint.get(name), state[name])


def test_bad_paths_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        Checkpoint(tmp_path / "empty")
    folder = save_model(build_tiny_model("llama"), tmp_path / "noweights")
    for file in folder.glob("*.safetensors"):
        file.unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        Checkpoint(folder)


def test_unknown_architecture_lists_supported(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedArchitectureError, match="BertForMaskedLM.*LlavaForConditionalGeneration"):
        Anatomy(Checkpoint(tmp_path / "bert"))


def test_shape_disagreeing_with_config_is_named(tmp_path):
    folder = save_model(build_tiny_model("llama"), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = config["intermediate_size"] * 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp\..*shape"):
        Checkpoint(folder)


def test_sharded_writer_and_atomic_dir(tmp_path):
    tensors = {f"t{i}": torch.full((100,), float(i)) for i in range(5)}  # 400 bytes each
    with atomic_output_dir(tmp_path / "out") as tmp:
        writer = ShardedSafetensorsWriter(tmp, max_shard_size=1000)
        for name, value in tensors.items():
            writer.add(name, value)
        files = writer.finish()
    assert len(files) == 3
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == 2000
    from safetensors.torch import load_file

    loaded = {}
    for file in (tmp_path / "out").glob("model-*.safetensors"):
        loaded.update(load_file(file))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())

    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "failed"):
            raise RuntimeError("boom")
    assert not (tmp_path / "failed").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(VlmMergeError, match="already exists"):
        with atomic_output_dir(tmp_path / "out"):
            pass


def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("1MiB") == 2**20
    assert parse_size(123) == 123
    with pytest.raises(VlmMergeError, match="cannot read size"):
        parse_size("lots")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_dir_has_the_mode_of_a_new_folder_and_is_synced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(output.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"x")
        (tmp / "b.json").write_text("{}")
    out = tmp_path / "out"
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's 0700
    names = {Path(p).name for p in synced}
    assert {"a.bin", "b.json", "sub", tmp.name, tmp_path.name} <= names  # files, folders, and the parent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("swap", [True, False])
def test_overwrite_replaces_and_removes_the_old_folder(tmp_path, monkeypatch, swap):
    if not swap:
        monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]


def test_exchange_is_atomic_on_this_file_system(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "in-a").touch()
    assert output._exchange(tmp_path / "a", tmp_path / "b")  # Linux renameat2 on ext4 / tmpfs
    assert (tmp_path / "b" / "in-a").exists() and not (tmp_path / "a" / "in-a").exists()


def test_failure_removes_staging_and_created_parents(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "x" / "y" / "out") as tmp:
            (tmp / "partial").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_stale_siblings_of_dead_writers_are_cleaned_and_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    dead = _dead_pid()
    (tmp_path / f".out.tmp-{dead}-00aa").mkdir()
    (tmp_path / f".out.old-{dead}-00bb").mkdir()
    (tmp_path / f".out.old-{dead}-00bb" / "kept.txt").write_text("old")
    live = tmp_path / f".out.tmp-{os.getppid()}-00cc"
    live.mkdir()
    (tmp_path / f".other.tmp-{dead}-00dd").mkdir()
    output.recover_siblings(out)
    # the old folder whose replacement never arrived is put back; the dead staging folder goes
    assert (out / "kept.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".other.tmp-%d-00dd" % dead, live.name, "out"])


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_safetensors_dtype_codes_are_what_safetensors_writes(tmp_path):
    from safetensors.torch import save_file

    from vlmmerge.checkpoint.dtypes import DTYPES, SAFETENSORS_DTYPE_NAMES, SAFETENSORS_DTYPES, dtype_named

    tensors = {str(dtype): torch.zeros(2, dtype=dtype) for dtype in SAFETENSORS_DTYPE_NAMES}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    raw = (tmp_path / "t.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    for dtype, code in SAFETENSORS_DTYPE_NAMES.items():
        assert header[str(dtype)]["dtype"] == code and SAFETENSORS_DTYPES[code] is dtype
    assert dtype_named("BF16") is torch.bfloat16 and dtype_named("half") is torch.float16
    assert dtype_named("int4") is None and set(DTYPES.values()) == {torch.float32, torch.float16, torch.bfloat16}
