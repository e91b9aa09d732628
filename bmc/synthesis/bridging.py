"""BMC's Bridging phase (METHODS.md 1.1) and the quality gates every edit passes before it becomes a chosen
response.

An edit is kept when it is a small fix of the rejected response. It is turned down as
- ``unparseable``: an LLM editor's reply without a ``<revised>`` block (it answered instead of editing);
- ``truncated``: an LLM editor's reply that the token budget cut off before its block closed (the edit stops
  mid-way);
- ``empty``, ``no fix`` (the task editor could not parse y_l) or ``identical to rejected``;
- ``not_minimal``: its token edit distance to y_l is larger than y_w's (the edit moved further from y_l than
  the original chosen response is), or than ``max_edit_ratio`` x the length of y_l in tokens (null: no such
  bound);
- ``rejected by verifier`` (built-in tasks): it is still wrong.
``on_reject`` decides what happens to a pair whose edit is turned down: ``drop`` it, or ``keep_original``
(the pair stays with its original chosen response). The data report counts each reason
(``edit_rejections``), and a warning names the share turned down when it passes ``warn_drop_fraction``.

The editor's replies that gave no edit at all (``unparseable``, ``truncated``, ``empty``) are failures of the
editor itself, not of one pair: when more than ``max_failure_share`` of them fail, the stage stops with an
error that names the editor's backend and quotes a reply (:mod:`bmc.synthesis.failures`); below it the data
report gives their share (``editor_failure_share``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

from rapidfuzz.distance import Levenshtein
from transformers import PreTrainedTokenizerBase

from bmc.cache import cache_key
from bmc.data.tokenize import encode_texts
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.editors import Edit, EditGates, Editor, build_editor
from bmc.synthesis.failures import SETTING, ReplyFailures, check_failure_share
from bmc.synthesis.model_keys import model_config_key
from bmc.synthesis.store import resumable_map

log = logging.getLogger(__name__)


def bridge_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``data.bridge`` with its defaults; an unknown key or a ``fraction`` outside (0, 1] raises."""
    options = {"fraction": 1.0, "keep_original": False, "seed": 0}
    unknown = sorted(set(cfg) - set(options))
    if unknown:
        raise ValueError(f"data.bridge got unknown option(s) {unknown}; accepted: {list(options)}")
    options.update(cfg)
    if not 0 < options["fraction"] <= 1:
        raise ValueError(f"data.bridge.fraction must be in (0, 1], got {options['fraction']}")
    return options


def bridge(ctx: SynthesisContext, pairs: list[dict[str, str]]) -> list[dict[str, str]]:
    """(x, y_w, y_l) -> (x, edit(y_l; y_w), y_l) for ``data.bridge.fraction`` of the pairs, each edit through
    the gates above. ``data.bridge.keep_original`` keeps every original pair beside its bridged one."""
    options = bridge_options(ctx.cfg["bridge"])
    gates, editor_cfg = EditGates.split(ctx.editor_cfg)
    chosen_for_edit = set(
        random.Random(options["seed"]).sample(range(len(pairs)), round(options["fraction"] * len(pairs)))
    )
    to_edit = [pairs[i] for i in sorted(chosen_for_edit)]
    editor = build_editor(editor_cfg, task=ctx.verifier, examples=ctx.task_data.pref_examples,
                          task_type=ctx.task_data.name, precision=ctx.precision, device=ctx.device)  # fmt: skip

    def process(batch: list[dict[str, str]], first_index: int) -> list[dict[str, Any]]:
        edits = editor.edit_many(
            [p["prompt"] for p in batch], [p["chosen"] for p in batch], [p["rejected"] for p in batch]
        )
        return [{"edited": e.text, "problem": e.problem, "reply": e.reply} for e in edits]

    # the gates are not part of the key: changing them re-reads the same edits. "entry": entries since then hold
    # the reply of an edit that failed, and turn down cut-off replies that older ones accepted: those are not read
    payload = {"pairs": cache_key(to_edit), "editor": model_config_key(editor_cfg, "editor"), "entry": "truncated"}
    entries = resumable_map(ctx.cache_root, "edits", payload, to_edit, process, batch_size=16)
    edits = [Edit(e["edited"], e["problem"], e["reply"]) for e in entries]
    _check_failures(ctx, gates, editor, edits)
    remaining = iter(edits)
    rejections: dict[str, int] = {}
    out = []
    for i, pair in enumerate(pairs):
        if i not in chosen_for_edit:
            out.append(pair)
            continue
        edit = next(remaining)
        reason = edit_problem(ctx, pair, edit, gates.max_edit_ratio)
        if reason is None:
            out.append({**pair, "chosen": edit.text})
        else:
            rejections[reason] = rejections.get(reason, 0) + 1
            if gates.on_reject == "drop":
                ctx.report["dropped"][f"edit {reason}"] += 1
        if options["keep_original"] or (reason is not None and gates.on_reject == "keep_original"):
            out.append(pair)
    _report(ctx, gates, rejections, len(to_edit))
    return out


