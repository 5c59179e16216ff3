"""The fused task-vector kernels (`vlmmerge/methods/fused.py`) give the eager code's bits.

Each method runs with VLMMERGE_FUSED=off and =on (threshold lowered so small tensors take the
fused path) on inputs with zeros, exact ties of magnitude, -0.0 and half-precision storage, with
and without kept task vectors / kept uniforms (what live candidates use); the results must be
equal bit for bit (compared as integers, so -0.0 != +0.0 and NaN payloads count).
"""

from __future__ import annotations

import pytest
import torch

from vlmmerge.methods import fused, task_vectors
from vlmmerge.methods.kept import KeptTaskVector, keeping
from vlmmerge.methods.masks import DrawnUniforms, mask_generators

SHAPE = (48, 40)


def _inputs(dtype: torch.dtype, models: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=g) * 0.02
    tunes = []
    for i in range(models):
        delta = torch.randn(SHAPE, generator=g) * 0.002
        delta = (delta * 2000).round() / 2000  # few distinct magnitudes: ties at every cut
        delta[i::7] = 0.0
        delta[0, :5] = -0.0
        tunes.append(base + delta)
    base[1, :3] = -0.0
    return base.to(dtype), [t.to(dtype) for t in tunes]


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.int32 if tensor.element_size() == 4 else torch.int16)


def _run(monkeypatch, setting: str, fn, base, tunes, live: bool, random: bool):
    monkeypatch.setenv(fused.MODE_ENV, setting)
    monkeypatch.setenv(fused.MIN_ELEMENTS_ENV, "1024")
    kwargs = {}
    if random:
        seeds = mask_generators(7, "t", range(len(tunes)))
        kwargs["generator"] = [DrawnUniforms(s.initial_seed()) for s in seeds] if live else seeds
    if not live:
        return fn(base, tunes, **kwargs)
    entries = [KeptTaskVector() for _ in tunes]
    with keeping(entries):
        fn(base, tunes, **kwargs)  # first candidate fills the kept values
        if random:
            kwargs["generator"] = [u.rewind() for u in kwargs["generator"]]
        return fn(base, tunes, **kwargs)


W = [0.7, 0.45]
CASES = {
    "task_arithmetic": (lambda b, f: task_vectors.task_arithmetic(b, f, W, lambda_=0.8), False),
    "task_arithmetic_norm": (lambda b, f: task_vectors.task_arithmetic(b, f, W, normalize=True), False),
    "ties": (lambda b, f: task_vectors.ties(b, f, W, [0.5, 0.3], lambda_=1.1), False),
    "ties_density_1": (lambda b, f: task_vectors.ties(b, f, W, [1.0, 0.35]), False),
    "dare_ties": (lambda b, f, generator: task_vectors.dare_ties(b, f, W, [0.6, 0.3], generator=generator), True),
    "dare_linear_probability": (lambda b, f, generator: task_vectors.dare_linear(
        b, f, W, [0.6, 0.3], generator=generator, rescale_norm="probability"), True),
    "dare_linear_linf": (lambda b, f, generator: task_vectors.dare_linear(
        b, f, W, [0.6, 0.3], generator=generator, rescale_norm="linf"), True),
    "breadcrumbs_ties": (lambda b, f: task_vectors.breadcrumbs_ties(b, f, W, [0.6, 0.5], gammas=[0.05, 0.02]), False),
    "della": (lambda b, f, generator: task_vectors.della(b, f, W, [0.5, 0.4], epsilons=[0.1, 0.2], generator=generator), True),
    "della_linear_probability": (lambda b, f, generator: task_vectors.della_linear(
        b, f, W, [0.5, 0.4], generator=generator, rescale_norm="probability"), True),
}


# each case compiles a kernel variant or two (~1-3 s cold): variants that differ only in a flag run once
ONLY_KEPT = {"task_arithmetic_norm", "ties_density_1", "dare_linear_linf"}
PARAMS = [pytest.param(name, live, id=f"{name}-{'kept' if live else 'static'}")
          for name in sorted(CASES) for live in (False, True) if live or name not in ONLY_KEPT]


@pytest.mark.parametrize("name,live", PARAMS)
def test_fused_equals_eager_bitwise(monkeypatch, name, live):
    fn, random = CASES[name]
    base, tunes = _inputs(torch.bfloat16)
    before = fused.calls["merge"]
    expected = _run(monkeypatch, "off", fn, base, tunes, False, random)
    assert fused.calls["merge"] == before
    got = _run(monkeypatch, "on", fn, base, tunes, live, random)
    assert fused.calls["merge"] > before
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(_bits(got), _bits(expected)), f"{name}: {(got != expected).sum()} elements differ"


