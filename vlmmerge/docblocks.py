"""Generated sections of Markdown files: the text between `<!-- NAME:start -->` and `<!-- NAME:end -->`.

Benchmarks and `vlmmerge zoo check --write-doc` rewrite their own section of a document and leave
the rest as written by hand."""

from __future__ import annotations

from pathlib import Path

from vlmmerge.errors import VlmMergeError


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_marked_block(doc: Path, name: str, body: str, *, append_if_missing: bool = False) -> None:
    """Put `body` between the `name` markers of `doc`; without them, append a new marked block when
    `append_if_missing`, else raise an error naming the file and the markers."""
    start, end = markers(name)
    block = f"{start}\n{body.rstrip(chr(10))}\n{end}"
    current = doc.read_text(encoding="utf-8") if doc.exists() else ""
    if start in current and end in current:
        head, rest = current.split(start, 1)
        _, tail = rest.split(end, 1)
        doc.write_text(f"{head}{block}{tail}", encoding="utf-8")
    elif append_if_missing:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(f"{current.rstrip()}\n\n{block}\n".lstrip("\n"), encoding="utf-8")
    else:
        raise VlmMergeError(f"{doc}: markers {start} ... {end} not found")
