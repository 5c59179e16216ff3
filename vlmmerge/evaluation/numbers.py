"""Final-number extraction for math answers.

The reference recipe takes the last number in the reply with a regex that reads "1,000" as 0 and
drops minus signs. Here, after Unicode NFKC (full-width digits and "，" become ASCII):
  - thousands separators are read: "1,000", "1，000", "12,345,678" (groups of exactly 3 digits);
  - a minus sign ("-", "−", "－", "マイナス") makes a number negative when it stands before the
    digits and is not a subtraction (not preceded by an ASCII letter, digit or closing bracket;
    a sign at the very start of the text, "-5", is always a minus);
  - decimals ("3.5"), fractions written a/b ("3/4"), percentages ("50%" -> 50);
  - Japanese multipliers directly after digits: 千, 万, 億, 兆 ("3万" -> 30000, "1万2000" -> 12000);
  - if the reply marks its answer ("#### 12", "\\boxed{12}", "答えは12", "答え：12", "Answer: 12",
    "the answer is 12"), the first number after the last marker is the answer; otherwise the last
    number in the reply.
Values are exact ``Fraction``s, so "0.5" == "1/2" and "18.0" == "18".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

_MULTIPLIERS = {"千": 10**3, "万": 10**4, "億": 10**8, "兆": 10**12}
_NUMBER = re.compile(
    r"(?P<sign>マイナス\s*|[-])?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
    r"(?:\.(?P<frac>\d+))?"
    r"(?:/(?P<den>\d+)(?![\d/]))?"
    r"(?P<mult>[千万億兆])?"
)
_MARKERS = re.compile(
    r"####|\\boxed\s*\{|答え\s*(?:は|:|=)|解答\s*(?:は|:)|(?i:final answer\s*(?:is|:)|the answer is|answer\s*:)"
)
_MINUS_CHARS = str.maketrans({"−": "-", "–": "-", "‐": "-", "‒": "-", "﹣": "-"})


@dataclass(frozen=True)
class FoundNumber:
    value: Fraction
    start: int
    end: int
    text: str


def _prepare(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "").translate(_MINUS_CHARS)


def _ends_operand(ch: str) -> bool:
    """A minus right after ``ch`` is a subtraction ("10-3", "x-1", "(2)-1"); after nothing it is a sign."""
    return ch != "" and ch.isascii() and (ch.isalnum() or ch in ")]}")


def find_numbers(text: str) -> list[FoundNumber]:
    """All numbers in ``text`` in reading order (positions refer to the NFKC-normalised text)."""
    text = _prepare(text)
    found: list[FoundNumber] = []
    for m in _NUMBER.finditer(text):
        start = m.start()
        negative = False
        sign = m.group("sign")
        if sign:
            before = text[start - 1] if start else ""
            if sign.startswith("マイナス") or not _ends_operand(before):
                negative = True
            else:
                start = m.start("int")
        value = Fraction(m.group("int").replace(",", ""))
        if m.group("frac"):
            value += Fraction(int(m.group("frac")), 10 ** len(m.group("frac")))
        if m.group("den"):
            den = int(m.group("den"))
            if den == 0:
                continue
            value /= den
        if m.group("mult"):
            value *= _MULTIPLIERS[m.group("mult")]
        if negative:
            value = -value
        # "1万2000": a multiplied number followed at once by a smaller part is one number.
        if found and found[-1].end == start and found[-1].text[-1:] in _MULTIPLIERS and not negative:
            prev = found.pop()
            if abs(value) < _MULTIPLIERS[prev.text[-1]]:
                value = prev.value + value if prev.value >= 0 else prev.value - value
                start = prev.start
            else:
                found.append(prev)
        found.append(FoundNumber(value=value, start=start, end=m.end(), text=text[start : m.end()]))
    return found


def extract_final_number(text: str) -> Fraction | None:
    """The answer a reply commits to (see the module docstring), or None when it has no number."""
    numbers = find_numbers(text)
    if not numbers:
        return None
    prepared = _prepare(text)
    markers = list(_MARKERS.finditer(prepared))
    if markers:
        after = [n for n in numbers if n.start >= markers[-1].end()]
        if after:
            return after[0].value
    return numbers[-1].value


def parse_number(text: str | int | float | Fraction) -> Fraction | None:
    """A reference answer as an exact number ("1,000", "-3", "0.25", 18)."""
    if isinstance(text, Fraction):
        return text
    if isinstance(text, int):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(str(text))
    return extract_final_number(str(text))


def format_number(value: Fraction | None) -> str | None:
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"
