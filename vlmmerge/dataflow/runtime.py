"""The layer-path runtime: a live model that runs a path of (source, layer) hops, each hop's input scaled.

`LayerPath` holds the host model (model A: embeddings, final norm, head, and for a VLM the vision
encoder and projector) and the decoder-layer modules of every source, loaded once. `set_path(hops)`
replaces the host's decoder-layer list by one `Hop` per step of the path: the source's layer module
itself (shared, never copied), run on `scale * hidden_states` (for scale-invariant pre-norm
families in the equivalent folded form the exported checkpoint computes, see `Hop`). A layer used several times on a path
runs with the hop's own index, so each hop has its own KV-cache slot; the host's text config gets
the path's layer count and per-layer fields, so caches and masks are built for the path. Changing the
path changes no weight: materialising a candidate costs microseconds. A mixed hop (same-size
`weighted`: (1 - alpha) W_k + alpha W_{k+1} at position p) runs a private copy of the layer, made once
per position, whose parameters are overwritten per candidate by the merge engine's `linear` kernel;
the sources' own layers are never touched. With `head` (`evolve.dataflow.head_from`) another source's
token embeddings, final norm and lm_head modules (shared, not copied) replace the host's; the vision
tower and projector stay the host's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vlmmerge.dataflow.export import RESIDUAL_WRITERS, SCALE_INVARIANT
from vlmmerge.errors import RecipeError, VlmMergeError

# Families whose decoder layers cannot be re-ordered: what each injects into the layers, by position.
NOT_REORDERABLE = {
    "qwen3_vl": "deepstack: visual features are added to the hidden states after the first language layers, by position",
    "qwen3_vl_moe": "deepstack: visual features are added to the hidden states after the first language layers, by position",
    "mllama": "cross-attention layers to the image sit at fixed layer indices (cross_attention_layers)",
    "gemma3n": "per-layer inputs and AltUp streams are indexed by layer position",
}
PER_LAYER_FIELDS = ("layer_types",)


@dataclass(frozen=True)
class HopSpec:
    """One step of a path: layer `layer` of source `source` (an index into the runtime's sources), input x `scale`."""

    source: int
    layer: int
    scale: float = 1.0
    mix_source: int | None = None  # a mixed hop: (1 - mix) x this layer of `source` + mix x that of `mix_source`
    mix: float = 0.0

    @property
    def mixed(self) -> bool:
        return self.mix_source is not None and self.mix != 0.0


def _fold_hook(module: nn.Module, args, output):
    fold = module._dfs_fold
    return output if fold is None else output * fold


def residual_writers(layer: nn.Module) -> list[nn.Module]:
    """The layer's o_proj / down_proj modules, each with the (shared, idle by default) folding hook."""
    writers = [m for name, m in layer.named_modules() if name.split(".")[-1] in RESIDUAL_WRITERS]
    for module in writers:
        if not getattr(module, "_dfs_hooked", False):
            module._dfs_fold = None
            module.register_forward_hook(_fold_hook)
            module._dfs_hooked = True
    return writers


class Hop(nn.Module):
    """A shared decoder layer with the hop's own cache index, run either on `scale * hidden_states`
    (`fold` None) or in the folded form: on the stream g = h / P (P: the product of the path's scales up
    to this hop) with its o_proj / down_proj outputs times `fold` = 1 / P, which is what the exported
    checkpoint computes (its writers' weights divided by P)."""

    def __init__(self, layer: nn.Module, scale: float, index: int, fold: float | None = None):
        super().__init__()
        self.layer = layer
        self.scale = float(scale)
        self.index = index
        self.fold = fold
        self._indexed = [m for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)]
        self._writers = residual_writers(layer) if fold is not None else []

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("attention_type", "layer_type", "is_sliding", "sliding_window"):
                return getattr(self._modules["layer"], name)
            raise

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        saved = [m.layer_idx for m in self._indexed]
        for module in self._indexed:
            module.layer_idx = self.index
        for module in self._writers:
            module._dfs_fold = self.fold
        try:
            if self.fold is None and self.scale != 1.0:
                hidden_states = hidden_states * self.scale
            return self.layer(hidden_states, *args, **kwargs)
        finally:
            for module, value in zip(self._indexed, saved):
                module.layer_idx = value
            for module in self._writers:
                module._dfs_fold = None


def text_model_type(config) -> str:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return str(getattr(text, "model_type", None) or config.model_type)


def check_reorderable(config, where: str) -> None:
    for model_type in (str(config.model_type), text_model_type(config)):
        if model_type in NOT_REORDERABLE:
            raise RecipeError(f"{where}: {model_type} layers cannot be re-ordered on a data-flow path: "
                              f"{NOT_REORDERABLE[model_type]}")


