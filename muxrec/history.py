"""Behaviour histories: sequence features derived from earlier interactions (`history:` in the spec).

    - name: history
      kind: sequence
      table: item_id             # shares the item table
      max_len: 50
      history: {user: user_id, item: item_id, time: timestamp, label: click, splits: [train]}

For a row of user u at time t, the history is the items u interacted with strictly before t, in rows
of the listed splits whose label is positive, most recent first, at most max_len of them. Only rows of
`splits` contribute (train by default), so no label of a valid or test row ever reaches a feature, for
any row. Ties in time are excluded (strictly before), so a row never sees itself or its batch-mates.

This needs every row of a user at once: preprocessing groups rows by user with Ray Data and runs it
on each group (muxrec.pipelines.prepare.with_histories), before the per-block steps. At serving time
the caller sends the history list itself (from its feature store).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from muxrec.encoding import label_mask, split_of
from muxrec.errors import DataError
from muxrec.spec import Feature, FeatureSpec


def _positive(table: pa.Table, spec: FeatureSpec, label: str | None) -> np.ndarray:
    if label is None:
        return np.ones(table.num_rows, dtype=bool)
    matches = [lab for lab in spec.labels if lab.name == label]
    if not matches:
        raise DataError(f"history label {label!r} is not a label of spec {spec.name!r} ({spec.label_names})")
    return label_mask(table, matches[0]).to_numpy(zero_copy_only=False)


def history_column(table: pa.Table, spec: FeatureSpec, feature: Feature) -> pa.Array:
    """list<string> of item ids, most recent first, for every row of `table`."""
    rule = feature.history
    missing = [c for c in (rule.user, rule.item, rule.time) if c not in table.column_names]
    if missing:
        raise DataError(f"history {feature.name!r}: missing column(s) {missing}")
    users = table.column(rule.user).to_numpy(zero_copy_only=False)
    items = pc.cast(table.column(rule.item), pa.string()).to_numpy(zero_copy_only=False)
    times = table.column(rule.time).to_numpy(zero_copy_only=False).astype(np.float64)
    eligible = _positive(table, spec, rule.label) & np.isin(split_of(table, spec).to_numpy(zero_copy_only=False),
                                                            rule.splits)
    n, max_len = table.num_rows, feature.max_len
    lengths = np.zeros(n, dtype=np.int64)
    chunks: list[tuple[np.ndarray, np.ndarray]] = []  # (rows, their histories) per user
    order = np.lexsort((times, users))  # by user, then time
    boundaries = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1], True])
    for start, stop in zip(boundaries[:-1], boundaries[1:]):
        rows = order[start:stop]  # one user's rows, by time
        events = rows[eligible[rows]]
        event_times, event_items = times[events], items[events]
        seen = np.searchsorted(event_times, times[rows], side="left")  # events strictly before each row
        histories = [event_items[max(0, k - max_len):k][::-1] for k in seen]
        lengths[rows] = [len(h) for h in histories]
        chunks.append((rows, histories))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.empty(offsets[-1], dtype=object)
    for rows, histories in chunks:
        for row, history in zip(rows, histories):
            values[offsets[row]:offsets[row + 1]] = history
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.string()))


def add_histories(table: pa.Table, spec: FeatureSpec, user: str | None = None) -> pa.Table:
    """`table` with one list column per history feature (named after the feature).

    With `user`, only the features whose history is keyed by that column (the table then needs to
    hold every row of its users, not every row).
    """
    for feature in spec.features:
        if feature.history is not None and user in (None, feature.history.user):
            column = history_column(table, spec, feature)
            if feature.name in table.column_names:
                table = table.drop_columns([feature.name])
            table = table.append_column(feature.name, column)
    return table
