"""The output's side files: config (derived from the plan), host and tokenizer files, recipe, model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vlmmerge.engine.layers import output_config
from vlmmerge.engine.plan import MergePlan

# Files copied from the tokenizer source and from the host (processor, generation settings).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
HOST_FILES = (
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "image_processor_config.json",
)


def write_side_files(plan: MergePlan, folder: Path, recipe_yaml: str) -> None:
    host_dir = plan.host.checkpoint.path
    config = output_config(plan, json.loads((host_dir / "config.json").read_text()))
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    for name in HOST_FILES:
        if (host_dir / name).exists():
            shutil.copy2(host_dir / name, folder / name)
    tok_dir = plan.tokenizer_source.checkpoint.path
    for name in TOKENIZER_FILES:
        if (tok_dir / name).exists():
            shutil.copy2(tok_dir / name, folder / name)
    (folder / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
    (folder / "README.md").write_text(model_card(plan, recipe_yaml), encoding="utf-8")


def model_card(plan: MergePlan, recipe_yaml: str) -> str:
    from vlmmerge import __version__

    refs = plan.recipe.model_refs
    front = ["---", "library_name: transformers", "tags:", "- merge", "- vlmmerge", "base_model:"]
    front += [f"- {ref}" for ref in refs]
    front.append("---")
    kind = "vision-language model" if plan.is_vlm else "causal language model"
    lines = [
        *front,
        "",
        f"# {plan.recipe.name or 'Merged model'}",
        "",
        f"A {kind} merged with [vlmmerge](https://pypi.org/project/vlmmerge/) {__version__} "
        f"using **{plan.method.name}** (seed {plan.recipe.seed}).",
        "",
        f"- Architecture and config: `{plan.host.ref}` ({plan.host.checkpoint.architecture})",
    ]
    if plan.layers is not None:
        stack = ", ".join(f"`{o.source}`:{o.layer}" for o in plan.layers)
        lines.append(f"- Decoder layers ({len(plan.layers)}), each from (model: layer): {stack}; not in the recipe below")
    if plan.is_vlm:
        lines.append("- Vision encoder, projector, extra vocabulary rows and special-token rows: copied unchanged from the host")
    lines += [
        f"- Tokenizer: `{plan.tokenizer_source.ref}`",
        f"- Models: {', '.join(f'`{r}`' for r in refs)}",
        "",
    ]
    if plan.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in plan.notes), ""]
    lines += [
        "## Recipe",
        "",
        "Reproduce with `vlmmerge merge recipe.yaml OUT_DIR`:",
        "",
        "```yaml",
        recipe_yaml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
