"""vlmmerge: build domain-aware models by merging a vision-language model with specialist LLMs."""

__version__ = "0.1.0"
