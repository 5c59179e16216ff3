"""Which components of a merge's models merge (recipe key `components:`) and which the host lends.

`language` is the language side (embeddings, decoder layers, final norm, head); `vision` the
vision encoder; `projector` the vision-to-language projector. By default every component that
all models of the merge share merges: VLM + LLM merges the language side only (the host VLM lends
its vision encoder and projector), two VLMs of one family merge all three, as mergekit does.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlmmerge.anatomy.anatomy import LANGUAGE_SIDE, Anatomy
from vlmmerge.errors import IncompatibleModelsError, RecipeError

MERGEABLE = ("language", "vision", "projector")
VISUAL = ("vision", "projector")


def model_components(anatomy: Anatomy) -> tuple[str, ...]:
    """The mergeable components a model has."""
    have = ["language"]
    have += [c for c in VISUAL if anatomy.components[c]]
    return tuple(have)


def choose_components(requested: Sequence[str] | None, host: tuple[str, Anatomy],
                      models: Sequence[tuple[str, Anatomy]]) -> tuple[str, ...]:
    """The components that merge, in MERGEABLE order. `models` are (ref, anatomy) of every model the
    method reads; `host` the model whose layout the output takes. Vision and projector merge only
    between VLMs of one family (the host's); a requested component some model lacks is an error."""
    everyone = [host, *[m for m in models if m[1] is not host[1]]]
    host_family = host[1].family.name

    def lacks(component: str) -> tuple[str, str] | None:
        for ref, anatomy in everyone:
            if component not in model_components(anatomy):
                return ref, f"has no {component} component ({anatomy.checkpoint.architecture})"
            if component in VISUAL and anatomy.family.name != host_family:
                return ref, (f"is a {anatomy.family.name} model and the host is {host_family}: "
                             f"{component} merges only between VLMs of one family")
        return None

    if requested is None:
        return tuple(c for c in MERGEABLE if lacks(c) is None)
    if not requested:
        raise RecipeError(f"components: empty; list some of {', '.join(MERGEABLE)} (or leave the key out)")
    for name in requested:
        if name not in MERGEABLE:
            raise RecipeError(f"components: unknown component {name!r}; choose from {', '.join(MERGEABLE)}")
        problem = lacks(name)
        if problem is not None:
            raise RecipeError(f"components: {name!r} cannot merge: {problem[0]} {problem[1]}")
    return tuple(c for c in MERGEABLE if c in requested)


def merges(component: str, merged: Sequence[str]) -> bool:
    """Whether a tensor of `Anatomy.component` kind `component` merges when `merged` components do."""
    if component in LANGUAGE_SIDE:
        return "language" in merged
    return component in merged


def check_visual_shapes(host: tuple[str, Anatomy], models: Sequence[tuple[str, Anatomy]],
                        merged: Sequence[str]) -> None:
    """Every merged vision / projector tensor of the host exists, with its shape, in every model."""
    ref, anatomy = host
    for component in (c for c in VISUAL if c in merged):
        for name in anatomy.components[component]:
            shape = anatomy.checkpoint.info(name).shape
            for other_ref, other in models:
                if other is anatomy:
                    continue
                if name not in other.checkpoint:
                    raise IncompatibleModelsError(f"{other_ref} has no {component} tensor {name!r} (host {ref} has)")
                other_shape = other.checkpoint.info(name).shape
                if other_shape != shape:
                    raise IncompatibleModelsError(
                        f"{component} tensor {name!r}: shape {shape} in {ref} but {other_shape} in {other_ref}"
                    )


def vision_layers(anatomy: Anatomy) -> int:
    """Layers of the vision encoder, counted from its tensor names (for per-layer parameters' t)."""
    indices = {anatomy.layer_index(n) for n in anatomy.components["vision"]}
    indices.discard(None)
    return max(indices) + 1 if indices else 0
