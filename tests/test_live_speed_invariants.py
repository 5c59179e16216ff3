"""Live candidates keep their random masks' uniforms between candidates (no draw per candidate):
every candidate is still bit for bit what `vlmmerge merge` writes for its recipe, whatever came
before it, densities >= 1 (which draw nothing) included; a higher density keeps a superset."""

from __future__ import annotations

import pytest
import torch

from core_helpers import load_tensors, make_world
from vlmmerge.engine import run_merge
from vlmmerge.live import KEPT_METHODS, LiveMerge, live_memory
from vlmmerge.methods import task_vectors
from vlmmerge.methods.kept import KeptTaskVector, keeping
from vlmmerge.methods.masks import DrawnUniforms, keep_below, mask_generators
from vlmmerge.recipe import load_recipe


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("live-speed"))


def _recipe(world, method, densities, weights=(1.0, 0.6), seed=4, dtype="float32"):
    extra = {"epsilon": 0.05} if method.startswith("della") else {}
    if method == "linear":
        densities = [None] * len(densities)
    return load_recipe({
        "merge_method": method, "base_model": str(world["base"]), "dtype": dtype, "seed": seed,
        "models": [{"model": str(world[name]), "parameters": {"weight": w, **({} if d is None else {"density": d}), **extra}}
                   for name, w, d in zip(("vlm", "ft_a"), weights, densities)],
    })


@pytest.mark.parametrize(("method", "dtype"), [
    ("dare_ties", "float32"), ("dare_linear", "float32"), ("della", "float32"), ("ties", "float32"),
    ("task_arithmetic", "float32"), ("linear", "float32"), ("task_arithmetic", "bfloat16"),  # the last two: in slices
    ("linear", "bfloat16"),
    ("breadcrumbs_ties", "float32"), ("della_linear", "float32"), ("ties", "bfloat16"), ("breadcrumbs", "bfloat16"),
])
def test_live_candidates_are_the_static_merge(world, tmp_path, method, dtype):
    live = LiveMerge([str(world["base"]), str(world["vlm"]), str(world["ft_a"])], str(world["vlm"]),
                     load_processor=False, dtype=getattr(torch, dtype))
    candidates = [((0.5, 0.3), (1.0, 0.6), 4), ((1.0, 0.7), (0.4, 1.2), 4), ((0.5, 0.3), (1.0, 0.6), 9),
                  ((0.5, 0.3), (1.0, 0.6), 4)]
    for number, (densities, weights, seed) in enumerate(candidates):
        recipe = _recipe(world, method, densities, weights, seed, dtype)
        live.apply(recipe)
        out = run_merge(recipe, tmp_path / f"{method}-{number}", progress=False).out_dir
        state = live.model.state_dict()
        for name, value in load_tensors(out).items():
            assert state[name].dtype == value.dtype and torch.equal(state[name], value), (number, name)
    if method in KEPT_METHODS - {"task_arithmetic"}:  # task_arithmetic here merges in slices
        assert live.kept_bytes > 0  # task vectors (and sorted magnitudes / ranks) were kept
    if method.startswith(("dare", "della")):
        assert live.mask_bytes > 0  # the draws were kept (two seeds' worth)
        assert {key[0] for key in live._uniforms} == {4, 9}


def test_kept_uniforms_are_a_fresh_generators_draws_and_masks_nest():
    fresh = mask_generators(3, "model.layers.0.mlp.up_proj.weight", [1])[0]
    kept = DrawnUniforms(fresh.initial_seed())
    first = [torch.rand((7, 5), generator=fresh), torch.rand(3, generator=fresh)]
    for _ in range(2):  # the same two draws after each rewind
        kept.rewind()
        assert torch.equal(kept.next((7, 5)), first[0]) and torch.equal(kept.next((3,)), first[1])
    low = keep_below((7, 5), 0.3, kept.rewind(), out=torch.empty(7, 5))
    high = keep_below((7, 5), 0.6, kept.rewind(), out=torch.empty(7, 5))
    assert torch.equal(low, (first[0] < 0.3).float()) and bool((high >= low).all()) and high.sum() > low.sum()
    assert torch.equal(kept.next((3,)), first[1])  # comparing in place did not change the kept draw
    with pytest.raises(ValueError, match="was of shape"):
        kept.rewind().next((5, 7))