def _check_failures(ctx: SynthesisContext, gates: EditGates, editor: Editor, edits: list[Edit]) -> None:
    """Stop the stage when more than ``editor.max_failure_share`` of the editor's replies gave no edit, else
    report their share."""
    failures = ReplyFailures()
    for edit in edits:
        if edit.failed:
            failures.add(edit.problem, edit.reply or "")
    ctx.report["editor_failure_share"] = check_failure_share(
        failures, len(edits), gates.max_failure_share, stage="bridging", backend=repr(editor), what="edit",
        setting=f"editor.{SETTING}",
    )  # fmt: skip


def edit_problem(ctx: SynthesisContext, pair: dict[str, str], edit: Edit, max_edit_ratio: float | None) -> str | None:
    """Why ``edit`` of ``pair`` is turned down (the gates of the module docstring), or None to keep it."""
    if edit.problem is not None:
        return edit.problem
    if edit.text is None or not edit.text.strip():
        return "empty"
    if edit.text == pair["rejected"]:
        return "identical to rejected"
    edited, chosen, rejected = encode_texts(ctx.tokenizer, [edit.text, pair["chosen"], pair["rejected"]])
    distance = Levenshtein.distance(edited, rejected)
    if distance > Levenshtein.distance(chosen, rejected):
        return "not_minimal"
    if max_edit_ratio is not None and distance > max_edit_ratio * len(rejected):
        return "not_minimal"
    if ctx.verifier is not None and ctx.verifier.score(ctx.examples[pair["prompt"]], edit.text) < 1.0:
        return "rejected by verifier"
    return None


def _report(ctx: SynthesisContext, gates: EditGates, rejections: dict[str, int], calls: int) -> None:
    turned_down = sum(rejections.values())
    ctx.report["editor_calls"] = calls
    ctx.report["edits_accepted"] = (calls - turned_down) / max(calls, 1)
    ctx.report["edit_rejections"] = dict(sorted(rejections.items()))
    if gates.on_reject == "keep_original":
        ctx.report["edits_kept_original"] = turned_down
    if calls and turned_down / calls > gates.warn_drop_fraction:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(rejections.items()))
        action = "dropped" if gates.on_reject == "drop" else "kept with their original chosen response"
        log.warning(
            "bridging: %d of %d edits (%.0f%%) failed the quality gates (%s); their pairs were %s. Check the "
            "editor (its format, its size) before trusting these pairs (editor.warn_drop_fraction=%s)",
            turned_down, calls, 100 * turned_down / calls, reasons, action, gates.warn_drop_fraction,
        )  # fmt: skip


def mean_token_edit_distance(tokenizer: PreTrainedTokenizerBase, pairs: list[dict[str, str]]) -> float:
    """Mean Levenshtein distance between chosen and rejected response token ids."""
    if not pairs:
        return 0.0
    chosen = encode_texts(tokenizer, [p["chosen"] for p in pairs])
    rejected = encode_texts(tokenizer, [p["rejected"] for p in pairs])
    return sum(Levenshtein.distance(c, r) for c, r in zip(chosen, rejected)) / len(pairs)
