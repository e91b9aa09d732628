"""The LightningModule of listwise preference optimisation: K responses per prompt as one batch.

A batch holds B ranked lists (:class:`bmc.data.lists.ListDataModule`): each list's responses in consecutive rows,
best first, with ``list_index``, ``ranks`` and, where the data has them, ``scores``. Every row is scored as in
pairwise training (policy, reference, token weighting: BMC marks of each response against the best one), the rows
are gathered into lists (:func:`bmc.losses.ranked_logps.ranked_from_rows`) and the listwise loss takes them. A
regularizer acts on each list's best and worst response, as on a pair's chosen and rejected: ``dpop`` lowers the
best response's score inside the loss, ``nll``/``bcr`` add their penalty on the best response. The logged
rewards, log-probs and accuracies are those of each list's best and worst response. With ``share_prompt`` a list's
prompt runs once for its K responses (:func:`bmc.logprobs.shared_prompt_token_logps`).
"""

from __future__ import annotations

import torch

from bmc.losses import LossOutput, SequenceLogps
from bmc.losses.ranked_logps import RankedLogps, ranked_from_rows
from bmc.module import PreferenceModule
from bmc.row_scores import RowScores


class ListwisePreferenceModule(PreferenceModule):
    """:class:`PreferenceModule` for a listwise loss on ranked lists (module docstring)."""

    listwise = True

    def _lists(self, batch: dict[str, torch.Tensor], rows: RowScores, weighted: bool) -> RankedLogps:
        return ranked_from_rows(
            batch["list_index"],
            batch["ranks"],
            rows.score if weighted else rows.raw,
            rows.lengths,
            rows.ref_score if weighted else rows.ref_raw,
            batch.get("scores"),
        )

    def _loss(self, batch: dict[str, torch.Tensor], rows: RowScores) -> tuple[LossOutput, SequenceLogps]:
        lists = self._lists(batch, rows, weighted=True)
        unweighted = self._lists(batch, rows, weighted=False).best_worst()
        best = self.regularizer.adjust(lists.best_worst(), unweighted).chosen
        return self.loss_fn(lists.with_best(best)), unweighted
