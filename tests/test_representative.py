from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from curate.algorithms.representative import (
    check_representative_column,
    parse_representative,
    pick_in_groups,
    pick_order,
    representative_key,
    rule_columns,
)
from curate.errors import UsageError


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("first", ("first", None)),
        ("longest", ("longest", None)),
        ("shortest", ("shortest", None)),
        ("max:q", ("max", "q")),
        ("min:quality score", ("min", "quality score")),
    ],
)
def test_parse_accepts_the_five_rules(rule, expected):
    assert parse_representative(rule) == expected


@pytest.mark.parametrize("rule", ["", "best", "max", "max:", "min: ", "first:x", "longest:text", "MAX:q", 3, None])
def test_parse_refuses_bad_rules_with_one_line(rule):
    with pytest.raises(ValueError) as err:
        parse_representative(rule)
    assert "\n" not in str(err.value)


def _table() -> pa.Table:
    return pa.table(
        {
            "text": ["abc", "a", None, "ééééé", ""],
            "q": [0.5, None, 2.0, float("nan"), -1.0],
            "n": pa.array([3, 1, None, 7, 0], pa.int64()),
        }
    )


def test_first_is_all_zeros():
    key = representative_key("first", _table(), "text")
    assert key.dtype == np.float64 and key.tolist() == [0.0] * 5


def test_length_rules_count_characters_not_bytes_and_put_nulls_last():
    assert representative_key("longest", _table(), "text").tolist() == [-3.0, -1.0, math.inf, -5.0, -0.0]
    assert representative_key("shortest", _table(), "text").tolist() == [3.0, 1.0, math.inf, 5.0, 0.0]


def test_column_rules_negate_max_and_send_null_and_nan_to_inf():
    assert representative_key("max:q", _table(), "text").tolist() == [-0.5, math.inf, -2.0, math.inf, 1.0]
    assert representative_key("min:q", _table(), "text").tolist() == [0.5, math.inf, 2.0, math.inf, -1.0]
    assert representative_key("max:n", _table(), "text").tolist() == [-3.0, -1.0, math.inf, -7.0, -0.0]


def test_key_works_on_record_batches_and_chunked_tables():
    table = pa.concat_tables([_table().slice(0, 2), _table().slice(2)])
    assert representative_key("min:q", table, "text").tolist()[4] == -1.0
    batch = _table().to_batches()[0]
    assert representative_key("shortest", batch, "text").tolist()[3] == 5.0


def test_pick_order_breaks_ties_by_ordinal():
    keys = np.array([1.0, 0.0, 0.0, math.inf])
    ordinals = np.array([0, 9, 4, 1])
    assert pick_order(keys, ordinals).tolist() == [2, 1, 0, 3]


def test_rule_columns():
    assert rule_columns("first", "text") == []
    assert rule_columns("longest", "text") == ["text"]
    assert rule_columns("max:q", "text") == ["q"]


def test_check_column_names_missing_and_non_numeric_columns():
    schema = _table().schema
    check_representative_column("max:q", schema, "dedup")
    check_representative_column("longest", schema, "dedup")
    with pytest.raises(UsageError, match="'zz'.*lacks"):
        check_representative_column("max:zz", schema, "dedup")
    with pytest.raises(UsageError, match="'text'.*not a number"):
        check_representative_column("min:text", schema, "dedup")


def test_pick_in_groups_takes_the_lowest_key_then_the_earliest_row():
    group = np.array([7, 7, 3, 7, 3, 9])
    keys = np.array([0.0, -2.0, 1.0, -2.0, 1.0, 5.0])
    ordinals = np.array([10, 12, 4, 11, 2, 0])
    # group 7: rows 12 and 11 tie at -2 -> 11 (position 3); group 3: tie at 1 -> row 2 (position 4)
    assert pick_in_groups(group, keys, ordinals).tolist() == [3, 3, 4, 3, 4, 5]
    assert pick_in_groups(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64)).tolist() == []


def test_pick_in_groups_prefers_a_real_value_over_a_null():
    group = np.zeros(3, np.int64)
    keys = representative_key("max:q", pa.table({"q": [None, float("nan"), -5.0]}), "text")
    assert pick_in_groups(group, keys, np.arange(3)).tolist() == [2, 2, 2]
