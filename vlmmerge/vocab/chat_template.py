"""mergekit's `chat_template:` key: `auto` (the template most of the models share) or Jinja text.

mergekit 0.1.5 also accepts the names of templates it ships as data files (alpaca, chatml,
exaone, llama3, mistral); vlmmerge does not ship them: such a name is an error that says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from vlmmerge.errors import RecipeError

MERGEKIT_NAMED = ("alpaca", "chatml", "exaone", "llama3", "mistral")


def _template_of(folder: Path) -> str | None:
    from transformers import AutoTokenizer

    try:
        template = AutoTokenizer.from_pretrained(folder).chat_template
    except (OSError, ValueError, TypeError):
        return None
    if isinstance(template, dict):
        template = template.get("default")
    return template.strip() if template else None


def resolve_chat_template(setting: str | None, folders: Sequence[Path]) -> str | None:
    """The template text the output's tokenizer gets (None: keep the tokenizer source's)."""
    if not setting:
        return None
    if setting == "auto":
        templates = [t for t in (_template_of(f) for f in folders) if t]
        return Counter(templates).most_common(1)[0][0] if templates else None
    if setting in MERGEKIT_NAMED:
        raise RecipeError(
            f"chat_template: {setting!r} names one of mergekit's bundled templates, which vlmmerge does not "
            "ship; give the Jinja text itself, or 'auto'"
        )
    if len(setting) < 20 or "{" not in setting:
        raise RecipeError(f"chat_template: {setting[:40]!r} is neither 'auto' nor a Jinja template")
    return setting


def write_chat_template(folder: Path, template: str) -> None:
    """Set `template` on the tokenizer saved in `folder` and save it again (transformers' layout)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
