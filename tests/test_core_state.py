"""LineScorer's per-batch state helpers: the open cells and the forward fill of carried cell features."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellwatch.detect.core import OpenCells, _carry_forward


def _pandas_reference(cells: np.ndarray, own: np.ndarray, stored: dict[str, np.ndarray]) -> np.ndarray:
    """The frame version the NumPy code replaced: stored rows first, then the events; groupby(cell).ffill()."""
    have = [c for c in dict.fromkeys(cells) if c in stored]
    acc = pd.concat([
        pd.DataFrame({"cell_id": have, "order": -1}).join(
            pd.DataFrame(np.asarray([stored[c] for c in have]).reshape(len(have), own.shape[1]))),
        pd.DataFrame({"cell_id": cells, "order": np.arange(len(cells))}).join(pd.DataFrame(own)),
    ], ignore_index=True).sort_values(["cell_id", "order"], kind="stable")
    cols = list(range(own.shape[1]))
    acc[cols] = acc.groupby("cell_id", sort=False)[cols].ffill()
    return acc.loc[acc["order"] >= 0].set_index("order").sort_index()[cols].to_numpy()


def test_carry_forward_matches_the_grouped_forward_fill():
    rng = np.random.default_rng(11)
    cells = rng.choice([f"c{i}" for i in range(40)], size=300).astype(object)
    own = rng.normal(size=(300, 7))
    own[rng.random(own.shape) < 0.6] = np.nan
    stored = {f"c{i}": np.where(rng.random(7) < 0.5, np.nan, rng.normal(size=7)) for i in range(0, 60, 2)}
    rows, last = _carry_forward(cells, own, stored)
    np.testing.assert_array_equal(rows, _pandas_reference(cells, own, stored))
    assert last == {c: int(np.flatnonzero(cells == c)[-1]) for c in set(cells)}


def test_carry_forward_without_stored_rows_or_events():
    rows, last = _carry_forward(np.array(["a", "a"], dtype=object), np.array([[1.0, np.nan], [np.nan, 2.0]]), {})
    np.testing.assert_array_equal(rows, [[1.0, np.nan], [1.0, 2.0]])
    assert last == {"a": 1}
    rows, last = _carry_forward(np.array([], dtype=object), np.zeros((0, 3)), {"a": np.ones(3)})
    assert rows.shape == (0, 3) and last == {}


def test_open_cells_close_and_keep_the_newest():
    cells = OpenCells()
    for i, c in enumerate(["a", "b", "c", "d"]):
        cells.rows[c], cells.arrival[c], cells.lots[c] = np.full(2, i), 10 * i, [f"lot-{c}"]
    cells.arrival["a"] = 99  # a's last event came last
    cells.close(["b", "zz"])
    assert set(cells.rows) == set(cells.arrival) == set(cells.lots) == {"a", "c", "d"}
    cells.keep_newest(2)
    assert set(cells.rows) == set(cells.lots) == {"a", "d"} and len(cells) == 2