def language_model(model: nn.Module) -> nn.Module:
    """The module that owns the decoder-layer list and the token embeddings (language side)."""
    found = [m for name, m in model.named_modules()
             if isinstance(getattr(m, "layers", None), nn.ModuleList) and hasattr(m, "embed_tokens")
             and not any(part in name for part in ("vision", "visual"))]
    if not found:
        raise VlmMergeError(f"{type(model).__name__}: no decoder-layer list (`layers` next to `embed_tokens`) found")
    return found[0]


HEAD_PARTS = ("embed_tokens", "norm")


def _same_shapes(own: nn.Module | None, lent: nn.Module | None, what: str, where: str) -> None:
    if own is None or lent is None:
        raise RecipeError(f"{where}: {what} not found (host: {type(own).__name__}, source: {type(lent).__name__})")
    mine, theirs = [tuple(p.shape) for p in own.parameters()], [tuple(p.shape) for p in lent.parameters()]
    if mine != theirs:
        raise RecipeError(f"{where}: {what} has shapes {theirs}, the host's {mine}: it needs the host's vocabulary "
                          "and hidden size")


def _with_host_rows(lent: nn.Module, own: nn.Module, rows: Sequence[int]) -> nn.Module:
    """`lent` itself, or (rows to keep from the host) a private copy with the host's rows there."""
    if not rows:
        return lent
    with torch.no_grad():
        private = copy.deepcopy(lent)
        private.weight[list(rows)] = own.weight[list(rows)]
    return private


def lend_head(host_model: nn.Module, source_model: nn.Module, where: str, lent=None) -> None:
    """Put the source's token embeddings, final norm and lm_head modules (shared) in the host model;
    `lent` (an export.LentHead): rows kept from the host (then private copies) and the output's tying."""
    own, lent_lm = language_model(host_model), language_model(source_model)
    other = [n for n, _ in own.named_parameters() if not n.startswith(tuple(f"{p}." for p in ("layers", *HEAD_PARTS)))]
    if other:
        raise RecipeError(f"{where}: the host's language model has tensors besides embeddings, layers and final "
                          f"norm ({other[0]}); lending embeddings / norm / head is not supported for it")
    for part in HEAD_PARTS:
        _same_shapes(getattr(own, part, None), getattr(lent_lm, part, None), part, where)
    head, source_head = host_model.get_output_embeddings(), source_model.get_output_embeddings()
    _same_shapes(head, source_head, "lm_head", where)
    embed_rows, head_rows, tied = (lent.embed_rows, lent.head_rows, lent.tied) if lent else ((), (), False)
    embed = _with_host_rows(lent_lm.embed_tokens, own.embed_tokens, embed_rows)
    if tied and embed is not lent_lm.embed_tokens:  # the output ties its head to the (private) embeddings
        with torch.no_grad():
            new_head = copy.deepcopy(source_head, {id(source_head.weight): embed.weight})
    else:
        new_head = _with_host_rows(source_head, head, head_rows)
    own.embed_tokens, own.norm = embed, lent_lm.norm
    owner, _, attr = next(n for n, m in host_model.named_modules() if m is head).rpartition(".")
    setattr(host_model.get_submodule(owner) if owner else host_model, attr, new_head)


