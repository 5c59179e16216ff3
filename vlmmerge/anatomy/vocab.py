"""Token tables from a folder's tokenizer, and how a host's table relates to another model's."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

# id -> token string
Vocab = Mapping[int, str]


def load_vocab(folder: Path) -> dict[int, str] | None:
    """id -> token string from a folder's tokenizer.json (added tokens included), or None if there is none."""
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    vocab = (doc.get("model") or {}).get("vocab")
    table: dict[int, str] = {}
    if isinstance(vocab, dict):
        table = {int(i): tok for tok, i in vocab.items()}
    elif isinstance(vocab, list):  # unigram: [token, score] pairs
        table = {i: entry[0] for i, entry in enumerate(vocab)}
    for added in doc.get("added_tokens") or []:
        table[int(added["id"])] = added["content"]
    return table or None


def host_only_tokens(host: Vocab, other: Vocab, rows: int) -> list[tuple[int, str]]:
    """(id, host token) for the ids below `rows` that the host's tokenizer defines and the other's does not.

    The other model never trained these rows for the host's token (Mistral 3's [IMG_BREAK], InternVL's
    <img>, a VLM's image placeholders...), so the merge keeps the host's rows for them.
    """
    return [(i, host[i]) for i in sorted(host) if 0 <= i < rows and i not in other]


def differing_tokens(host: Vocab, other: Vocab, rows: int) -> list[tuple[int, str, str]]:
    """(id, host token, other token) for the ids below `rows` that both define differently."""
    return [(i, host[i], other[i]) for i in sorted(host) if 0 <= i < rows and i in other and host[i] != other[i]]
