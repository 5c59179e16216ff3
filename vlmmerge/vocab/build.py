"""The output vocabulary of a merge, built as mergekit 0.1.5 builds it (`mergekit/tokenizer/build.py`).

`tokenizer_source: base` takes the base model's tokenizer (tokens at ids >= its vocab_size
stripped); a model ref takes that model's tokenizer; `union` adds to the base tokenizer every
token of the other models it lacks (regular tokens first, then added tokens with their settings).
The base is `base_model`, else the first model listed. Each model then gets a permutation:
output id -> its own id, or -1 where its tokenizer lacks the token. Reading tokenizers is this
module's only I/O; what happens to embedding rows is `vlmmerge.vocab.align`.

One difference from mergekit: when several models bring new tokens, mergekit orders them by a
Python set and a Rust hash map (the order can change between runs); here they come in recipe
order (base, then `models:`), each model's tokens by id. The rows every token gets are the same.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlmmerge.errors import RecipeError


class ModelTokenEmbedding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str = Field(pattern="^model_token$")
    model: str
    token_id: int | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.token_id is None) == (self.token is None):
            raise ValueError("give exactly one of token_id or token")
        return self


class ZeroEmbedding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str = Field(pattern="^zero$")


class TokenEmbeddingConfig(BaseModel):
    """mergekit's `tokenizer.tokens.<token>`: where that token's row comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: ModelTokenEmbedding | ZeroEmbedding | str | None = None
    force: bool = False


class TokenizerSettings(BaseModel):
    """mergekit's `tokenizer:` section (`tokenizer_source: X` is `tokenizer: {source: X}` without tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = "union"
    tokens: dict[str, TokenEmbeddingConfig] | None = None
    pad_to_multiple_of: int | None = Field(default=None, ge=1)


def tokenizer_settings(tokenizer_source: str | None, tokenizer: Mapping[str, Any] | None) -> TokenizerSettings | None:
    """The recipe's tokenizer keys as one validated settings object (None: neither key given)."""
    if tokenizer_source and tokenizer:
        raise RecipeError("tokenizer_source and tokenizer: give one of them (as mergekit requires)")
    if tokenizer is None:
        return TokenizerSettings(source=tokenizer_source) if tokenizer_source else None
    try:
        return TokenizerSettings.model_validate(dict(tokenizer))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in ("tokenizer", *first["loc"]))
        raise RecipeError(f"{where}: {first['msg']}") from None


@dataclass
class VocabModel:
    """One model's tokenizer as the vocabulary builder sees it."""

    ref: str
    path: Path
    rows: int  # the config's vocab_size: ids at or above it have no embedding row
    tokenizer: Any = None  # transformers tokenizer, loaded on demand

    def load(self) -> Any:
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(self.path, use_fast=True)
            except (OSError, ValueError, TypeError) as exc:
                raise RecipeError(f"tokenizer: cannot load the tokenizer of {self.ref} ({exc})") from None
        return self.tokenizer


@dataclass
class Vocabulary:
    """The output tokenizer and, per model ref, output id -> that model's row (-1: it lacks the token)."""

    tokenizer: Any
    permutations: dict[str, list[int]]
    original_vocabs: dict[str, dict[str, int]]
    rows: int  # output rows: the vocabulary, padded to pad_to_multiple_of
    settings: TokenizerSettings
    base: str
    source: str  # the recipe's tokenizer source
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.tokenizer.get_vocab())

    def is_identity(self, rows: int) -> bool:
        """Whether no token moves: every model of `rows` rows has every output token at its own id.
        (Rows past the vocabulary, padding, are then kept as stored; mergekit drops them.)"""
        identity = list(range(self.size))
        return self.size <= rows and all(p == identity for p in self.permutations.values())


def stripped_tokenizer(model: VocabModel) -> Any:
    """mergekit's `get_stripped_tokenizer`: the tokenizer without tokens at ids >= the model's rows."""
    import tokenizers

    tokenizer = model.load()
    vocab = tokenizer.get_vocab()
    unused = {tok for tok, idx in vocab.items() if idx >= model.rows}
    if not unused:
        return tokenizer
    doc = json.loads(tokenizer._tokenizer.to_str())
    if doc["model"]["type"] != "BPE":
        raise RecipeError(
            f"tokenizer: {model.ref} has tokens beyond its {model.rows} embedding rows and a "
            f"{doc['model']['type']} tokenizer; only BPE tokenizers can be stripped (as in mergekit)"
        )
    doc["added_tokens"] = [e for e in doc["added_tokens"] if e["id"] < model.rows]
    for tok in unused:
        doc["model"]["vocab"].pop(tok, None)

    def keep(merge) -> bool:
        parts = merge.split(" ") if isinstance(merge, str) else merge
        return not any(p in unused for p in parts)

    doc["model"]["merges"] = [m for m in doc["model"]["merges"] if keep(m)]
    tokenizer._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(doc))
    return tokenizer


def union_tokenizer(base: Any, models: Sequence[tuple[VocabModel, Any]]) -> Any:
    """mergekit's `build_union_tokenizer`: the base tokenizer plus every other token of `models`."""
    from transformers import AutoTokenizer

    out_vocab: dict[str, None] = {}
    out_added: dict[str, Any] = {}
    for model, tokenizer in models:
        for tok, idx in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
            if idx < model.rows:
                out_vocab.setdefault(tok)
        for idx, info in sorted(tokenizer.added_tokens_decoder.items()):
            if idx < model.rows:
                out_added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as folder:  # a private copy: the base tokenizer stays as it is
        base.save_pretrained(folder)
        result = AutoTokenizer.from_pretrained(folder, use_fast=True)
    base_vocab = base.get_vocab()
    for tok in out_vocab:
        if tok not in out_added and tok not in base_vocab:
            result.add_tokens(tok)
    for info in out_added.values():
        result.add_tokens(info)
    return result


def build_vocabulary(settings: TokenizerSettings, base_ref: str, models: Sequence[VocabModel]) -> Vocabulary:
    """mergekit's `build_tokenizer` for `models` (every model the recipe reads, base first)."""
    by_ref = {m.ref: m for m in models}
    base = by_ref[base_ref]
    base_tokenizer = stripped_tokenizer(base)
    tokenizers = {base_ref: base_tokenizer}
    for model in models:
        if model.ref != base_ref:
            tokenizers[model.ref] = model.load()
    source = settings.source
    if source == "base":
        out = base_tokenizer
    elif source == "union":
        out = union_tokenizer(base_tokenizer, [(by_ref[ref], tok) for ref, tok in tokenizers.items()])
    elif source in by_ref:
        out = by_ref[source].load()
    else:
        raise RecipeError(f"tokenizer source {source!r} is not one of the recipe's models, 'base' or 'union'")
    existing = set(out.get_vocab())
    for tok in settings.tokens or {}:
        if tok not in existing:
            out.add_tokens(tok)
            existing.add(tok)
    vocab_out = out.get_vocab()
    permutations = {}
    for model in models:
        own = tokenizers[model.ref].get_vocab()
        perm = [-1] * len(vocab_out)
        for tok, new_id in vocab_out.items():
            old_id = own.get(tok, -1)
            perm[new_id] = old_id if old_id < model.rows else -1
        permutations[model.ref] = perm
    rows = len(vocab_out)
    pad = settings.pad_to_multiple_of
    if pad and rows % pad:
        rows += pad - rows % pad
    return Vocabulary(out, permutations, {ref: tok.get_vocab() for ref, tok in tokenizers.items()}, rows,
                      settings, base_ref, source)
