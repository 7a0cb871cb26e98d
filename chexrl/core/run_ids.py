"""The one run-id pattern of the config, the evaluator, its trainer client and the routes that name a run.

A run id is a single URL path segment: it names the run in `/score` bodies and in `/runs/{run_id}/...`
paths, so it may not contain "/" (a "/score" that accepted "a/b" left the run unable to save its window)
and may not start with "." (".." would be a path step, which clients normalise away). Kept free of web
imports so the trainer's client can check an id before it sends anything.
"""

from __future__ import annotations

import re

RUN_ID_MAX_LENGTH = 128
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
RUN_ID_DESCRIPTION = (
    f"1 to {RUN_ID_MAX_LENGTH} characters: a letter or digit, then letters, digits and . _ : @ - (no '/')"
)
_RUN_ID = re.compile(RUN_ID_PATTERN)


def check_run_id(run_id: object) -> str:
    """`run_id` itself, or a ValueError that says what a run id may be."""
    if not isinstance(run_id, str) or len(run_id) > RUN_ID_MAX_LENGTH or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"invalid run id {run_id!r}: {RUN_ID_DESCRIPTION}")
    return run_id
