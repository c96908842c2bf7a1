"""Lot genealogy: slurry batch -> mother coil (+ web position) -> slit daughter roll -> cell.

Plus the lots that join at assembly: anode rolls (from the anode shop: anode slurry batch -> anode coil ->
anode roll, no readings), electrolyte lots (shared by all lines), formation channel and aging slot. Ids are
readable and sortable, e.g. ``L1-SB0003`` (slurry batch), ``L1-C0009`` (coil), ``L1-C0009-S2`` (lane 2 of
that coil), ``L1-AR0004`` / ``L1-AC0001`` / ``L1-ASB0000`` (anode roll / coil / batch), ``EL-081412``
(electrolyte lot), ``L1-FC017`` (formation channel), ``L1-AS03117`` (aging rack 03, slot 117), cells
``L1-0001234``.

Batches and coils made before the run (the inventory the first cells are built from) get ids too;
they simply have no readings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .recipes import RECIPES

if TYPE_CHECKING:
    from .line import LineParams
    from .timeline import Timeline

GENEALOGY_COLUMNS = ("lot_id", "kind", "parent_id", "line", "recipe")


def _fmt(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """``prefix + zero-padded number`` for each element, formatting each distinct number once."""
    codes, uniques = pd.factorize(np.asarray(numbers))
    strings = np.array([f"{prefix}{int(u):0{width}d}" for u in uniques], dtype=object)
    return strings[codes] if len(codes) else np.empty(0, dtype=object)


class Genealogy:
    """Collects every lot the simulated lines make or use; ``frame()`` returns the lot table."""

    def __init__(self) -> None:
        self._offsets: dict[str, int] = {}
        self._coil_offsets: dict[str, int] = {}
        self._rows: list[pd.DataFrame] = []

    # batches and coils are numbered from the first one any cell of the run can use
    def add_batches(self, line: str, b_all: np.ndarray, rid_b: np.ndarray, tl: Timeline, p: LineParams) -> None:
        self._offsets[line] = -int(b_all.min())
        ids = self.batch_ids(line, b_all)
        self._rows.append(pd.DataFrame({"lot_id": ids, "kind": "slurry_batch", "parent_id": None, "line": line,
                                        "recipe": np.array([r.name for r in RECIPES], dtype=object)[rid_b]}))
        per = round(p.batch_s / p.coil_s)
        coils = np.arange(int(b_all.min()) * per, (int(b_all.max()) + 1) * per)
        self._coil_offsets[line] = -int(coils.min())
        parent = self.batch_ids(line, np.floor_divide(coils, per))
        recipe = np.array([r.name for r in RECIPES], dtype=object)[rid_b[np.floor_divide(coils, per) - b_all.min()]]
        coil_ids = self.coil_ids(line, coils)
        self._rows.append(pd.DataFrame({"lot_id": coil_ids, "kind": "coil", "parent_id": parent, "line": line,
                                        "recipe": recipe}))
        for lane in range(p.lanes):
            self._rows.append(pd.DataFrame({"lot_id": coil_ids + f"-S{lane + 1}", "kind": "cathode_roll",
                                            "parent_id": coil_ids, "line": line, "recipe": recipe}))

    def batch_ids(self, line: str, b: np.ndarray) -> np.ndarray:
        return _fmt(f"{line}-SB", np.asarray(b) + self._offsets[line], 4)

    def coil_ids(self, line: str, coil: np.ndarray) -> np.ndarray:
        return _fmt(f"{line}-C", np.asarray(coil) + self._coil_offsets[line], 4)

    def cells(self, line: str, k: np.ndarray, coil: np.ndarray, lane: np.ndarray, anode_roll: np.ndarray,
              electrolyte_lot: np.ndarray, channel: np.ndarray, slot: np.ndarray) -> dict[str, np.ndarray]:
        """Id columns of the cells ``k`` (their position in the line's winding order)."""
        coil_ids = self.coil_ids(line, coil)
        lane_s = np.array([f"-S{i + 1}" for i in range(int(lane.max()) + 1 if lane.size else 0)], dtype=object)
        anode = _fmt(f"{line}-AR", anode_roll - int(anode_roll.min()) if anode_roll.size else anode_roll, 4)
        lots = _fmt("EL-", electrolyte_lot, 6)
        out = {
            "cell_id": np.array([f"{line}-{i:07d}" for i in k.tolist()], dtype=object),
            "coil_id": coil_ids,
            "cathode_roll_id": coil_ids + lane_s[lane] if lane.size else coil_ids,
            "anode_roll_id": anode,
            "electrolyte_lot": lots,
            "formation_channel": _fmt(f"{line}-FC", channel, 3),
            "aging_slot": _fmt(f"{line}-AS", (slot // 200) % 40 * 1000 + slot % 200, 5),
        }
        # anode rolls come from the anode shop: 4 lanes per anode coil, 3 coils per anode slurry batch
        n_roll = np.unique(anode_roll - int(anode_roll.min())) if anode_roll.size else np.zeros(0, dtype=np.int64)
        rolls, coils, batches = (_fmt(f"{line}-AR", n_roll, 4), _fmt(f"{line}-AC", n_roll // 4, 4),
                                 _fmt(f"{line}-ASB", n_roll // 12, 4))
        self._rows += [
            pd.DataFrame({"lot_id": rolls, "kind": "anode_roll", "parent_id": coils, "line": line, "recipe": None}),
            pd.DataFrame({"lot_id": coils, "kind": "anode_coil", "parent_id": batches, "line": line, "recipe": None}),
            pd.DataFrame({"lot_id": batches, "kind": "anode_slurry_batch", "parent_id": None, "line": line,
                          "recipe": None}),
            pd.DataFrame({"lot_id": pd.unique(lots), "kind": "electrolyte_lot", "parent_id": None, "line": None,
                          "recipe": None}),
        ]
        return out

    def frame(self) -> pd.DataFrame:
        if not self._rows:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in GENEALOGY_COLUMNS})
        df = pd.concat(self._rows, ignore_index=True)
        return df.drop_duplicates("lot_id", keep="first").reset_index(drop=True)[list(GENEALOGY_COLUMNS)]
