"""What `vlmmerge inspect` reports, as plain data (the command only renders it)."""

from __future__ import annotations

from typing import Any

from vlmmerge.anatomy import Anatomy, compare
from vlmmerge.checkpoint import Checkpoint


def describe(anatomy: Anatomy) -> dict[str, Any]:
    checkpoint = anatomy.checkpoint
    family = anatomy.family
    counts = anatomy.parameter_counts()
    return {
        "model": checkpoint.source,
        "path": str(checkpoint.path),
        "architecture": checkpoint.architecture,
        "family": family.name,
        "is_vlm": anatomy.is_vlm,
        "dtype": str(checkpoint.dtype).removeprefix("torch."),
        "weights_format": checkpoint.files.fmt,
        "num_layers": anatomy.num_layers,
        "vocab_rows": anatomy.vocab_rows,
        "tied_embeddings": anatomy.tied,
        "special_token_ids": anatomy.special_token_ids,
        "parameters": {"total": checkpoint.num_parameters, **counts},
        "prefixes": {
            "vision": list(family.vision),
            "projector": list(family.projector),
            "language": family.language,
            "head": family.head,
        },
        "language_mapping": {
            "runtime_prefix": family.language,
            "standalone_prefix": "model.",
            "tensors": len(anatomy.language_names),
            "example": _mapping_example(anatomy),
        },
        "ignored_checkpoint_keys": checkpoint.ignored_keys,
    }


def _mapping_example(anatomy: Anatomy) -> dict[str, str]:
    names = [n for n in anatomy.language_names if anatomy.layer_index(n) == 0][:1] + [anatomy.embed_name]
    return {n: anatomy.to_lm_name(n) for n in names}


def inspect_models(model: str, against: list[str] | None = None) -> dict[str, Any]:
    anatomy = Anatomy(Checkpoint(model))
    report = describe(anatomy)
    report["against"] = []
    for other_ref in against or []:
        other = Anatomy(Checkpoint(other_ref))
        compat = compare(anatomy, other)
        entry = compat.to_dict()
        entry["ok"] = compat.ok
        entry["problems"] = compat.problems()
        entry["notes"] = compat.notes()
        entry["shared"] = len(compat.shared)
        entry["other_architecture"] = other.checkpoint.architecture
        report["against"].append(entry)
    return report
