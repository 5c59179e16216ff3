"""The engine's fast paths: positioned safetensors reads, the streaming writer, parallel workers,
half-precision inputs handed to the kernels, and exact top-k selection. Each is checked against a
plain reference (safetensors' own reader and writer, a serial float32 merge, a stable sort)."""

from __future__ import annotations

import json
import os
import struct
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core_helpers import load_tensors, perturb
from vlmmerge.checkpoint import Checkpoint, PlannedTensor, StreamingSafetensorsWriter, atomic_output_dir
from vlmmerge.checkpoint.files import SafetensorsFile
from vlmmerge.engine import HALF_INPUT_METHODS, merge_tensor, plan_merge, run_merge
from vlmmerge.errors import CheckpointError, VlmMergeError
from vlmmerge.methods import get_method, mask_seed
from vlmmerge.methods.sparsify import top_k_magnitudes, value_at_rank
from vlmmerge.testing.tiny import build_tiny_lm_for, save_model


# --------------------------------------------------------------------------------------------
# Reading


def test_positioned_reads_match_safetensors(tmp_path):
    tensors = {
        "a.bf16": torch.randn(7, 5).bfloat16(),
        "b.f32": torch.randn(3),
        "c.i64": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d.bool": torch.tensor([True, False, True]),
        "e.scalar": torch.tensor(2.5, dtype=torch.float16),
        "f.empty": torch.zeros(0, 4),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    st = SafetensorsFile(path)
    with safe_open(path, framework="pt") as reference:
        for key in tensors:
            entry = st.entry(key)
            got = st.read(entry, reference.get_tensor(key).dtype)
            assert got.dtype == tensors[key].dtype and got.shape == tensors[key].shape, key
            assert torch.equal(got, reference.get_tensor(key)), key
    st.close()


def test_truncated_or_garbage_safetensors_is_named(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.randn(100, 100)}, str(path))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*'w'.*outside the file"):
        SafetensorsFile(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors.*not a readable safetensors"):
        SafetensorsFile(tmp_path / "junk.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors"):
        SafetensorsFile(tmp_path / "tiny.safetensors")


def test_checkpoint_reads_are_private_copies(tmp_path):
    folder = save_model(build_tiny_lm_for("llava", seed=1), tmp_path / "m")
    checkpoint = Checkpoint(folder)
    name = checkpoint.names[0]
    first = checkpoint.get(name)
    first.zero_()  # must not change the file or later reads
    again = checkpoint.get(name)
    assert not torch.equal(first, again) or again.abs().sum() == 0
    assert torch.equal(again, Checkpoint(folder).get(name))


# --------------------------------------------------------------------------------------------
# Writing


def _plan(tensors: dict[str, torch.Tensor]) -> list[PlannedTensor]:
    return [PlannedTensor(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]


def test_streaming_writer_any_order_sharded(tmp_path):
    tensors = {
        "z.f32": torch.randn(50, 3),
        "a.bf16": torch.randn(33).bfloat16(),  # odd byte count before a 4-byte dtype in plan order
        "m.f32": torch.randn(10),
        "i.i64": torch.arange(5),
        "b.bool": torch.tensor([True, False, True]),
        "s.scalar": torch.tensor(1.5),
    }
    with atomic_output_dir(tmp_path / "out") as tmp:
        writer = StreamingSafetensorsWriter(tmp, _plan(tensors), max_shard_size=500)
        for name in reversed(list(tensors)):
            writer.write(name, tensors[name])
        files = writer.finish()
    assert len(files) > 1
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    loaded = {}
    for file in sorted(out.glob("model-*-of-*.safetensors")):
        loaded.update(load_file(file))  # safetensors validates offsets, coverage and alignment
        with safe_open(file, framework="pt") as handle:
            assert handle.metadata()["format"] == "pt"
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name
    assert not list(out.glob("*.tmp*"))


def test_streaming_writer_single_file_and_errors(tmp_path):
    tensors = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    writer = StreamingSafetensorsWriter(tmp_path, _plan(tensors))
    with pytest.raises(VlmMergeError, match=r"'w'.*planned"):
        writer.write("w", torch.randn(4, 5))
    with pytest.raises(VlmMergeError, match=r"'w'.*planned"):
        writer.write("w", torch.randn(4, 4).double())
    with pytest.raises(VlmMergeError, match="not part of the planned output"):
        writer.write("nope", torch.randn(1))
    writer.write("w", tensors["w"])
    with pytest.raises(VlmMergeError, match="written twice"):
        writer.write("w", tensors["w"])
    with pytest.raises(VlmMergeError, match=r"never written.*'b'"):
        writer.finish()
    writer = StreamingSafetensorsWriter(tmp_path, _plan(tensors))
    writer.write("b", tensors["b"])
    writer.write("w", tensors["w"])
    assert [p.name for p in writer.finish()] == ["model.safetensors"]
    loaded = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


# --------------------------------------------------------------------------------------------
# The merge loop


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    base = build_tiny_lm_for("llava", seed=1)
    paths = {"base": save_model(base.to(torch.bfloat16), root / "base")}
    for i, seed in enumerate((31, 32), start=1):
        model = perturb(build_tiny_lm_for("llava", seed=1), seed=seed).to(torch.bfloat16)
        paths[f"ft{i}"] = save_model(model, root / f"ft{i}")
    return paths


def _recipe(method: str, paths: dict) -> dict:
    if method == "linear":
        return {
            "merge_method": "linear",
            "models": [{"model": str(paths[n]), "parameters": {"weight": w}} for n, w in (("base", 0.2), ("ft1", 0.5), ("ft2", 0.3))],
            "dtype": "bfloat16",
        }
    return {
        "merge_method": method,
        "base_model": str(paths["base"]),
        "models": [
            {"model": str(paths["ft1"]), "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": str(paths["ft2"]), "parameters": {"weight": 0.4, "density": 0.7}},
        ],
        "dtype": "float32",
        "seed": 7,
    }


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties"])
def test_workers_and_shards_do_not_change_the_result(world, method, tmp_path):
    recipe = _recipe(method, world)
    run_merge(recipe, tmp_path / "serial", threads=1, progress=False)
    run_merge(recipe, tmp_path / "parallel", threads=3, max_shard_size="20KB", progress=False)
    serial, parallel = load_tensors(tmp_path / "serial"), load_tensors(tmp_path / "parallel")
    assert (tmp_path / "parallel" / "model.safetensors.index.json").exists()
    assert set(serial) == set(parallel)
    for name in serial:
        assert torch.equal(serial[name], parallel[name]), name


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_pooled_fused_buffers_give_the_eager_serial_bits(world, method, tmp_path, monkeypatch):
    """Workers reuse their fused-kernel slabs from tensor to tensor (the large tensors in a pool of
    their own, dropped before the rest), merge eagerly while a thread of its own warms the kernels up,
    and split a large tensor's kernels over the idle workers: the eager, serial merge's bits."""
    import vlmmerge.engine.execute as engine
    from vlmmerge.methods import fused, fused_runtime

    recipe = _recipe(method, world)
    monkeypatch.setenv(fused.MODE_ENV, "off")
    run_merge(recipe, tmp_path / "eager", threads=1, progress=False)
    monkeypatch.setenv(fused.MODE_ENV, "on")
    monkeypatch.setenv(fused.MIN_ELEMENTS_ENV, "64")
    monkeypatch.setattr(fused_runtime, "MIN_SPLIT_ELEMENTS", 64)
    monkeypatch.setattr(fused_runtime, "SPLIT_ALIGN", 8)
    pooled, switches, warmed, split_threads = [], [], [], set()
    original_switch, original_warm_up, original_run = engine._Workspaces.switch_to, engine._warm_up, fused._run

    def merge_and_write(plan, tensor, planned, writer, device, workspace=None):
        if workspace is not None:
            pooled.append((tensor.name, sorted(workspace)))  # the roles its earlier tensors left
        return original(plan, tensor, planned, writer, device, workspace)

    def run(*args):
        if fused_runtime._SPLIT.get() is not None:
            split_threads.add(threading.current_thread().name.split("_")[0])
        return original_run(*args)

    original = engine._merge_and_write
    monkeypatch.setattr(engine, "_merge_and_write", merge_and_write)
    monkeypatch.setattr(engine._Workspaces, "switch_to", lambda self, large: (switches.append(large), original_switch(self, large)))
    monkeypatch.setattr(engine, "_warm_up", lambda plan, tensor, device: (warmed.append(tensor.name), original_warm_up(plan, tensor, device)))
    monkeypatch.setattr(fused, "_run", run)
    monkeypatch.setattr(fused, "_warm", set())  # as in a new process
    eager = load_tensors(tmp_path / "eager")
    for run_name in ("first", "again"):  # again: the kernels are warm, no warm-up, every tensor fused
        run_merge(recipe, tmp_path / run_name, threads=2, progress=False)
        fused_out = load_tensors(tmp_path / run_name)
        assert set(eager) == set(fused_out)
        for name in eager:
            assert torch.equal(eager[name].view(torch.int32), fused_out[name].view(torch.int32)), (run_name, name)
        assert len(warmed) == 1  # one warm-up (the first run's), on the smallest fused tensor
    assert len(pooled) > 20 and any("out" in roles for _, roles in pooled)  # slabs were reused
    assert True in switches and switches[-1] is False  # the large tensors' pool, dropped once they were done
    assert split_threads == {"vlmmerge-merge", "vlmmerge-split"}  # a large tensor's kernels ran on both
    assert ("merge", True) in fused._compiled  # the workers ran the GIL-releasing kernels


def test_other_threads_merge_eagerly_while_one_warms_the_kernels(monkeypatch):
    from vlmmerge.methods import fused

    monkeypatch.setenv(fused.MODE_ENV, "on")
    seen = {}
    with fused.warming_up():
        seen["warming thread"] = fused.enabled(1 << 20)
        other = threading.Thread(target=lambda: seen.setdefault("other thread", fused.enabled(1 << 20)))
        other.start()
        other.join()
    seen["after"] = fused.enabled(1 << 20)
    assert seen == {"warming thread": True, "other thread": False, "after": True}


def test_a_segment_is_its_own_tensor_at_offset_zero_over_the_same_memory():
    from vlmmerge.methods import fused

    whole = torch.arange(40, dtype=torch.bfloat16)
    part = fused.segment(whole, 8, 24)
    assert part.storage_offset() == 0 and part.dtype == whole.dtype and torch.equal(part, whole[8:24])
    part.fill_(-1)
    assert (whole[8:24] == -1).all() and whole[7] == 7 and whole[24] == 24
    assert fused.segment(whole, 0, 40) is whole


def test_tensors_merge_single_threaded_and_the_callers_thread_count_is_restored(world, tmp_path, monkeypatch):
    import vlmmerge.engine.execute as engine

    seen = []
    execute = engine.execute_plan

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return execute(*args, **kwargs)

    monkeypatch.setattr(engine, "execute_plan", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not the test session's 1, so that a missing restore shows
    try:
        run_merge(_recipe("linear", world), tmp_path / "out", threads=2, progress=False)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
    assert after == 2


@pytest.mark.parametrize("method", sorted(HALF_INPUT_METHODS))
def test_half_inputs_give_the_float32_result_bit_for_bit(world, method):
    """The kernels get bf16 inputs as stored; converting them first must give the same bits."""
    method_def = get_method(method)
    recipe = _recipe("ties", world) if method_def.takes_base else _recipe("linear", world)
    recipe = dict(recipe, merge_method=method)
    if method == "linear":
        recipe["models"] = [dict(m, parameters={"weight": m["parameters"]["weight"]}) for m in recipe["models"]]
    if method in ("task_arithmetic",):
        recipe["models"] = [dict(m, parameters={"weight": m["parameters"]["weight"]}) for m in recipe["models"]]
    plan = plan_merge(recipe)
    checked = 0
    for tensor in plan.tensors:
        if not tensor.merged:
            continue
        fast = merge_tensor(plan, tensor)
        base = plan.base.lm_tensor(tensor.lm_name).float() if plan.base is not None else None
        inputs = [m.source.lm_tensor(tensor.lm_name).float() for m in plan.members]
        assert inputs[0].dtype == torch.float32
        generator = None
        if plan.method.random:
            generator = [torch.Generator().manual_seed(mask_seed(7, tensor.name, i)) for i in (0, 1)]
        reference = plan.method.merge(base, inputs, plan.member_params(tensor), plan.global_params(tensor), generator)
        assert fast.dtype == torch.float32
        assert torch.equal(fast, reference), (method, tensor.name)
        checked += 1
    assert checked > 5


def test_overflow_in_the_output_dtype_is_caught_and_leaves_nothing(world, tmp_path):
    """Finite float32 results beyond float16's range become Inf when converted: caught, nothing written."""
    recipe = _recipe("linear", world)
    recipe["models"][1]["parameters"]["weight"] = 1e6
    recipe["parameters"] = {"normalize": False}
    recipe["dtype"] = "float16"
    with pytest.raises(VlmMergeError, match="NaN or Inf"):
        run_merge(recipe, tmp_path / "out", threads=2, progress=False)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Selection


def _stable_top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    flat = values.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    out = torch.zeros_like(flat)
    out[order] = flat[order]
    return out.reshape(values.shape)


@pytest.mark.parametrize("n", [10, 4096, (1 << 20) + 7, 2_500_000])
@pytest.mark.parametrize("levels", [3, 40, 10**7])
def test_top_k_matches_a_stable_sort(n, levels):
    generator = torch.Generator().manual_seed(n + levels)
    values = torch.randint(0, levels, (n,), generator=generator).float() * 0.125
    values[torch.rand(n, generator=generator) < 0.1] = 0  # many exact zeros, as after DARE
    for fraction in (1e-4, 0.3, 0.5, 0.9, 0.999):
        k = max(1, int(fraction * n))
        got = top_k_magnitudes(values.clone(), k)
        assert torch.equal(got, _stable_top_k(values, k)), (n, levels, fraction)
        rank = int(fraction * (n - 1))
        assert value_at_rank(values, rank) == torch.kthvalue(values, rank + 1).values


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_elementwise_methods_merged_in_slices_match_whole_tensors(world, method, tmp_path, monkeypatch):
    """The sliced path (cache-sized pieces) writes the bits `merge_tensor` computes on whole tensors."""
    import vlmmerge.engine.compute as engine

    recipe = _recipe("linear", world)
    if method == "task_arithmetic":
        recipe = dict(_recipe("ties", world), merge_method="task_arithmetic")
        recipe["models"] = [dict(m, parameters={"weight": m["parameters"]["weight"]}) for m in recipe["models"]]
        recipe["parameters"] = {"lambda": 0.8}
    recipe["dtype"] = "float32"
    monkeypatch.setattr(engine, "SLICE_ELEMENTS", 48)  # many slices, one ragged tail per tensor
    run_merge(recipe, tmp_path / "sliced", threads=2, progress=False)
    plan = plan_merge(recipe)
    assert any(engine.merges_in_slices(plan, t, "cpu") and t.merged for t in plan.tensors)
    written = load_tensors(tmp_path / "sliced")
    for tensor in plan.tensors:
        expected = merge_tensor(plan, tensor)
        assert torch.equal(written[tensor.name], expected.to(torch.float32)), tensor.name