@pytest.mark.parametrize("name", ["dare_ties", "della", "dare_linear_linf"])
def test_kept_inputs_stage_only_the_kept_norm_and_rescale_in_the_kernel(monkeypatch, name):
    """With a kept task vector and kept uniforms, an L1 / Linf rescale writes only |kept| (out=None)
    and the merge kernel applies the factor (`<kind>_scaled`); the eager bits all the same."""
    fn, _ = CASES[name]
    base, tunes = _inputs(torch.float32, seed=3)
    expected = _run(monkeypatch, "off", fn, base, tunes, False, True)
    staged, kinds = [], []
    real_stage, real_merge = fused.stage, fused.merge
    monkeypatch.setattr(fused, "stage", lambda delta, b, out, m=None: staged.append(out is None) or real_stage(delta, b, out, m))
    monkeypatch.setattr(fused, "merge", lambda b, deltas, *a: kinds.append([d.kind for d in deltas]) or real_merge(b, deltas, *a))
    got = _run(monkeypatch, "on", fn, base, tunes, True, True)
    assert torch.equal(_bits(got), _bits(expected)), f"{name}: {(got != expected).sum()} elements differ"
    assert staged and all(staged)  # no masked delta was written: the norm's magnitudes only
    assert kinds[-1] == [name.split("_")[0] + "_scaled"] * 2


@pytest.mark.parametrize("name", ["ties", "dare_ties", "dare_linear_linf", "della", "breadcrumbs_ties"])
def test_static_deltas_are_written_with_their_magnitudes(monkeypatch, name):
    """A static merge whose sparsifier reads |delta| (a cut, ranks, an L1 / Linf rescale) writes the
    delta and |delta| in one pass and the kept entries with |kept| in one pass: no eager abs of a
    delta and no eager norm is left, and the bits are the eager code's."""
    from vlmmerge.methods import fused_deltas

    fn, random = CASES[name]
    base, tunes = _inputs(torch.bfloat16, seed=5)
    expected = _run(monkeypatch, "off", fn, base, tunes, False, random)
    staged = []
    real_magnitudes = fused_deltas._magnitudes
    monkeypatch.setattr(fused_deltas, "_magnitudes", lambda d, s, m: staged.append(m is not None) or real_magnitudes(d, s, m))

    def eager_norm(*args):
        raise AssertionError("an eager norm of a delta on the static fused path")

    monkeypatch.setattr(fused_deltas, "_before_norm", eager_norm)
    monkeypatch.setattr(fused_deltas, "_norm_of", eager_norm)
    got = _run(monkeypatch, "on", fn, base, tunes, False, random)
    assert torch.equal(_bits(got), _bits(expected)), f"{name}: {(got != expected).sum()} elements differ"
    assert all(staged) and len(staged) == (0 if name.startswith("dare") else 2)


def test_fused_ties_float32_and_three_models(monkeypatch):
    base, tunes = _inputs(torch.float32, models=3, seed=3)
    tunes[1] = tunes[1].to(torch.float16)  # mixed storage dtypes, as a recipe over differently stored models
    fn = lambda b, f: task_vectors.ties(b, f, [0.4, 1.3, 0.9], [0.5, 0.2, 0.7])  # noqa: E731
    expected = _run(monkeypatch, "off", fn, base, tunes, False, False)
    got = _run(monkeypatch, "on", fn, base, tunes, False, False)
    assert torch.equal(_bits(got), _bits(expected))


@pytest.mark.parametrize("name", ["ties", "breadcrumbs_ties"])
def test_fused_cuts_of_large_tied_tensors_equal_eager_bitwise(monkeypatch, name):
    """Tensors large enough for the bracketed selection, with magnitudes tied at every cut: the
    fused cut keeps the eager code's entries."""
    g = torch.Generator().manual_seed(8)
    base = torch.randn(400_000, generator=g) * 0.02
    tunes = [base + torch.randint(-9, 10, (400_000,), generator=g).float() * 1e-3 for _ in range(2)]
    if name == "ties":
        fn = lambda b, f: task_vectors.ties(b, f, [1.0, 0.6], [0.37, 0.5])  # noqa: E731
    else:
        fn = lambda b, f: task_vectors.breadcrumbs_ties(b, f, [1.0, 0.6], [0.37, 0.5], gammas=[0.05, 0.02])  # noqa: E731
    expected = _run(monkeypatch, "off", fn, base, tunes, False, False)
    got = _run(monkeypatch, "on", fn, base, tunes, False, False)
    assert torch.equal(_bits(got), _bits(expected))


def _into_target_and_not(monkeypatch, merge, numel: int):
    """`merge()` eagerly, then fused without a target (stays eager) and into a target (one kernel)."""
    monkeypatch.setenv(fused.MODE_ENV, "off")
    expected = merge()
    monkeypatch.setenv(fused.MODE_ENV, "on")
    monkeypatch.setenv(fused.MIN_ELEMENTS_ENV, "64")
    before = fused.calls["linear"]
    untargeted = merge()
    assert fused.calls["linear"] == before  # no target (a static merge's slice): the eager code
    target = torch.full((numel,), float("nan"))
    with fused.reusing({}, target):
        got = merge()
    assert fused.calls["linear"] > before and got.data_ptr() == target.data_ptr()
    return expected, untargeted, got


