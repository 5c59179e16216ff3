"""Data-flow-space (DFS) merging: the hidden states take a path through the layers of several models.

`runtime` runs a path live (layers shared, per-hop input scales, a KV-cache slot per hop); `spaces`
maps genomes to paths (the paper's indicator + W matrix, per-hop scales, interleaved, same-size with
one source's layer or a linear mix of two per position); `export` folds the scales into the weights
and writes a plain checkpoint through a `slices:` recipe (`slices`, mergekit's passthrough stacks) or,
for mixed same-size layers, a per-layer `linear` recipe; `materializer`, `run` and `picture` plug DFS
into `vlmmerge evolve`.
"""
