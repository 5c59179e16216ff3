"""A data-flow path as a plain checkpoint: hop scales folded into the weights, written via a `slices:` recipe.

For a pre-norm block with a scale-invariant norm (RMSNorm(c h) = RMSNorm(h) for c > 0, up to eps),
L(c h) = c L'(h), where L' is L with its residual-writing projections (o_proj, down_proj) divided by
c. With P_t the product of the scales of hops 1..t, the runtime's h_t = L_t(s_t h_{t-1}) equals
P_t g_t, where g_t is an ordinary layer stack whose layer t has its residual writers divided by P_t;
the final norm removes P_T. So a path exports as a passthrough stack of one-layer slices whose
`scale` entries divide o_proj and down_proj by P_t: a `slices:` recipe that `vlmmerge merge`
(and, for an LLM, mergekit) runs, writing a checkpoint of the host's architecture with one layer per
hop. Embeddings, final norm and head are the host's, or those of `head_from` (`non_layer_from`); the
vision side of a VLM host stays the host's.

A same-size path with mixed hops (`same_size_mix: weighted`: layer p = (1 - alpha) W_k + alpha W_{k+1})
exports instead as an ordinary `linear` recipe with `normalize: false` on the host's architecture
(`mixed_recipe`): per model, `weight` filter entries by layer (`layers.p.`) carry its share of layer
p, entries naming layer p's o_proj / down_proj tensors carry that share divided by P_p (the same fold),
and every other tensor takes weight 1 from `head_from` (default: the host), 0 from the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmmerge.errors import RecipeError

# text model types whose decoder blocks are pre-norm with RMSNorm and write the residual only through these
SCALE_INVARIANT = frozenset({"llama", "mistral", "qwen2", "qwen3", "qwen2_vl_text", "qwen2_5_vl_text", "smollm3"})
RESIDUAL_WRITERS = ("o_proj", "down_proj")
NOT_FOLDABLE = {
    "gemma": "Gemma scales the embeddings and its RMSNorm weight is (1 + w); folding is not implemented",
    "gemma2": "post-attention / post-feedforward norms re-normalise the block outputs: o_proj/down_proj scaling "
              "does not reach the residual (the post-norm weights would need an affine change)",
    "gemma3_text": "post-attention / post-feedforward norms re-normalise the block outputs (see gemma2)",
    "olmo2": "post-norm blocks: the scale would have to fold into the norm weights",
    "cohere": "parallel attention + MLP on a LayerNorm with a shared residual; not checked for folding",
    "phi": "parallel block with LayerNorm and a dense head bias; not checked for folding",
}


@dataclass(frozen=True)
class PathHop:
    """One hop of a path, by model reference: layer `layer` of model `model`, input times `scale`."""

    model: str
    layer: int
    scale: float = 1.0
    mix_model: str | None = None  # a mixed hop: (1 - mix) x layer `layer` of `model` + mix x that of `mix_model`
    mix: float = 0.0

    @property
    def mixed(self) -> bool:
        return self.mix_model is not None and self.mix != 0.0

    def shares(self) -> dict[str, float]:
        """Each model's weight in this hop's layer."""
        return {self.model: 1.0 - self.mix, self.mix_model: self.mix} if self.mixed else {self.model: 1.0}


def check_foldable(hops: Sequence[PathHop], model_types: dict[str, str]) -> None:
    """Zero / negative scales and non-scale-invariant families are refused, by hop or by family name."""
    for i, hop in enumerate(hops):
        if not hop.scale > 0:
            raise RecipeError(f"data-flow export: hop {i} ({hop.model} layer {hop.layer}) has scale {hop.scale}; "
                              "only positive scales fold into the weights (RMSNorm(w h) = RMSNorm(h) needs w > 0): "
                              "bound the search's scales above 0")
    if all(h.scale == 1.0 for h in hops):
        return  # a plain passthrough stack: nothing to fold
    for ref, model_type in model_types.items():
        if model_type in NOT_FOLDABLE:
            raise RecipeError(f"data-flow export: {ref} is {model_type}: {NOT_FOLDABLE[model_type]}")
        if model_type not in SCALE_INVARIANT:
            raise RecipeError(f"data-flow export: {ref} is {model_type}, whose blocks are not known to be "
                              f"scale-invariant pre-norm blocks (known: {sorted(SCALE_INVARIANT)})")


def cumulative_scales(hops: Sequence[PathHop]) -> list[float]:
    out, product = [], 1.0
    for hop in hops:
        product *= hop.scale
        out.append(product)
    return out


def path_recipe(hops: Sequence[PathHop], host: str, dtype: str | None = None, tokenizer_source: str | None = None,
                name: str | None = None, head_from: str | None = None) -> dict[str, Any]:
    """The `slices:` recipe of a path (scales folded): consecutive layers of one model with one
    cumulative scale share a slice."""
    if not hops:
        raise RecipeError("data-flow export: the path is empty")
    slices: list[dict[str, Any]] = []
    previous: tuple[str, float, int] | None = None
    for hop, product in zip(hops, cumulative_scales(hops)):
        if previous is not None and previous[0] == hop.model and previous[1] == product and previous[2] == hop.layer:
            slices[-1]["sources"][0]["layer_range"][1] = hop.layer + 1
        else:
            source: dict[str, Any] = {"model": hop.model, "layer_range": [hop.layer, hop.layer + 1]}
            if product != 1.0:
                inverse = 1.0 / product
                source["parameters"] = {"scale": [*({"filter": w, "value": inverse} for w in RESIDUAL_WRITERS),
                                                  {"value": 1.0}]}
            slices.append({"sources": [source]})
        previous = (hop.model, product, hop.layer + 1)
    recipe: dict[str, Any] = {"slices": slices, "merge_method": "passthrough", "non_layer_from": head_from or host,
                              "host": host}
    return _with_options(recipe, dtype=dtype, tokenizer_source=tokenizer_source, name=name)


def _with_options(recipe: dict[str, Any], **options: str | None) -> dict[str, Any]:
    """The recipe with each option that is set (dtype, tokenizer_source, name) added."""
    recipe.update({key: value for key, value in options.items() if value})
    return recipe


def writer_names(host: str) -> dict[int, list[str]]:
    """The host's residual-writing tensors per layer, by standalone-LM name (what parameter filters match)."""
    from vlmmerge.anatomy import Anatomy
    from vlmmerge.checkpoint import Checkpoint

    anatomy = Anatomy(Checkpoint(host))
    out: dict[int, list[str]] = {}
    for name in anatomy.lm_view:
        layer = anatomy.layer_index(name)
        if layer is not None and any(part in RESIDUAL_WRITERS for part in name.split(".")):
            out.setdefault(layer, []).append(name)
    return out


