"""Data-flow-space (DFS) merging: the hidden states take a path through the layers of several models.

`runtime` runs a path live (layers shared, per-hop input scales, a KV-cache slot per hop); `spaces`
maps genomes to paths (the paper's indicator + W matrix, per-hop scales, interleaved, same-size);
`export` folds the scales into the weights and writes a plain checkpoint through a `slices:` recipe
(`slices`, mergekit's passthrough stacks); `materializer`, `run` and `picture` plug DFS into
`vlmmerge evolve`.
"""
