"""Parse a model completion into its reasoning, its solution and the labels it predicts.

A completion is *valid* when it holds exactly one ``<think>...</think>`` block followed by exactly one
``<solution>...</solution>`` block (the paper's format). Labels inside the solution are separated by
commas, semicolons or new lines; each is trimmed, stripped of list bullets and a trailing full stop, and
matched case-insensitively against the schema. Labels outside the schema and repeated labels are
reported, never silently kept. An invalid completion predicts no labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chexrl.core.schemas import LabelSchema

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SOLUTION_OPEN, SOLUTION_CLOSE = "<solution>", "</solution>"
_TAGS = (THINK_OPEN, THINK_CLOSE, SOLUTION_OPEN, SOLUTION_CLOSE)
_SEPARATORS = re.compile(r"[,;\n]")
_BULLET = re.compile(r"^(?:[-*\u2022]|\d+[.)])\s+")


@dataclass(frozen=True)
class ParsedCompletion:
    """What a completion says, and what is wrong with it."""

    valid: bool
    error: str | None  # why the completion is invalid; None when valid
    think: str
    solution: str
    labels: tuple[str, ...]  # canonical schema labels, first occurrence order, no duplicates
    unknown: tuple[str, ...]  # label strings that are not in the schema, as written
    duplicates: tuple[str, ...]  # canonical labels that appeared more than once (one entry per repeat)
    outside_text: str  # non-blank text outside the two blocks, joined with single spaces

    @property
    def label_set(self) -> frozenset[str]:
        return frozenset(self.labels)


def _invalid(error: str) -> ParsedCompletion:
    return ParsedCompletion(False, error, "", "", (), (), (), "")


def split_labels(solution: str) -> list[str]:
    """Split a solution block into cleaned label strings (empty pieces dropped).

    >>> split_labels(" Cardiomegaly, edema;\\n- Pleural Effusion. ")
    ['Cardiomegaly', 'edema', 'Pleural Effusion']
    """
    pieces = []
    for raw in _SEPARATORS.split(solution):
        piece = _BULLET.sub("", raw.strip()).rstrip(".").strip()
        if piece:
            pieces.append(piece)
    return pieces


def parse_completion(text: str, schema: LabelSchema) -> ParsedCompletion:
    """Parse `text` against `schema`.

    >>> from chexrl.core.schemas import SCHEMAS
    >>> p = parse_completion("<think>heart large</think><solution>cardiomegaly, Edema</solution>",
    ...                      SCHEMAS["chexpert14"])
    >>> p.valid, p.labels
    (True, ('Cardiomegaly', 'Edema'))
    >>> parse_completion("<solution>Edema</solution>", SCHEMAS["chexpert14"]).error
    'expected exactly one <think> block, found 0'
    """
    counts = {tag: text.count(tag) for tag in _TAGS}
    for open_tag, close_tag in ((THINK_OPEN, THINK_CLOSE), (SOLUTION_OPEN, SOLUTION_CLOSE)):
        name = open_tag[1:-1]
        if counts[open_tag] != 1 or counts[close_tag] != 1:
            found = (
                min(counts[open_tag], counts[close_tag]) if counts[open_tag] == counts[close_tag] else None
            )
            detail = (
                f"found {found}"
                if found is not None
                else (f"found {counts[open_tag]} {open_tag} and {counts[close_tag]} {close_tag}")
            )
            return _invalid(f"expected exactly one <{name}> block, {detail}")

    t_open, t_close = text.index(THINK_OPEN), text.index(THINK_CLOSE)
    s_open, s_close = text.index(SOLUTION_OPEN), text.index(SOLUTION_CLOSE)
    if not t_open < t_close < s_open < s_close:
        return _invalid("expected <think>...</think> followed by <solution>...</solution>")

    think = text[t_open + len(THINK_OPEN) : t_close].strip()
    solution = text[s_open + len(SOLUTION_OPEN) : s_close].strip()
    outside = [
        text[:t_open],
        text[t_close + len(THINK_CLOSE) : s_open],
        text[s_close + len(SOLUTION_CLOSE) :],
    ]
    outside_text = " ".join(part.strip() for part in outside if part.strip())

    labels: list[str] = []
    unknown: list[str] = []
    duplicates: list[str] = []
    for piece in split_labels(solution):
        label = schema.canonical(piece)
        if label is None:
            unknown.append(piece)
        elif label in labels:
            duplicates.append(label)
        else:
            labels.append(label)
    return ParsedCompletion(
        valid=True,
        error=None,
        think=think,
        solution=solution,
        labels=tuple(labels),
        unknown=tuple(unknown),
        duplicates=tuple(duplicates),
        outside_text=outside_text,
    )


def format_completion(think: str, labels: list[str] | tuple[str, ...]) -> str:
    """The canonical completion for a reasoning text and a label list (used by the teacher and tests).

    >>> format_completion("Clear lungs.", ["No Finding"])
    '<think>Clear lungs.</think>\\n<solution>No Finding</solution>'
    """
    return f"{THINK_OPEN}{think}{THINK_CLOSE}\n{SOLUTION_OPEN}{', '.join(labels)}{SOLUTION_CLOSE}"
