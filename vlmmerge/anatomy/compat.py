"""Whether the language sides of two models line up tensor by tensor, and how their vocabularies relate."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlmmerge.anatomy.anatomy import Anatomy
from vlmmerge.errors import IncompatibleModelsError


@dataclass
class ShapeMismatch:
    lm_name: str
    shape: tuple[int, ...]
    other_shape: tuple[int, ...]


@dataclass
class VocabularyReport:
    rows: int
    other_rows: int
    shared_rows: int
    extra_rows: int  # rows only this model has (kept from it when it hosts the merge)
    other_extra_rows: int
    differing_tokens: list[tuple[int, str, str]] = field(default_factory=list)  # id, token here, token there
    tokenizers_compared: bool = False


@dataclass
class Compatibility:
    model: str
    other: str
    tied: bool
    other_tied: bool
    shared: list[str]
    only_here: list[str]
    only_there: list[str]
    shape_mismatches: list[ShapeMismatch]
    vocabulary: VocabularyReport

    @property
    def ok(self) -> bool:
        return (
            not self.shape_mismatches
            and not self.only_there
            and not self.vocabulary.differing_tokens
            and self.vocabulary.other_extra_rows == 0
        )

    def problems(self) -> list[str]:
        out = [
            f"tensor {m.lm_name}: shape {m.shape} in {self.model} but {m.other_shape} in {self.other}"
            for m in self.shape_mismatches
        ]
        if self.only_there:
            out.append(f"{self.other} has language tensors that {self.model} lacks: {self.only_there[:5]}")
        vocab = self.vocabulary
        if vocab.other_extra_rows:
            out.append(
                f"{self.other} has {vocab.other_rows} vocabulary rows, more than {self.model}'s {vocab.rows}: "
                "its extra rows have nowhere to go"
            )
        if vocab.differing_tokens:
            sample = ", ".join(f"id {i}: {a!r} vs {b!r}" for i, a, b in vocab.differing_tokens[:5])
            out.append(f"vocabularies differ on shared rows ({len(vocab.differing_tokens)} ids; {sample})")
        return out

    def raise_if_incompatible(self) -> None:
        problems = self.problems()
        if problems:
            raise IncompatibleModelsError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


# Rows whose shape legitimately differs by vocabulary size only.
def _is_vocab_tensor(anatomy: Anatomy, runtime_name: str) -> bool:
    return runtime_name in (anatomy.embed_name, anatomy.head_name)


def compare(host: Anatomy, other: Anatomy, check_tokens: bool = True) -> Compatibility:
    """Compare `other`'s language side against `host`'s, by standalone-LM name and shape."""
    here, there = host.lm_view, other.lm_view
    shared, mismatches = [], []
    for lm_name in sorted(set(here) & set(there)):
        shape = host.checkpoint.info(here[lm_name]).shape
        other_shape = other.checkpoint.info(there[lm_name]).shape
        if shape != other_shape:
            vocab_only = _is_vocab_tensor(host, here[lm_name]) and shape[1:] == other_shape[1:]
            if not vocab_only:
                mismatches.append(ShapeMismatch(lm_name, shape, other_shape))
                continue
        shared.append(lm_name)
    # A tied model lacks lm_head on disk; that is tying, not a missing tensor.
    only_here = sorted(n for n in set(here) - set(there) if not (other.tied and n == host.to_lm_name(host.head_name)))
    only_there = sorted(n for n in set(there) - set(here) if not (host.tied and n == other.to_lm_name(other.head_name)))
    rows, other_rows = host.vocab_rows, other.vocab_rows
    vocab = VocabularyReport(
        rows=rows,
        other_rows=other_rows,
        shared_rows=min(rows, other_rows),
        extra_rows=max(0, rows - other_rows),
        other_extra_rows=max(0, other_rows - rows),
    )
    if check_tokens:
        a, b = load_vocab(host.checkpoint.path), load_vocab(other.checkpoint.path)
        if a is not None and b is not None:
            vocab.tokenizers_compared = True
            vocab.differing_tokens = [
                (i, a[i], b[i]) for i in range(vocab.shared_rows) if i in a and i in b and a[i] != b[i]
            ]
    return Compatibility(
        model=str(host.checkpoint.source),
        other=str(other.checkpoint.source),
        tied=host.tied,
        other_tied=other.tied,
        shared=shared,
        only_here=only_here,
        only_there=only_there,
        shape_mismatches=mismatches,
        vocabulary=vocab,
    )


def load_vocab(folder: Path) -> dict[int, str] | None:
    """id -> token string from a folder's tokenizer.json (fast tokenizers), or None if there is none."""
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    vocab = (doc.get("model") or {}).get("vocab")
    table: dict[int, str] = {}
    if isinstance(vocab, dict):
        table = {int(i): tok for tok, i in vocab.items()}
    elif isinstance(vocab, list):  # unigram: [token, score] pairs
        table = {i: entry[0] for i, entry in enumerate(vocab)}
    for added in doc.get("added_tokens") or []:
        table[int(added["id"])] = added["content"]
    return table or None
