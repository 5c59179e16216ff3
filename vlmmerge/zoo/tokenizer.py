"""The world's tokenizer: word level, trained locally with `tokenizers`, saved as a transformers tokenizer.

Word-level tokens make each concept one token in each language (赤い, red, 🟥), so a task vector acts
on shared concept rows. English words carry their leading space (" red"), Japanese words are cut
out of unspaced text by longest match against the world's Japanese word list, digits are single
tokens, and any other character is its own token. Decoding concatenates tokens (`Fuse`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vlmmerge.zoo.world import japanese_words

PAD, UNK, EOS = "<pad>", "<unk>", "<|end|>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
IMAGE = "<image>"
SPECIAL_TOKENS = [PAD, UNK, EOS, USER, ASSISTANT, SYSTEM, IMAGE]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ '<|system|>' }}"
    "{%- elif message['role'] == 'user' -%}{{ '<|user|>' }}"
    "{%- else -%}{{ '<|assistant|>' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '<|end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


def split_pattern(words: Iterable[str]) -> str:
    """Regex for one token. ASCII words, digits, and ASCII punctuation carry their
    leading space (" red"); known Japanese words (longest first) and any other character never do, and
    a space before them is a token of its own, so that each Japanese word or symbol has one row."""
    alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))
    return rf" ?(?:[A-Za-z]+|[0-9]|[!-/:-@\[-`{{-~])|{alternatives}|[^\sA-Za-z0-9]|\s"


def train_tokenizer(texts: Iterable[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(split_pattern(japanese_words())), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1, show_progress=False)
    tokenizer.train_from_iterator(sorted(set(texts)), trainer=trainer)
    return tokenizer


def to_transformers(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=256,
        extra_special_tokens={"image_token": IMAGE},
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    tokenizer.save_pretrained(str(folder))
