"""The row layouts of published preference datasets, read as they are: each turns a row into ``{prompt, chosen,
rejected}`` where the prompt is a string or a message list (rendered later, once, by :mod:`bmc.data.render`)
and the responses are strings.

=====================  =======================================================  ==============================
layout                 a row                                                    prompt
=====================  =======================================================  ==============================
``standard``           ``prompt``, ``chosen``, ``rejected`` strings             the ``prompt`` column
``standard_implicit``  ``chosen``, ``rejected`` strings, no ``prompt``          their shared leading text
``conversational``     ``chosen``/``rejected`` message lists (``{role,          the ``prompt`` messages, or
                       content}``), with or without a ``prompt`` column         the messages the two share
``hh_rlhf``            ``chosen``/``rejected`` transcripts                      the shared transcript up to its
                       ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` (HH-RLHF)       last ``\\n\\nAssistant:``, as
                                                                                messages
``ranked``             a prompt and ``completions`` with scores (raw            the ``prompt`` column
                       UltraFeedback): :mod:`bmc.data.ranked`
=====================  =======================================================  ==============================

A conversational row may also carry a ``prompt`` string (UltraFeedback-binarized): it must then equal the
last user turn of the shared messages. ``task.format: auto`` takes the layout from the file's first row;
every row must then fit it. A row that does not raises :class:`DataError` naming the file, the row and the
field. A layout is a function ``(row, columns, where) -> pair`` registered in :data:`bmc.plugins.LAYOUTS`
(``ranked``, several pairs a row, is :mod:`bmc.data.ranked`'s). An empty response is no error in any layout:
the pair is read, then dropped and counted with the others (``empty chosen`` / ``empty rejected``,
:func:`bmc.data.hf_prefs.filter_pairs`); an empty turn of a prompt's conversation is an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from bmc.plugins import LAYOUTS

ROLES = ("system", "user", "assistant")
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


class DataError(ValueError):
    """A bad row or file: the message names the file, the row and the field."""


def kind_of(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)


def _check_turns(messages: list[dict[str, str]], where: str) -> None:
    """Known roles and string contents."""
    for m in messages:
        if m["role"] not in ROLES:
            raise DataError(f"{where}: unknown role {m['role']!r}; roles are {list(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: message content must be a string, got {type(m['content']).__name__}")


def _check_alternation(messages: list[dict[str, str]], where: str) -> None:
    roles = [m["role"] for m in messages if m["role"] != "system"]
    for previous, current in zip(roles, roles[1:]):
        if previous == current:
            raise DataError(f"{where}: roles must alternate between user and assistant, got {roles}")


def _check_messages(messages: list[dict[str, str]], where: str) -> None:
    """A prompt's conversation: known roles, non-empty string contents, alternating turns."""
    _check_turns(messages, where)
    for m in messages:
        if not m["content"].strip():
            raise DataError(f"{where}: an empty {m['role']} turn")
    _check_alternation(messages, where)


