"""Vocabulary merging as mergekit does it: the output tokenizer (`build`) and the embedding rows
re-indexed to it (`align`)."""

from vlmmerge.vocab.align import align_vocabulary
from vlmmerge.vocab.build import (
    TokenEmbeddingConfig,
    TokenizerSettings,
    Vocabulary,
    VocabModel,
    build_vocabulary,
    tokenizer_settings,
)

__all__ = [
    "TokenEmbeddingConfig", "TokenizerSettings", "VocabModel", "Vocabulary", "align_vocabulary",
    "build_vocabulary", "tokenizer_settings",
]
