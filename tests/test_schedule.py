from __future__ import annotations

import pytest

from nag.recipe.schedule import lr_at


def test_warmup_decay_and_constant_ending() -> None:
    total, warm = 1000, 100
    lrs = [lr_at(s, total, 0.2, warm, 0.05, 0.5) for s in range(total)]
    assert lrs[0] == pytest.approx(0.2 / warm)
    assert lrs[warm - 1] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :], strict=False))
    floor_from = warm + 450
    assert lrs[floor_from] == pytest.approx(0.01)
    assert set(round(x, 12) for x in lrs[floor_from:]) == {0.01}
    assert lrs[warm + 225] == pytest.approx(0.2 * 0.05**0.5)  # exponential: half-way is the geometric mean
