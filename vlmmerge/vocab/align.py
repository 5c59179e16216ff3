"""Embedding rows re-indexed to the output vocabulary, as mergekit 0.1.5's `PermutedVocabulary` does.

Each model's vocabulary tensor (embeddings or head, rows = token ids) becomes one with a row per
output token: the model's own row where its tokenizer has the token; otherwise a default row:
the token's `tokens:` setting if the recipe gives one; else the row of the only model that has
the token; else the base model's row; else the mean of the rows of the models that have it
(zero if none has it). Rows past the vocabulary (`pad_to_multiple_of`) take the mean of the
model's vocabulary rows. The merge method then runs on the re-indexed tensors. Pure tensor math.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlmmerge.errors import RecipeError
from vlmmerge.vocab.build import ModelTokenEmbedding, TokenEmbeddingConfig, Vocabulary, ZeroEmbedding


def _sources(vocab: Vocabulary, refs: Sequence[str], base: str | None) -> dict[int, TokenEmbeddingConfig | str]:
    """Output id -> where its default row comes from: a config, or "average" (mergekit's assign_embedding_sources)."""
    configs = dict(vocab.settings.tokens or {})
    out: dict[int, TokenEmbeddingConfig | str] = {}
    for token, token_id in vocab.tokenizer.get_vocab().items():
        cfg = configs.get(token)
        present = [vocab.permutations[r][token_id] >= 0 for r in refs]
        if not (cfg is not None and cfg.force) and all(present):
            continue  # every model has its own row
        if cfg is not None:
            out[token_id] = cfg
        elif sum(present) == 1:
            out[token_id] = TokenEmbeddingConfig(source=refs[present.index(True)])
        elif not any(present):
            out[token_id] = TokenEmbeddingConfig(source=ZeroEmbedding(kind="zero"))
        elif base is not None and base in refs and vocab.permutations[base][token_id] >= 0:
            out[token_id] = TokenEmbeddingConfig(source=base)
        else:
            out[token_id] = "average"
    return out


def _default_row(vocab: Vocabulary, tensors: dict[str, torch.Tensor], token_id: int,
                 cfg: TokenEmbeddingConfig | str) -> torch.Tensor | None:
    refs = list(tensors)
    if cfg == "average":
        rows = [tensors[r][vocab.permutations[r][token_id]] for r in refs if vocab.permutations[r][token_id] >= 0]
        total = torch.zeros_like(rows[0])
        for row in rows:
            total = total + row
        return total / len(rows)
    source = cfg.source
    if source is None:
        return None
    if isinstance(source, ZeroEmbedding):
        return next(iter(tensors.values())).new_zeros(next(iter(tensors.values())).shape[1:])
    model = source.model if isinstance(source, ModelTokenEmbedding) else source
    if model not in tensors:
        raise RecipeError(f"tokenizer.tokens: the row of a token comes from {model!r}, which is not a model of the merge")
    if isinstance(source, ModelTokenEmbedding):
        src_id = source.token_id
        if src_id is None:
            if source.token not in vocab.original_vocabs.get(model, {}):
                raise RecipeError(f"tokenizer.tokens: token {source.token!r} not found in {model}")
            src_id = vocab.original_vocabs[model][source.token]
        if not 0 <= src_id < tensors[model].shape[0]:
            raise RecipeError(f"tokenizer.tokens: token id {src_id} out of range for {model}")
        return tensors[model][src_id]
    own = vocab.permutations[model][token_id]
    if own < 0:
        token = next(t for t, i in vocab.tokenizer.get_vocab().items() if i == token_id)
        raise RecipeError(f"tokenizer.tokens: token {token!r} is not in {model}'s vocabulary")
    return tensors[model][own]


def align_vocabulary(vocab: Vocabulary, tensors: dict[str, torch.Tensor], base: str | None) -> dict[str, torch.Tensor]:
    """Every model's vocabulary tensor (ref -> rows x ...) re-indexed to the output vocabulary."""
    refs = list(tensors)
    dtype = tensors[refs[0]].dtype
    for value in tensors.values():
        dtype = torch.promote_types(dtype, value.dtype)
    tensors = {r: v.to(dtype) for r, v in tensors.items()}
    size = vocab.size
    configs = _sources(vocab, refs, base)
    defaults = {i: _default_row(vocab, tensors, i, cfg) for i, cfg in configs.items()}
    forced = {i for i, cfg in configs.items() if isinstance(cfg, TokenEmbeddingConfig) and cfg.force}
    out = {}
    for ref in refs:
        old = tensors[ref]
        perm = torch.tensor(vocab.permutations[ref], dtype=torch.long)
        if forced:
            perm[sorted(forced)] = -1
        new = old.new_zeros((vocab.rows, *old.shape[1:]))
        have = torch.nonzero(perm >= 0).reshape(-1)
        new[have] = old.index_select(0, perm[have])
        for token_id, row in defaults.items():
            if row is not None and (perm[token_id] < 0):
                new[token_id] = row
        if vocab.rows > size:
            new[size:] = new[:size].mean(dim=0)
        out[ref] = new
    return out
