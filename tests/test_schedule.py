"""The learning-rate schedule: linear warmup then cosine decay, as transformers computes it."""

from __future__ import annotations

import pytest
import torch

from bmc.schedule import cosine_with_warmup


@pytest.mark.parametrize("warmup,total", [(0, 10), (3, 20), (10, 10), (5, 7)])
def test_cosine_with_warmup_matches_transformers(warmup: int, total: int) -> None:
    from transformers import get_cosine_schedule_with_warmup

    def factors(make) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = make(optimizer, warmup, total)
        values = []
        for _ in range(total + 2):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return values

    ours = factors(cosine_with_warmup)
    assert ours == pytest.approx(factors(get_cosine_schedule_with_warmup), abs=1e-12)
    if warmup:
        assert ours[0] == 0.0 and ours[warmup] == pytest.approx(1.0)
    if warmup < total:
        assert ours[total] == pytest.approx(0.0, abs=1e-12)
