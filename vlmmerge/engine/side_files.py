"""The output's side files: config (derived from the plan), host and tokenizer files, recipe, model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vlmmerge.engine.layers import output_config
from vlmmerge.engine.plan import MergePlan
from vlmmerge.vocab.chat_template import write_chat_template

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
    if plan.vocabulary is not None:  # text-only merges: the re-indexed vocabulary's row count
        config["vocab_size"] = plan.vocabulary.rows
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    for name in HOST_FILES:
        if (host_dir / name).exists():
            shutil.copy2(host_dir / name, folder / name)
    if plan.vocabulary is not None:
        plan.vocabulary.tokenizer.save_pretrained(folder)  # the built tokenizer, as mergekit writes it
    else:
        tok_dir = plan.tokenizer_source.checkpoint.path
        for name in TOKENIZER_FILES:
            if (tok_dir / name).exists():
                shutil.copy2(tok_dir / name, folder / name)
    if plan.chat_template is not None:
        write_chat_template(folder, plan.chat_template)
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
        lines.append(f"- Merged components: {', '.join(plan.components) or 'none'}")
        copied = ", ".join(plan.copied_components)
        if copied:
            lines.append(f"- Copied unchanged from the host `{plan.host.ref}`: {copied}")
        lines.append("- Extra vocabulary rows and special-token rows: kept from the host")
    lines += [
        f"- Tokenizer: {_tokenizer_line(plan)}",
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


def _tokenizer_line(plan: MergePlan) -> str:
    vocabulary = plan.vocabulary
    if vocabulary is None:
        return f"`{plan.tokenizer_source.ref}`"
    kind = "union of every model's tokens" if vocabulary.source == "union" else f"`{vocabulary.source}`"
    return f"{kind} over base `{vocabulary.base}` ({vocabulary.size} tokens, {vocabulary.rows} embedding rows)"