def test_live_memory_counts_what_the_live_model_caches(world):
    from vlmmerge.engine import Source

    refs = [str(world["base"]), str(world["vlm"]), str(world["ft_a"])]
    live = LiveMerge(refs, str(world["vlm"]), load_processor=False)
    live.apply(_recipe(world, "dare_ties", (0.5, 0.5)))
    memory = live_memory({ref: Source.open(ref) for ref in refs}, str(world["vlm"]), refs, masked_models=2)
    assert sum(memory.cached.values()) == live.cached_bytes
    assert 0.9 * memory.masks <= live.mask_bytes <= memory.masks  # vocabulary rows kept by the host draw less
    live.apply(_recipe(world, "ties", (0.5, 0.5)))  # kept task vectors: tau and sorted |tau| per model
    kept = live_memory({ref: Source.open(ref) for ref in refs}, str(world["vlm"]), refs, kept_models=2).kept
    assert 0 < live.kept_bytes <= kept  # an upper bound (tensors the host keeps whole keep nothing)


def test_past_the_mask_cache_budget_tensors_draw_afresh_with_the_same_masks(world, tmp_path):
    refs = [str(world["base"]), str(world["vlm"]), str(world["ft_a"])]
    recipe = _recipe(world, "dare_ties", (0.5, 0.3))
    budget = LiveMerge(refs, str(world["vlm"]), load_processor=False, mask_cache_bytes=50_000)
    for weights in ((0.2, 0.9), (1.0, 0.6)):
        budget.apply(_recipe(world, "dare_ties", (0.5, 0.3), weights))
    unlimited = LiveMerge(refs, str(world["vlm"]), load_processor=False)
    unlimited.apply(recipe)
    assert 0 < budget.mask_bytes <= 50_000 < unlimited.mask_bytes  # some tensors kept their draws, some not
    out = run_merge(recipe, tmp_path / "static", progress=False).out_dir
    state = budget.model.state_dict()
    for name, value in load_tensors(out).items():
        assert torch.equal(state[name], value), name