class LayerPath:
    """Host model + every source's decoder layers; `set_path` makes the host run a path of hops."""

    def __init__(self, host_model: nn.Module, processor, source_models: Sequence[nn.Module], names: Sequence[str],
                 host: int = 0, head: int | None = None, lent=None):
        """`source_models[host]` is the host itself (model A by default); the others lend their decoder layers,
        and `source_models[head]` (default: the host) its embeddings, final norm and head (`lent`: the
        export.LentHead saying which rows the export keeps from the host)."""
        check_reorderable(host_model.config, names[host])
        if source_models[host] is not host_model:
            raise VlmMergeError(f"layer path: source {host} ({names[host]}) must be the host model itself")
        self.host = host
        self.model = host_model
        self.processor = processor
        self.names = list(names)
        self.lm = language_model(host_model)
        self.text_config = self.lm.config
        self.original = {"num_hidden_layers": self.text_config.num_hidden_layers,
                         **{k: getattr(self.text_config, k, None) for k in PER_LAYER_FIELDS}}
        self.layers: list[list[nn.Module]] = []
        self.layer_values: list[dict[str, list]] = []
        self._keep = [m for m in source_models if m is not host_model]  # alive: their layers are used
        self._mixed: dict[int, nn.Module] = {}  # path position -> private layer of mixed hops
        for model, name in zip(source_models, names):
            check_reorderable(model.config, name)
            lm = self.lm if model is host_model else language_model(model)
            self.layers.append(list(lm.layers))
            self.layer_values.append({k: list(getattr(lm.config, k)) for k in PER_LAYER_FIELDS
                                      if isinstance(getattr(lm.config, k, None), list)})
            if lm.config.hidden_size != self.text_config.hidden_size:
                raise RecipeError(f"{name}: hidden size {lm.config.hidden_size} differs from the host's "
                                  f"{self.text_config.hidden_size}; its layers cannot sit on the host's path")
        self.head = host if head is None else head
        if self.head != host:
            lend_head(host_model, source_models[self.head], f"evolve.dataflow.head_from: {names[self.head]}", lent)
        self.model.eval()
        self.path: tuple[HopSpec, ...] = ()
        # scale-invariant pre-norm families run paths in the folded form (= the exported checkpoint)
        self.foldable = all(text_model_type(m.config) in SCALE_INVARIANT for m in source_models)

    @property
    def layer_counts(self) -> list[int]:
        return [len(layers) for layers in self.layers]

    def set_path(self, hops: Sequence[HopSpec]) -> nn.Module:
        if not hops:
            raise RecipeError("data-flow path: no layers on the path")
        modules = []
        fold = self.foldable and all(hop.scale > 0 for hop in hops)
        product = 1.0
        for index, hop in enumerate(hops):
            if not (0 <= hop.source < len(self.layers)) or not (0 <= hop.layer < len(self.layers[hop.source])):
                raise RecipeError(f"data-flow path: hop {index} reads layer {hop.layer} of source {hop.source}, "
                                  f"which does not exist (layers per source: {self.layer_counts})")
            product *= hop.scale
            inverse = (None if product == 1.0 else 1.0 / product) if fold else None
            layer = self._mixed_layer(index, hop) if hop.mixed else self.layers[hop.source][hop.layer]
            modules.append(Hop(layer, hop.scale, index, inverse))
        self.lm.layers = nn.ModuleList(modules)
        self.text_config.num_hidden_layers = len(hops)
        for key in PER_LAYER_FIELDS:
            if isinstance(self.original.get(key), list):
                setattr(self.text_config, key, [self._value(h, key) for h in hops])
        self.path = tuple(hops)
        return self.model

    def _mixed_layer(self, index: int, hop: HopSpec) -> nn.Module:
        """The private layer of position `index`, set to (1 - mix) W_source + mix W_mix_source by `linear`."""
        from vlmmerge.methods.interpolation import linear

        if not (0 <= hop.mix_source < len(self.layers)) or hop.layer >= len(self.layers[hop.mix_source]):
            raise RecipeError(f"data-flow path: hop {index} mixes in layer {hop.layer} of source {hop.mix_source}, "
                              f"which does not exist (layers per source: {self.layer_counts})")
        first, second = self.layers[hop.source][hop.layer], self.layers[hop.mix_source][hop.layer]
        private = self._mixed.get(index)
        if private is None or [p.shape for p in private.parameters()] != [p.shape for p in first.parameters()]:
            with torch.no_grad():  # made once per position (again only if a differently shaped layer lands there)
                private = self._mixed[index] = copy.deepcopy(first)
        other = dict(second.named_parameters())
        with torch.no_grad():
            for (name, target), own in zip(private.named_parameters(), first.parameters()):
                if name not in other or other[name].shape != own.shape:
                    raise RecipeError(f"data-flow path: hop {index}: {self.names[hop.mix_source]} layer {hop.layer} "
                                      f"has no tensor {name} of shape {tuple(own.shape)} to mix")
                target.copy_(linear([own, other[name]], [1.0 - hop.mix, hop.mix], normalize=False))
        return private

    def _value(self, hop: HopSpec, key: str):
        values = self.layer_values[hop.source].get(key)
        return values[hop.layer] if values else self.original[key][0]

    def materialize(self, hops: Sequence[HopSpec]) -> tuple[nn.Module, object]:
        return self.set_path(hops), self.processor


def load_layer_path(refs: Sequence[str], names: Sequence[str] | None = None, device: str = "cpu",
                    dtype: torch.dtype | None = None, host: int = 0, head: int | None = None) -> LayerPath:
    """Load the host (`refs[host]`, with its processor) and the other sources, in `dtype` on `device`;
    `head`: the source lending embeddings, final norm and head (default: the host)."""
    from vlmmerge.checkpoint import Checkpoint, model_class_for
    from vlmmerge.dataflow.export import lent_head
    from vlmmerge.evaluation import load_model_for_eval

    lent = lent_head(str(refs[host]), str(refs[head])) if head not in (None, host) else None  # fails before loading
    model, processor = load_model_for_eval(str(refs[host]), device=device, dtype=dtype)
    dtype = dtype or next(model.parameters()).dtype
    models = []
    for i, ref in enumerate(refs):
        if i == host:
            models.append(model)
            continue
        config = Checkpoint(ref).config
        check_reorderable(config, ref)
        models.append(model_class_for(config).from_pretrained(ref, dtype=dtype).to(device).eval())
    return LayerPath(model, processor, models, list(names or refs), host, head, lent)
