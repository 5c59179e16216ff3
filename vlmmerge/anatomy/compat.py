"""Whether the language sides of two models line up tensor by tensor, and how their vocabularies relate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from vlmmerge.anatomy.anatomy import Anatomy
from vlmmerge.anatomy.vocab import differing_tokens, host_only_tokens, load_vocab
from vlmmerge.errors import IncompatibleModelsError

__all__ = ["Compatibility", "ShapeMismatch", "VocabularyReport", "compare", "kept_host_rows", "load_vocab"]


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
    # Shared-row ids that only this model's tokenizer defines (id, token): kept from it when it hosts.
    host_only_tokens: list[tuple[int, str]] = field(default_factory=list)
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
            and not self.only_here
            and not self.only_there
            and not self.vocabulary.differing_tokens
            and self.vocabulary.other_extra_rows == 0
        )

    def problems(self, vocabulary: bool = True) -> list[str]:
        """What stops the merge; without `vocabulary`, row counts and tokens are not compared (the
        merge re-indexes the vocabulary, `vlmmerge.vocab`)."""
        out = [
            f"tensor {m.lm_name}: shape {m.shape} in {self.model} but {m.other_shape} in {self.other}"
            for m in self.shape_mismatches
        ]
        if self.only_here:
            out.append(
                f"{self.model} has language tensors that {self.other} lacks (every merged tensor is read "
                f"from every model): {self.only_here[:5]}"
            )
        if self.only_there:
            out.append(f"{self.other} has language tensors that {self.model} lacks: {self.only_there[:5]}")
        vocab = self.vocabulary
        if not vocabulary:
            return out
        if vocab.other_extra_rows:
            out.append(
                f"{self.other} has {vocab.other_rows} vocabulary rows, more than {self.model}'s {vocab.rows}: "
                "its extra rows have nowhere to go"
            )
        if vocab.differing_tokens:
            sample = ", ".join(f"id {i} is {a!r} here but {b!r} there" for i, a, b in vocab.differing_tokens[:5])
            out.append(
                f"vocabularies differ on shared rows: {len(vocab.differing_tokens)} ids map to different "
                f"tokens in {self.model} (here) and {self.other} (there); {sample}"
            )
        return out

    def notes(self) -> list[str]:
        """What a merge hosted by `model` does with `other` that is not a problem but is worth saying."""
        out = []
        if self.tied and not self.other_tied:
            out.append(
                f"{self.model} ties lm_head to its input embeddings, so {self.other}'s own lm_head is not "
                "used: the output's head is the merged embedding matrix"
            )
        elif self.other_tied and not self.tied:
            out.append(
                f"{self.other} ties lm_head to its input embeddings: its embedding matrix stands in for "
                f"its lm_head in the merge of {self.model}'s lm_head"
            )
        vocab = self.vocabulary
        if vocab.host_only_tokens:
            sample = ", ".join(f"{i} {token!r}" for i, token in vocab.host_only_tokens[:8])
            more = f" and {len(vocab.host_only_tokens) - 8} more" if len(vocab.host_only_tokens) > 8 else ""
            out.append(
                f"{len(vocab.host_only_tokens)} token ids that {self.other}'s tokenizer does not define keep "
                f"{self.model}'s rows (ids {sample}{more})"
            )
        if not vocab.tokenizers_compared:
            out.append(
                f"tokenizers of {self.model} and {self.other} not compared (no tokenizer.json): only the "
                "config's special-token rows are kept from the host"
            )
        return out

    def raise_if_incompatible(self, vocabulary: bool = True) -> None:
        problems = self.problems(vocabulary)
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
    if check_tokens and host.vocab is not None and other.vocab is not None:
        vocab.tokenizers_compared = True
        vocab.differing_tokens = differing_tokens(host.vocab, other.vocab, vocab.shared_rows)
        vocab.host_only_tokens = host_only_tokens(host.vocab, other.vocab, vocab.shared_rows)
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


def kept_host_rows(host: Anatomy, reports: Sequence[Compatibility], rows: int) -> tuple[int, ...]:
    """Vocabulary rows below `rows` that a merge hosted by `host` keeps from it instead of merging.

    The ids the host's config names (image / video / vision start-end / boi-eoi tokens), and every
    id the host's tokenizer defines but some other model's tokenizer does not (from `reports`,
    `compare(host, other)` for each other model).
    """
    kept = {i for i in host.special_token_ids.values() if i < rows}
    for report in reports:
        kept.update(i for i, _ in report.vocabulary.host_only_tokens if i < rows)
    return tuple(sorted(kept))