def _shared_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items (characters, messages) two sequences share."""
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    return shared


def _fields(row: dict[str, Any], columns: dict[str, str], names: tuple[str, ...], where: str) -> list[Any]:
    missing = [columns[n] for n in names if columns[n] not in row]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; the row has {sorted(row)}")
    return [row[columns[n]] for n in names]


def _strings(values: dict[str, Any], columns: dict[str, str], where: str) -> None:
    for name, value in values.items():
        if not isinstance(value, str):
            raise DataError(f"{where}, field {columns[name]!r}: expected a string, got {kind_of(value)}")


@LAYOUTS.register("standard")
def standard(row: dict[str, Any], columns: dict[str, str], where: str) -> dict[str, Any]:
    prompt, chosen, rejected = _fields(row, columns, ("prompt", "chosen", "rejected"), where)
    _strings({"prompt": prompt, "chosen": chosen, "rejected": rejected}, columns, where)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


@LAYOUTS.register("standard_implicit")
def standard_implicit(row: dict[str, Any], columns: dict[str, str], where: str) -> dict[str, Any]:
    """The prompt is the text the two responses share, cut back to a word boundary (a response starts with the
    space before its first word, as in the explicit layout)."""
    chosen, rejected = _fields(row, columns, ("chosen", "rejected"), where)
    _strings({"chosen": chosen, "rejected": rejected}, columns, where)
    shared = _shared_length(chosen, rejected)
    while shared and not chosen[shared - 1].isspace() and shared < len(chosen) and not chosen[shared].isspace():
        shared -= 1  # inside a word: the word belongs to the responses
    shared -= shared > 0 and chosen[shared - 1] == " "  # the space before a response's first word is its own
    if not chosen[:shared].strip():
        raise DataError(
            f"{where}: missing column(s) [{columns['prompt']!r}]: and fields {columns['chosen']!r} and "
            f"{columns['rejected']!r} share no leading text to take the prompt from (task.format=standard_implicit)"
        )
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


@LAYOUTS.register("conversational")
def conversational(row: dict[str, Any], columns: dict[str, str], where: str) -> dict[str, Any]:
    chosen, rejected = _fields(row, columns, ("chosen", "rejected"), where)
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not is_messages(value):
            raise DataError(f"{where}, field {columns[name]!r}: expected a list of {{role, content}} messages")
    prompt = row.get(columns["prompt"])
    if prompt is None or isinstance(prompt, str):  # implicit: the shared leading messages
        # every conversation keeps at least its last message as the response
        shared = min(_shared_length(chosen, rejected), min(len(chosen), len(rejected)) - 1)
        text, (prompt, chosen, rejected) = prompt, (chosen[:shared], chosen[shared:], rejected[shared:])
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        if text is not None and (not users or users[-1].strip() != text.strip()):
            raise DataError(
                f"{where}, field {columns['prompt']!r}: {text[:60]!r} is not the conversation's last user turn "
                f"({users[-1][:60] if users else None!r})"
            )
    if not is_messages(prompt):
        raise DataError(f"{where}, field {columns['prompt']!r}: must be a message list in conversational rows")
    _check_messages(prompt, f"{where}, field {columns['prompt']!r}")
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        _check_turns(messages, f"{where}, field {columns[name]!r}")  # an empty response is dropped later
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise DataError(f"{where}, field {columns[name]!r}: expected one final assistant message")
    _check_alternation(prompt + chosen, f"{where}, field {columns['prompt']!r}+{columns['chosen']!r}")
    return {"prompt": prompt, "chosen": chosen[0]["content"], "rejected": rejected[0]["content"]}


@LAYOUTS.register("hh_rlhf")
def hh_rlhf(row: dict[str, Any], columns: dict[str, str], where: str) -> dict[str, Any]:
    """The shared transcript up to its last ``\\n\\nAssistant:`` is the prompt, its turns become messages (so the
    chat template applies); what follows in each transcript is the response."""
    chosen, rejected = _fields(row, columns, ("chosen", "rejected"), where)
    _strings({"chosen": chosen, "rejected": rejected}, columns, where)
    shared = _shared_length(chosen, rejected)
    cut = chosen.rfind("\n\nAssistant:", 0, shared)
    if cut < 0:
        raise DataError(
            f"{where}, fields {columns['chosen']!r}/{columns['rejected']!r}: the transcripts share no prefix "
            "ending in '\\n\\nAssistant:' (an HH-RLHF row is one conversation with two last answers)"
        )
    start = cut + len("\n\nAssistant:")
    parts = _HH_TURN.split(chosen[:cut])
    if parts[0].strip() or len(parts) < 3:
        raise DataError(f"{where}, field {columns['chosen']!r}: a transcript must start with '\\n\\nHuman:'")
    prompt = [{"role": "user" if speaker == "Human" else "assistant", "content": text.strip()}
              for speaker, text in zip(parts[1::2], parts[2::2])]  # fmt: skip
    _check_messages(prompt, f"{where}, field {columns['chosen']!r}")
    if prompt[-1]["role"] != "user":
        raise DataError(f"{where}, field {columns['chosen']!r}: the last turn before the answer must be Human's")
    return {"prompt": prompt, "chosen": chosen[start:].strip(), "rejected": rejected[start:].strip()}


def detect_layout(row: dict[str, Any], columns: dict[str, str]) -> str:
    """The layout of a file, from its first row's columns and values (``ranked``: a ``completions`` list,
    read by :mod:`bmc.data.ranked`)."""
    if isinstance(row.get(columns.get("completions", "completions")), list):
        return "ranked"
    chosen, rejected = row.get(columns["chosen"]), row.get(columns["rejected"])
    if is_messages(chosen) and is_messages(rejected):
        return "conversational"
    if columns["prompt"] in row:
        return "standard"
    if all(isinstance(t, str) and t.startswith("\n\nHuman:") for t in (chosen, rejected)):
        return "hh_rlhf"
    return "standard_implicit"