@pytest.mark.parametrize("coarse", [True, False])
@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties", "della", "dare_ties"])
def test_kept_task_vectors_give_the_same_bits_with_tied_magnitudes(method, coarse):
    """Magnitudes on a coarse grid tie at every threshold: lookups in the kept sorted |tau| give the
    selection's threshold and counts, so the merge is the same bits for every density."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=gen)
    step = (lambda: torch.randint(-4, 5, (64, 48), generator=gen).float() / 8) if coarse \
        else (lambda: torch.randn(64, 48, generator=gen) * 0.1)
    fts = [base + step() for _ in range(3)]
    entries = [KeptTaskVector() for _ in fts]
    for densities in ([0.5, 0.3, 0.9], [0.21, 0.77, 0.5], [0.05, 1.0, 0.33]):
        extra = {"generator": [torch.Generator().manual_seed(i) for i in range(3)]} if method.startswith("d") else {}
        extra.update({"epsilons": [0.04] * 3} if method == "della" else {})
        plain = getattr(task_vectors, method)(base, fts, [1.0, 0.5, 0.7], densities, **extra)
        if method.startswith("d"):
            extra["generator"] = [torch.Generator().manual_seed(i) for i in range(3)]
        with keeping(entries):
            fast = getattr(task_vectors, method)(base, fts, [1.0, 0.5, 0.7], densities, **extra)
        assert torch.equal(plain, fast), densities
    assert all(e.tau is not None for e in entries)


@pytest.mark.parametrize("fused_on", [False, True])
@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_elementwise_vocabulary_merges_whole_then_restores_the_host_rows(world, tmp_path, monkeypatch, method, fused_on):
    """linear / task arithmetic merge the embedding and head whole into the parameter and put the
    host's special-token rows (the image token) back: the static merge's bits, rows included."""
    from vlmmerge.live import _patchable_host_rows
    from vlmmerge.methods import fused

    if fused_on:
        monkeypatch.setenv(fused.MODE_ENV, "on")
        monkeypatch.setenv(fused.MIN_ELEMENTS_ENV, "64")
    live = LiveMerge([str(world["base"]), str(world["vlm"]), str(world["ft_a"])], str(world["vlm"]), load_processor=False)
    recipe = _recipe(world, method, (0.5, 0.3), weights=(0.7, 0.45))
    patched = {t.name: _patchable_host_rows(live.plan(recipe), t) for t in live.plan(recipe).tensors}
    vocabulary = {name: rows for name, rows in patched.items() if rows}
    assert vocabulary  # embed and head keep the image token's row
    before = dict(fused.calls)
    live.apply(recipe)
    kernel = "linear" if method == "linear" else "merge"
    assert (fused.calls[kernel] > before[kernel]) == fused_on  # linear: one kernel into each float32 parameter
    out = run_merge(recipe, tmp_path / "static", progress=False).out_dir
    state, static = live.model.state_dict(), load_tensors(out)
    host = load_tensors(world["vlm"])
    for name, rows in vocabulary.items():
        assert torch.equal(state[name], static[name]), name
        assert torch.equal(state[name][list(rows)], host[name][list(rows)].to(state[name].dtype)), name
        assert not torch.equal(state[name], host[name].to(state[name].dtype)), name  # the other rows merged


def test_live_slerp_keeps_the_angle_inputs_and_writes_the_static_merge(world, tmp_path, monkeypatch):
    """SLERP's norms and dot product are computed once per tensor (only t changes between
    candidates); every candidate is still the static merge's bits, vocabulary rows included."""
    from vlmmerge.methods import interpolation

    live = LiveMerge([str(world["base"]), str(world["vlm"])], str(world["vlm"]), load_processor=False)
    computed = []
    real = interpolation._angle_inputs
    monkeypatch.setattr(interpolation, "_angle_inputs", lambda a, b: computed.append(a.numel()) or real(a, b))
    for number, t in enumerate((0.3, 0.65, 0.3)):
        recipe = load_recipe({"merge_method": "slerp", "base_model": str(world["base"]), "dtype": "float32",
                              "models": [{"model": str(world["vlm"])}], "parameters": {"t": t}})
        live.apply(recipe)
        if number == 0:
            first = len(computed)
            assert first > 0
        out = run_merge(recipe, tmp_path / f"slerp-{number}", progress=False).out_dir
        state = live.model.state_dict()
        for name, value in load_tensors(out).items():
            assert torch.equal(state[name], value), (number, name)
    static_calls = first  # each static merge computes them afresh, once per tensor
    assert len(computed) == first + 3 * static_calls  # the live candidates after the first: none


