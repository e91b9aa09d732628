"""Failed replies of the stages that ask a model for a verdict or an edit, and the share of them past which such
a stage stops instead of going on with ties or dropped pairs.

A reply fails when it gives the stage nothing to use: an LLM judge's reply without a verdict, an LLM editor's
without an edit. Each failure has a reason: ``unparseable`` (no ``[[A]]``/``[[B]]``/``[[C]]`` verdict, no
``<revised>`` block), ``truncated`` (the token budget cut the reply off before its verdict or the end of its
edit) or ``empty``. A stage counts them over all its items, those read from its cache included, and
:func:`check_failure_share` stops it with :class:`ReplyFailureError` when more than ``max_failure_share`` of
its replies failed (``judge.max_failure_share``, ``editor.max_failure_share``; default
:data:`DEFAULT_MAX_FAILURE_SHARE`): a judge that never answers in its format would otherwise tie every
comparison, and an editor that never edits would drop every pair. Below the threshold the stage reports the
share.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: the setting's name in a judge's and an editor's config
SETTING = "max_failure_share"
#: more than a fifth of the replies failing says the backend (its model, format or budget) is wrong for the job
DEFAULT_MAX_FAILURE_SHARE = 0.2
#: characters kept from each end of a quoted reply: its start shows what the model wrote instead, its end
#: where the verdict or the closing tag is missing
QUOTE_CHARS = 150


class ReplyFailureError(RuntimeError):
    """More of a stage's replies failed than its ``max_failure_share`` allows."""


def quote(reply: str) -> str:
    """``reply``, or its first and last :data:`QUOTE_CHARS` characters around ``...`` when longer."""
    return reply if len(reply) <= 2 * QUOTE_CHARS else f"{reply[:QUOTE_CHARS]} ... {reply[-QUOTE_CHARS:]}"


@dataclass
class ReplyFailures:
    """Failed replies by reason, and the first of them (:func:`quote`-d) for an error message to show."""

    counts: Counter[str] = field(default_factory=Counter)
    example: str | None = None

    @property
    def total(self) -> int:
        """How many replies failed, whatever the reason."""
        return sum(self.counts.values())

    def add(self, reason: str, reply: str) -> None:
        """Count one failed reply."""
        self.counts[reason] += 1
        if self.example is None:
            self.example = quote(reply)

    def entry(self) -> dict[str, Any]:
        """The JSON fields a cache entry keeps them in, read back by :meth:`from_entries`."""
        return {"failures": dict(self.counts), "failed_reply": self.example}

    @classmethod
    def from_entries(cls, entries: Iterable[Mapping[str, Any]]) -> ReplyFailures:
        """The failures of a stage's cache entries (each with :meth:`entry`'s fields), summed; the first
        entry's quoted reply."""
        total = cls()
        for entry in entries:
            total.counts.update(entry["failures"])
            total.example = total.example or entry["failed_reply"]
        return total


def check_limit(value: float, where: str) -> float:
    """``value`` as a ``max_failure_share`` setting (``where``, e.g. ``"judge"``): a share in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{where}.{SETTING} must be a share in [0, 1], got {value!r}")
    return float(value)


def split_limit(cfg: Mapping[str, Any], where: str) -> tuple[float, dict[str, Any]]:
    """(the ``max_failure_share`` of a judge's or editor's config, checked, or the default; the config without
    it): the threshold is the stage's setting, neither the model's option nor part of the cache key (changing
    it re-reads the same replies)."""
    options = dict(cfg)
    return check_limit(options.pop(SETTING, DEFAULT_MAX_FAILURE_SHARE), where), options


def check_failure_share(
    failures: ReplyFailures, replies: int, limit: float, *, stage: str, backend: str, what: str, setting: str
) -> float:
    """The share of ``replies`` that failed; :class:`ReplyFailureError` when it is above ``limit``.

    The error names the ``stage``, the ``backend`` (its repr: the served model and its URL, or a local
    model's folder), what a reply lacked (``what``: ``"verdict"``, ``"edit"``), the count by reason, the share
    against the ``setting`` that sets ``limit``, and quotes a failed reply. Below the limit, failures are logged
    as a warning with the same numbers and the caller reports the share.
    """
    share = failures.total / replies if replies else 0.0
    if not failures.total:
        return share
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted((+failures.counts).items()))  # those that occurred
    summary = f"{failures.total} of {replies} replies ({share:.0%}) of {backend} gave no {what} ({reasons})"
    if share > limit:
        raise ReplyFailureError(
            f"{stage}: {summary}, more than {setting}={limit}. For example: {failures.example!r}. Check the model "
            f"behind it, its answer format and its token budget (max_tokens), or raise {setting} to go on "
            "with these replies"
        )
    log.warning("%s: %s; within %s=%s, going on", stage, summary, setting, limit)
    return share