def mixed_recipe(hops: Sequence[PathHop], host: str, writers: dict[int, list[str]], sources: Sequence[str] = (),
                 dtype: str | None = None, tokenizer_source: str | None = None,
                 name: str | None = None, head_from: str | None = None) -> dict[str, Any]:
    """The `linear` recipe (normalize: false) of a same-size path with mixed hops, scales folded."""
    head = head_from or host
    if [h.layer for h in hops] != list(range(len(writers))):
        raise RecipeError(f"data-flow export: a path with mixed layers must be same-size (hop p = layer p for "
                          f"the host's {len(writers)} layers); got layers {[h.layer for h in hops]}")
    used = {ref for hop in hops for ref in hop.shares()}
    models = [ref for ref in dict.fromkeys([*sources, *(r for h in hops for r in h.shares()), host, head])
              if ref in used or ref in (host, head)]
    entries = []
    for ref in models:
        default = 1.0 if ref == head else 0.0
        weight: list[dict[str, Any]] = []
        for p, (hop, product) in enumerate(zip(hops, cumulative_scales(hops))):
            share = hop.shares().get(ref, 0.0)
            folded = share if product == 1.0 else share * (1.0 / product)
            if folded != share:
                weight.extend({"filter": w, "value": folded} for w in writers[p])
            if share != default:
                weight.append({"filter": f"layers.{p}.", "value": share})
        weight.append({"value": default})
        entries.append({"model": ref, "parameters": {"weight": weight}})
    recipe: dict[str, Any] = {"models": entries, "merge_method": "linear", "parameters": {"normalize": False},
                              "host": host, "components": ["language"]}
    return _with_options(recipe, dtype=dtype, tokenizer_source=tokenizer_source, name=name)


