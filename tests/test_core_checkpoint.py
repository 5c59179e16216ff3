"""Checkpoint reading: every family, every layout and format, read by runtime name."""

from __future__ import annotations

import json

import pytest
import torch

from core_helpers import disk_keys
from vlmmerge.anatomy import Anatomy
from vlmmerge.checkpoint import Checkpoint, ShardedSafetensorsWriter, atomic_output_dir, parse_size
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
