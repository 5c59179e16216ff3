"""Prompt construction: the model's own chat template when it has one, else a named or literal
template from the task config.

Built-in templates (placeholders ``{system}``, ``{image}``, ``{prompt}``):
  plain        "{system}{image}{prompt}\\n"
  llava        "{system}USER: {image}\\n{prompt} ASSISTANT:"
  instruction  "{system}### Instruction:\\n{image}{prompt}\\n\\n### Response:\\n"   (Alpaca style, as the reference LLM eval)
  qa           "{system}{image}Question: {prompt}\\nAnswer:"
``{image}`` becomes the processor's image token (e.g. "<image>") for image tasks, "" otherwise; a
literal template without ``{image}`` gets the image token in front. ``{system}`` becomes the
task's system message plus a blank line, or "".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmmerge.errors import VlmMergeError

TEMPLATES = {
    "plain": "{system}{image}{prompt}\n",
    "llava": "{system}USER: {image}\n{prompt} ASSISTANT:",
    "instruction": "{system}### Instruction:\n{image}{prompt}\n\n### Response:\n",
    "qa": "{system}{image}Question: {prompt}\nAnswer:",
}
DEFAULT_TEMPLATE = "plain"


@dataclass(frozen=True)
class PromptFormat:
    kind: str  # "chat_template" or "template:<name>" / "template:literal"
    add_special_tokens: bool  # chat templates already hold BOS etc.


def tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", None) or processor


def is_multimodal_processor(processor: Any) -> bool:
    return getattr(processor, "image_processor", None) is not None


def image_token(processor: Any) -> str:
    token = getattr(processor, "image_token", None)
    if token is None:
        token = getattr(tokenizer_of(processor), "image_token", None)
    return token or "<image>"


def has_chat_template(processor: Any) -> bool:
    if getattr(processor, "chat_template", None):
        return True
    return bool(getattr(tokenizer_of(processor), "chat_template", None))


def _render_template(template: str, prompt: str, system: str | None, image: str) -> str:
    if image and "{image}" not in template:
        template = "{image}" + template
    return (
        template.replace("{system}", f"{system}\n\n" if system else "")
        .replace("{image}", image)
        .replace("{prompt}", prompt)
    )


def _chat_messages(prompt: str, system: str | None, with_image: bool, structured: bool) -> list[dict]:
    def content(text: str, image: bool = False):
        if not structured:
            return text
        parts = [{"type": "image"}] if image else []
        return parts + [{"type": "text", "text": text}]

    messages = []
    if system:
        messages.append({"role": "system", "content": content(system)})
    messages.append({"role": "user", "content": content(prompt, with_image)})
    return messages


def build_prompt(processor: Any, prompt: str, *, system: str | None, with_image: bool,
                 template: str | None = None) -> tuple[str, PromptFormat]:
    """The full text fed to the processor/tokenizer for one item."""
    if with_image and not is_multimodal_processor(processor):
        raise VlmMergeError("this task has images but the model came with a text tokenizer, not an image processor")
    # Image prompts need the processor's own chat template (it knows where images go); text
    # prompts may use the tokenizer's.
    own_template = bool(getattr(processor, "chat_template", None)) and is_multimodal_processor(processor)
    usable = own_template or (not with_image and has_chat_template(processor))
    if template is None and usable:
        structured = own_template
        target = processor if own_template else tokenizer_of(processor)
        try:
            text = target.apply_chat_template(
                _chat_messages(prompt, system, with_image, structured), add_generation_prompt=True, tokenize=False
            )
        except Exception:  # jinja TemplateError: many templates reject a system role
            if not system:
                raise
            text = target.apply_chat_template(
                _chat_messages(f"{system}\n\n{prompt}", None, with_image, structured),
                add_generation_prompt=True, tokenize=False,
            )
        if with_image and image_token(processor) not in text:
            raise VlmMergeError(
                f"the chat template did not place the image token {image_token(processor)!r}; set 'template' in task.yaml"
            )
        return text, PromptFormat("chat_template", add_special_tokens=False)
    name = template or DEFAULT_TEMPLATE
    if name in TEMPLATES:
        body, kind = TEMPLATES[name], f"template:{name}"
    elif "{prompt}" in name:
        body, kind = name, "template:literal"
    else:
        raise VlmMergeError(
            f"unknown prompt template {name!r}: use one of {sorted(TEMPLATES)} or a literal containing {{prompt}}"
        )
    return _render_template(body, prompt, system, image_token(processor) if with_image else ""), PromptFormat(
        kind, add_special_tokens=True
    )
