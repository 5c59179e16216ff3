"""`zoo:NAME` model references: which miniature world a recipe's `zoo:` models come from.

`zoo:vlm` names a model of the *active* world: the world shipped with the package unless
`VLMMERGE_WORLD` (set by `vlmmerge demo --world ...`) names another one:

    shipped                 the shipped canonical world (default)
    demo-s1-t2              the demo world rebuilt with seed 1 and 2 threads (cached, built on first use)
    /path/to/world          a built world folder

`zoo:SIZE/NAME` (e.g. `zoo:micro/vlm`) names a model of the cached SIZE world with seed 0.
The number of layers of a zoo model is known without building anything (`zoo_ref_num_layers`), so
dry runs work on a fresh machine.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vlmmerge.errors import RecipeError

PREFIX = "zoo:"
WORLD_ENV = "VLMMERGE_WORLD"
MODEL_NAMES = ("base", "vlm", "ja_lm", "math_lm", "clip", "tokenizer")
_SPEC = re.compile(r"^(?P<size>[a-z]+)-s(?P<seed>\d+)-t(?P<threads>\d+)$")


@dataclass(frozen=True)
class WorldSpec:
    """A miniature world: the shipped one, a (size, seed, threads) build, or a folder."""

    size: str = "demo"
    seed: int = 0
    threads: int = 1
    shipped: bool = False
    folder: Path | None = None

    @property
    def label(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        name = f"{self.size}-s{self.seed}-t{self.threads}"
        return f"shipped ({name})" if self.shipped else name


SHIPPED_SPEC = WorldSpec("demo", 0, 1, shipped=True)  # files: vlmmerge/zoo/worlds/demo-s0-t1 (shipped.py)


def parse_world(text: str) -> WorldSpec:
    """`shipped`, `SIZE-sSEED-tTHREADS` or a folder path."""
    text = text.strip()
    if text in ("", "shipped"):
        return SHIPPED_SPEC
    match = _SPEC.match(text)
    if match:
        return WorldSpec(match["size"], int(match["seed"]), int(match["threads"]))
    if "/" in text or Path(text).exists():
        return WorldSpec(folder=Path(text).expanduser())
    raise RecipeError(f"{WORLD_ENV}: {text!r} is not a world; use 'shipped', SIZE-sSEED-tTHREADS "
                      "(e.g. demo-s1-t2) or a built world folder")


def active_world() -> WorldSpec:
    return parse_world(os.environ.get(WORLD_ENV, "shipped"))


def world_paths(spec: WorldSpec, progress: bool = True):
    """The folders of a world, building (and caching) a (size, seed, threads) world on first use."""
    from vlmmerge.zoo.build import ZooError, ZooPaths, ensure_zoo

    if spec.folder is not None:
        paths = ZooPaths(spec.folder)
        if not paths.is_complete():
            raise ZooError(f"{spec.folder}: not a built miniature world (missing zoo.json or a model folder)")
        return paths
    if spec.shipped:
        from vlmmerge.zoo.shipped import shipped_world

        return shipped_world()
    return ensure_zoo(spec.size, spec.seed, progress=progress, threads=spec.threads)


def _split(ref: str) -> tuple[WorldSpec | None, str]:
    spec = ref[len(PREFIX):]
    size, _, name = spec.rpartition("/")
    if name not in MODEL_NAMES:
        raise RecipeError(f"{ref}: the miniature world has no model {name!r} (it has {', '.join(MODEL_NAMES)})")
    if size:
        from vlmmerge.zoo.build import SIZES

        if size not in SIZES:
            raise RecipeError(f"{ref}: unknown world size {size!r}; choose one of {', '.join(SIZES)}")
        return WorldSpec(size=size), name
    return None, name


def is_zoo_ref(ref: str) -> bool:
    return ref.startswith(PREFIX)


def resolve_zoo_ref(ref: str, progress: bool = True) -> str:
    """`zoo:NAME` / `zoo:SIZE/NAME` -> the model's folder (other references are returned unchanged)."""
    if not is_zoo_ref(ref):
        return ref
    spec, name = _split(ref)
    return str(getattr(world_paths(spec or active_world(), progress), name))


def zoo_ref_num_layers(ref: str) -> int:
    """Decoder layers of a zoo model, from the architecture table (nothing is built or read)."""
    from vlmmerge.zoo.models import ARCHITECTURES

    spec, _ = _split(ref)
    size = (spec or active_world()).size if (spec or active_world()).folder is None else "demo"
    return ARCHITECTURES[size].layers