@pytest.mark.parametrize("numel", [96, 1003])  # 1003: a tail shorter than the SIMD width
@pytest.mark.parametrize("normalize", [True, False])
def test_fused_linear_into_a_parameter_equals_eager_bitwise(monkeypatch, numel, normalize):
    """Written into a target (a live parameter), linear is one fused kernel whose fused multiply-add
    rounds as the eager `add_(x, alpha=w)` does."""
    from vlmmerge.methods.interpolation import linear

    g = torch.Generator().manual_seed(numel)
    tensors = [torch.randn(numel, generator=g) * 0.02, (torch.randn(numel, generator=g) * 0.02).to(torch.bfloat16),
               torch.randn(numel, generator=g) * 0.02]
    tensors[0][:4] = -0.0
    expected, untargeted, got = _into_target_and_not(monkeypatch, lambda: linear(tensors, [0.7, 0.45, -0.3], normalize), numel)
    assert torch.equal(_bits(untargeted), _bits(expected))
    assert torch.equal(_bits(got), _bits(expected)), f"{(got != expected).sum()} elements differ"


@pytest.mark.parametrize("t", [0.3, 0.9999])  # 0.9999 with colinear inputs: the linear fallback's coefficients
def test_fused_slerp_combination_into_a_parameter_equals_eager_bitwise(monkeypatch, t):
    from vlmmerge.methods.interpolation import slerp

    g = torch.Generator().manual_seed(3)
    a = torch.randn(1003, generator=g)
    b = torch.randn(1003, generator=g) if t < 0.5 else a * 1.5 + 1e-4
    expected, untargeted, got = _into_target_and_not(monkeypatch, lambda: slerp(a, b, t), 1003)
    assert torch.equal(_bits(untargeted), _bits(expected))
    assert torch.equal(_bits(got), _bits(expected)), f"{(got != expected).sum()} elements differ"


def test_fused_off_below_threshold_and_bad_setting(monkeypatch):
    base, tunes = _inputs(torch.float32)
    monkeypatch.setenv(fused.MODE_ENV, "on")
    monkeypatch.setenv(fused.MIN_ELEMENTS_ENV, str(base.numel() + 1))
    assert not fused.wanted(base, *tunes)
    monkeypatch.setenv(fused.MODE_ENV, "sometimes")
    with pytest.raises(Exception, match="VLMMERGE_FUSED"):
        fused.wanted(base)


def test_failed_compile_falls_back_to_the_same_bits_in_auto_mode(monkeypatch):
    base, tunes = _inputs(torch.bfloat16, seed=5)
    fn = lambda b, f: task_vectors.ties(b, f, W, [0.4, 0.6])  # noqa: E731
    expected = _run(monkeypatch, "off", fn, base, tunes, False, False)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_broken", [])
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(fused, "_compiler_found", lambda: True)
    with pytest.raises(RuntimeError, match="no compiler"):
        _run(monkeypatch, "on", fn, base, tunes, False, False)
    got = _run(monkeypatch, "auto", fn, base, tunes, False, False)  # the kernels' own code, run eagerly, once
    assert fused._broken
    assert torch.equal(_bits(got), _bits(expected))
    assert not fused.wanted(base, *tunes)  # from now on the eager path


def test_failed_compile_of_live_linear_falls_back_to_the_same_bits(monkeypatch):
    """The linear kernel's own code run eagerly (a failed compile in auto mode) keeps the single
    rounding of the eager `add_(x, alpha=w)`."""
    from vlmmerge.methods.interpolation import linear

    g = torch.Generator().manual_seed(11)
    tensors = [torch.randn(1003, generator=g), torch.randn(1003, generator=g).to(torch.bfloat16)]
    monkeypatch.setenv(fused.MODE_ENV, "off")
    expected = linear(tensors, [0.7, 0.45])

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_broken", [])
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(fused, "_compiler_found", lambda: True)
    monkeypatch.setenv(fused.MODE_ENV, "auto")
    monkeypatch.setenv(fused.MIN_ELEMENTS_ENV, "64")
    target = torch.full((1003,), float("nan"))
    before = fused.calls["linear"]
    with fused.reusing({}, target):
        got = linear(tensors, [0.7, 0.45])
    assert fused.calls["linear"] > before and fused._broken
    assert torch.equal(_bits(got), _bits(expected))


def test_fused_in_worker_threads_gives_the_same_bits(monkeypatch):
    """The engine merges tensors in a thread pool: concurrent first calls, per-thread dynamo config."""
    from concurrent.futures import ThreadPoolExecutor

    base, tunes = _inputs(torch.bfloat16, seed=9)
    fn = lambda: task_vectors.ties(base, tunes, W, [0.45, 0.55])  # noqa: E731
    monkeypatch.setenv(fused.MIN_ELEMENTS_ENV, "1024")
    monkeypatch.setenv(fused.MODE_ENV, "off")
    expected = fn()
    monkeypatch.setenv(fused.MODE_ENV, "on")
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: fn(), range(6)))
    assert all(torch.equal(_bits(r), _bits(expected)) for r in results)