def test_linear_slices_are_merged_into_the_given_memory(world, monkeypatch):
    """Given the parameter's memory, each of linear's slices is merged into its own place there
    (no copy per slice); the slices are still the whole tensor's merge."""
    from vlmmerge.engine import compute

    live = LiveMerge([str(world["base"]), str(world["vlm"]), str(world["ft_a"])], str(world["vlm"]), load_processor=False)
    plan = live.plan(_recipe(world, "linear", (None, None), weights=(0.7, 0.45)))
    tensor = max((t for t in plan.tensors if compute.merges_in_slices(plan, t, "cpu")), key=lambda t: t.numel)
    into, offset, step = torch.full((tensor.numel,), float("nan")), 0, 96
    monkeypatch.setattr(compute, "SLICE_ELEMENTS", step)
    pieces = list(compute.merged_slices(plan, tensor, "cpu", into, {}))
    assert len(pieces) == -(-tensor.numel // step) > 1
    for piece in pieces:
        assert piece.data_ptr() == into[offset:].data_ptr()
        offset += piece.numel()
    assert torch.equal(into.view(tensor.shape), compute.merge_tensor(plan, tensor))


def test_linear_of_half_inputs_into_a_reused_output_is_the_float32_formula():
    from vlmmerge.methods import fused
    from vlmmerge.methods.interpolation import linear

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1000, generator=generator).to(torch.bfloat16) for _ in range(2))
    weights = torch.tensor([0.7, 0.45])
    expected = a.to(torch.float32).mul_(weights[0]).add_(b, alpha=float(weights[1])).div_(weights.sum())
    out = torch.empty(1000)
    with fused.reusing({}, out):
        merged = linear([a, b], [0.7, 0.45])
    assert merged.data_ptr() == out.data_ptr() and torch.equal(merged, expected)
    assert torch.equal(linear([a, b], [0.7, 0.45]), expected)


def test_live_parameters_leave_the_checkpoint_file_and_tied_ones_stay_tied(tmp_path):
    """The live model holds its parameters in memory of its own, not in the host file's mapping
    (whose pages are slower to overwrite): rewriting the file under a search changes nothing in
    the model; a tied head is still the embedding."""
    import struct

    from vlmmerge.testing.tiny import build_tiny_model, save_model

    model = build_tiny_model("llama", seed=3, num_hidden_layers=2, tie_word_embeddings=True)
    host = save_model(model, tmp_path / "host")
    live = LiveMerge([str(host)], str(host), load_processor=False)
    before = {name: p.detach().clone() for name, p in live.model.named_parameters()}
    for file in host.glob("*.safetensors"):
        size = file.stat().st_size
        with open(file, "r+b") as handle:
            start = 8 + struct.unpack("<Q", handle.read(8))[0]
            handle.seek(start)
            handle.write(bytes(size - start))
    for name, param in live.model.named_parameters():
        assert torch.equal(param, before[name]), name
    assert live.model.get_output_embeddings().weight.data_ptr() == live.model.get_input_embeddings().weight.data_ptr()


def test_merged_vocabulary_rows_go_straight_into_the_parameter(tmp_path, monkeypatch):
    """A TIES candidate's embedding / head rows (the host's extra rows, the image token's among
    them, after them) are written by the merge into the parameter's first rows; the static bits."""
    from vlmmerge.engine import compute
    from vlmmerge.methods import fused

    monkeypatch.setenv(fused.MODE_ENV, "on")  # the compiled kernels write into the given buffer
    monkeypatch.setenv(fused.MIN_ELEMENTS_ENV, "64")
    world = make_world(tmp_path / "world", lm_vocab=256)  # the VLM's vocabulary: 320 rows
    live = LiveMerge([str(world["base"]), str(world["vlm"]), str(world["ft_a"])], str(world["vlm"]), load_processor=False)
    recipe = _recipe(world, "ties", (0.5, 0.3))
    leading = {t.name: t.leading_method_rows() for t in live.plan(recipe).tensors if t.merged_rows is not None}
    assert set(leading.values()) == {256}
    in_place = []
    real = compute.place_rows
    monkeypatch.setattr(compute, "place_rows", lambda full, merged, *rest: in_place.append(
        (full.data_ptr() == merged.data_ptr(), full.data_ptr())) or real(full, merged, *rest))
    live.apply(recipe)
    params = {name: live._params[name].data_ptr() for name in leading}
    assert sorted(ptr for same, ptr in in_place if same) == sorted(params.values())
    static = load_tensors(run_merge(recipe, tmp_path / "static", progress=False).out_dir)
    state = live.model.state_dict()
    assert all(torch.equal(state[name], value) for name, value in static.items())