@dataclass(frozen=True)
class LentHead:
    """What the export writes for `head_from` on the host: its embeddings and head except these rows,
    kept from the host (the engine's VLM vocabulary rule: the host's special-token rows, e.g. the image
    token), and whether the output ties its head to its embeddings."""

    embed_rows: tuple[int, ...] = ()
    head_rows: tuple[int, ...] = ()
    tied: bool = False


def lent_head(host: str, head_from: str) -> LentHead:
    """Read off the export's own plan (a one-hop path with `head_from`), so the runtime runs what is written."""
    from vlmmerge.engine import MergeJob
    from vlmmerge.engine.slices import job_plan

    plan = job_plan(MergeJob.build(path_recipe([PathHop(host, 0)], host, head_from=head_from)))
    anatomy, by_name = plan.host.anatomy, {t.name: t for t in plan.tensors}

    def rows(name: str) -> tuple[int, ...]:
        tensor = by_name[name]
        if tensor.merged and tensor.merged_rows is not None and tensor.merged_rows < tensor.shape[0]:
            raise RecipeError(f"evolve.dataflow.head_from: {head_from}: {name} has {tensor.merged_rows} rows, the host "
                              f"{host} {tensor.shape[0]}: embeddings and head need the host's vocabulary")
        return tuple(tensor.host_rows) if tensor.merged else ()

    embed = rows(anatomy.embed_name)
    tied = anatomy.head_name not in by_name
    return LentHead(embed, embed if tied else rows(anatomy.head_name), tied)


def check_head_tying(host: str, head_from: str | None, mixed: bool) -> None:
    """A weighted (`linear`) export writes the host's tensor list: it cannot untie or tie the head."""
    from vlmmerge.anatomy import Anatomy
    from vlmmerge.checkpoint import Checkpoint

    if not mixed or head_from in (None, host):
        return
    tied = {ref: Anatomy(Checkpoint(ref)).tied for ref in (host, head_from)}
    if tied[host] != tied[head_from]:
        raise RecipeError(f"evolve.dataflow.head_from: {head_from} has tie_word_embeddings {tied[head_from]}, the "
                          f"host {host} {tied[host]}: a weighted same-size path exports as a `linear` recipe on the "
                          "host's tensors, which cannot change the tying (use same_size_mix: choice or another head_from)")


def model_types(refs: Sequence[str]) -> dict[str, str]:
    from vlmmerge.checkpoint import Checkpoint
    from vlmmerge.dataflow.runtime import text_model_type

    return {ref: text_model_type(Checkpoint(ref).config) for ref in dict.fromkeys(refs)}


def export_path(hops: Sequence[PathHop], out_dir: str | Path, host: str, dtype: str | None = None,
                tokenizer_source: str | None = None, progress: bool = False, overwrite: bool = True,
                name: str | None = None, sources: Sequence[str] = (), head_from: str | None = None) -> dict[str, Any]:
    """Write the path as a plain checkpoint of the host's architecture; returns its recipe (`slices:`, or
    for a same-size path with mixed hops `linear`; `sources`: the models' order, as the runtime sums them;
    `head_from`: the model whose embeddings, final norm and head are written, default the host)."""
    from vlmmerge.engine import MergeJob, write_merge

    check_foldable(hops, model_types([host, *(r for h in hops for r in h.shares())]))
    mixed = any(hop.mixed for hop in hops)
    check_head_tying(host, head_from, mixed)
    if mixed:
        recipe = mixed_recipe(hops, host, writer_names(host), sources, dtype, tokenizer_source, name, head_from)
    else:
        recipe = path_recipe(hops, host, dtype, tokenizer_source, name, head_from)
    job = MergeJob.build(recipe, progress=progress)
    write_merge(job, out_dir, overwrite=overwrite)  # a slices recipe: planned as a layer stack
    return recipe
