"""The method registry: names, parameters, defaults, model counts and what every method leaves untouched."""

from __future__ import annotations

import pytest
import torch

from method_refs import close
from vlmmerge.errors import IncompatibleModelsError, RecipeError, VlmMergeError
from vlmmerge.methods import (
    METHODS,
    get_method,
    slerp,
    ties,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- registry


def registry_inputs(count=2, shape=(4, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + torch.randn(shape, generator=g) for _ in range(count)]


def test_registry_lists_required_methods():
    required = {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "breadcrumbs",
                "breadcrumbs_ties", "della", "della_linear", "model_stock"}
    assert required <= set(METHODS)
    assert {name for name, m in METHODS.items() if m.random} == {"dare_linear", "dare_ties", "della", "della_linear"}


def test_get_method_unknown_lists_known_names():
    with pytest.raises(RecipeError, match="unknown merge method 'tie'.*dare_ties.*ties"):
        get_method("tie")


def test_merge_unknown_model_parameter_names_key():
    base, ft = registry_inputs()
    with pytest.raises(RecipeError, match="'densty'"):
        get_method("ties").merge(base, ft, [{"weight": 1.0, "densty": 0.5}, {"weight": 1.0}], {})


def test_merge_unknown_global_parameter_names_key():
    base, ft = registry_inputs()
    with pytest.raises(RecipeError, match="'lamda'"):
        get_method("ties").merge(base, ft, [{"weight": 1.0}] * 2, {"lamda": 0.5})


def test_merge_missing_required_parameter_names_key():
    base, ft = registry_inputs()
    with pytest.raises(RecipeError, match="missing required parameter 'weight' for model 1"):
        get_method("task_arithmetic").merge(base, ft, [{"weight": 1.0}, {}], {})
    with pytest.raises(RecipeError, match="missing required parameter 't'"):
        get_method("slerp").merge(base, ft[:1], [{}], {})


def test_merge_bad_values_and_counts():
    base, ft = registry_inputs(3)
    with pytest.raises(RecipeError, match="'normalize'"):
        get_method("ties").merge(base, ft, [{"weight": 1.0}] * 3, {"normalize": "yes"})
    with pytest.raises(RecipeError, match="'weight'"):
        get_method("ties").merge(base, ft, [{"weight": "1"}] * 3, {})
    with pytest.raises(RecipeError, match="'density'.*>= 0"):
        get_method("dare_ties").merge(base, ft, [{"weight": 1.0, "density": -0.1}] * 3, {})
    with pytest.raises(RecipeError, match="'rescale_norm'"):
        get_method("dare_ties").merge(base, ft, [{"weight": 1.0}] * 3, {"rescale_norm": "l3"})
    with pytest.raises(RecipeError, match="exactly 2"):
        get_method("slerp").merge(base, ft, [{}] * 3, {"t": 0.5})
    with pytest.raises(RecipeError, match="at least 3"):
        get_method("model_stock").merge(base, ft[:1], [{}], {})
    with pytest.raises(RecipeError, match="needs a base_model"):
        get_method("ties").merge(None, ft, [{"weight": 1.0}] * 3, {})
    with pytest.raises(RecipeError, match="list the base among the models"):
        get_method("linear").merge(base, ft, [{"weight": 1.0}] * 3, {})
    with pytest.raises(IncompatibleModelsError, match=r"\(4, 3\).*\(3, 4\)"):
        get_method("linear").merge(None, [ft[0], ft[1].T], [{"weight": 1.0}] * 2, {})
    with pytest.raises(RecipeError, match="'probability'"):
        get_method("ties").merge(base, ft, [{"weight": 1.0, "density": 0.5}] * 3,
                                 {"rescale": True, "rescale_norm": "probability"})
    assert issubclass(RecipeError, VlmMergeError)


def test_merge_fills_defaults_and_calls_pure_functions():
    base, ft = registry_inputs(2)
    params = [{"weight": 0.6, "density": 0.5}, {"weight": 0.4}]
    got = get_method("ties").merge(base, ft, params, {"lambda": 0.8})
    assert torch.equal(got, ties(base, ft, [0.6, 0.4], [0.5, 1.0], normalize=True, lambda_=0.8))
    got = get_method("linear").merge(None, [base, *ft], [{"weight": 1.0}, {"weight": 2.0}, {"weight": 1.0}], {})
    assert close(got, (base + 2 * ft[0] + ft[1]) / 4)
    got = get_method("slerp").merge(base, ft[:1], [{}], {"t": 0.25})
    assert torch.equal(got, slerp(base, ft[0], 0.25))
    # task_arithmetic accepts mergekit's inert density/int8_mask without effect
    plain = get_method("task_arithmetic").merge(base, ft, [{"weight": 0.5}] * 2, {})
    inert = get_method("task_arithmetic").merge(base, ft, [{"weight": 0.5, "density": 0.1}] * 2, {"int8_mask": True})
    assert torch.equal(plain, inert)


def test_merge_random_methods_use_the_generator():
    base, ft = registry_inputs(2, shape=(40, 30))
    params = [{"weight": 0.5, "density": 0.4}] * 2
    for name in ["dare_linear", "dare_ties", "della", "della_linear"]:
        method = get_method(name)
        a = method.merge(base, ft, params, {}, torch.Generator().manual_seed(5))
        b = method.merge(base, ft, params, {}, torch.Generator().manual_seed(5))
        c = method.merge(base, ft, params, {}, torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c), name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_leaves_inputs_untouched_and_returns_float32(name):
    method = get_method(name)
    # the most models the method takes, at most 4, the base included
    base, ft = registry_inputs(min(4, method.max_models or 4) - 1, shape=(8, 6), seed=1)
    base16, ft16 = base.to(torch.bfloat16), [f.to(torch.bfloat16) for f in ft]
    snapshot = [x.clone() for x in [base16, *ft16]]
    one = {k: (0.5 if v is None else v) for k, v in method.model_params.items()}
    params = [dict(one) for _ in ft16]
    global_params = {"t": 0.3} if "t" in method.global_params else {}
    generator = torch.Generator().manual_seed(0) if method.random else None
    if method.takes_base:
        out = method.merge(base16, ft16, params, global_params, generator)
        reference = method.merge(base16.float(), [f.float() for f in ft16], params, global_params,
                                 torch.Generator().manual_seed(0) if method.random else None)
    else:
        params = params + [dict(one)]
        out = method.merge(None, [base16, *ft16], params, global_params, generator)
        reference = method.merge(None, [x.float() for x in [base16, *ft16]], params, global_params)
    assert out.dtype == torch.float32 and out.shape == base.shape
    assert torch.isfinite(out).all()
    assert close(out, reference, 1e-6)
    for before, after in zip(snapshot, [base16, *ft16]):
        assert torch.equal(before, after)


def test_model_counts_are_checked_in_one_place():
    # every method accepts its own bounds and refuses one model fewer / one more, with one message
    for name, method in METHODS.items():
        method.check_model_count(method.min_models)
        with pytest.raises(RecipeError, match=rf"^merge_method {name}: merges .* models \(base included\), got "
                                              rf"{method.min_models - 1}$"):
            method.check_model_count(method.min_models - 1)
        if method.max_models is not None:
            method.check_model_count(method.max_models)
            with pytest.raises(RecipeError, match=rf"got {method.max_models + 1}$"):
                method.check_model_count(method.max_models + 1)
    with pytest.raises(RecipeError, match="merges 2 to 3 models"):
        get_method("nuslerp").check_model_count(4)
