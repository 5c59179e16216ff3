"""The canonical miniature world, shipped with the package: same weights on every machine.

The shipped folder is a normal built world (`zoo.json` + one folder per model) plus
`checksums.json` (sha256 of every file). `shipped_world()` verifies the checksums once per process
and returns its paths; `compare_with_shipped(paths)` tells whether a rebuild reproduced the shipped
weights bit for bit (the weights files only: configs record library versions).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

SHIPPED_ROOT = Path(__file__).resolve().parent / "worlds" / "demo-s0-t1"
CHECKSUMS = "checksums.json"
WEIGHT_SUFFIXES = (".safetensors",)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative POSIX paths), the checksum file itself excluded."""
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != CHECKSUMS}


def write_checksums(root: Path) -> Path:
    out = root / CHECKSUMS
    out.write_text(json.dumps(folder_checksums(root), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out


def verify_checksums(root: Path) -> None:
    """Raise ZooError naming the first file that is missing, extra or differs from `checksums.json`."""
    from vlmmerge.zoo.build import ZooError

    listed_file = root / CHECKSUMS
    if not listed_file.is_file():
        raise ZooError(f"{listed_file}: missing; the shipped world cannot be verified")
    listed = json.loads(listed_file.read_text(encoding="utf-8"))
    for rel, expected in listed.items():
        path = root / rel
        if not path.is_file():
            raise ZooError(f"{path}: listed in {CHECKSUMS} but missing")
        if sha256_file(path) != expected:
            raise ZooError(f"{path}: sha256 differs from {CHECKSUMS} (the shipped world was modified)")


@lru_cache(maxsize=1)
def _verified(root: Path):
    from vlmmerge.zoo.build import ZooError, ZooPaths

    paths = ZooPaths(root)
    if not paths.is_complete():
        raise ZooError(f"{root}: the shipped world is incomplete (reinstall vlmmerge, or run "
                       "`vlmmerge zoo build` and use --world demo-s0-t1)")
    verify_checksums(root)
    return paths


def shipped_world():
    """The shipped world's folders, checksums verified (once per process)."""
    return _verified(SHIPPED_ROOT)


def compare_with_shipped(root: Path, shipped_root: Path = SHIPPED_ROOT) -> dict[str, bool]:
    """For each weights file of the shipped world: does `root` hold the identical file?"""
    listed = json.loads((shipped_root / CHECKSUMS).read_text(encoding="utf-8"))
    result = {}
    for rel, expected in listed.items():
        if rel.endswith(WEIGHT_SUFFIXES):
            path = root / rel
            result[rel] = path.is_file() and sha256_file(path) == expected
    return result


def ship(source: Path, target: Path = SHIPPED_ROOT) -> Path:
    """Maintainers: make the built world at `source` the shipped one (copied, then checksummed)."""
    import shutil

    from vlmmerge.checkpoint.output import atomic_output_dir
    from vlmmerge.zoo.build import ZooError, ZooPaths

    if not ZooPaths(source).is_complete():
        raise ZooError(f"{source}: not a built miniature world")
    with atomic_output_dir(target, overwrite=True) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        staging.chmod(0o755)  # copytree copies the source folder's mode, which may be a private 0700
        write_checksums(staging)
    _verified.cache_clear()
    return target


if __name__ == "__main__":
    import sys

    print(ship(Path(sys.argv[1])))
