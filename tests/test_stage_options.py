"""Declared option constraints (curate.stages.constraints): every stage option is declared and
checked in one place with one message form, `__init__` only stores, and `[report]` keys are
declared once. The generated invalid values per option are in tests/test_properties.py."""

from __future__ import annotations

import inspect
import math
import re

import pytest

from curate.engine.runner import run_stage
from curate.errors import UsageError
from curate.report.config import REPORT_DEFAULTS, REPORT_OPTIONS, ReportSettings, parse_report_table
from curate.stages.base import StageContext, available_kinds, stage_class
from curate.stages.constraints import (
    Boolean,
    Interval,
    IsNone,
    ListOf,
    Options,
    Rule,
    Text,
    check_options,
    describe_all,
    toml_value,
)
from curate.stages.minhash import MinHashDedup

KINDS = available_kinds()


@pytest.mark.parametrize("kind", KINDS)
def test_every_init_option_declares_a_constraint(kind):
    cls = stage_class(kind)
    signature = inspect.signature(cls.__init__).parameters
    options = [name for name in signature if name != "self"]
    assert options == cls.option_names(), f"'{kind}' takes an option that is not keyword: {options}"
    assert set(cls.option_constraints) == set(options), (
        f"'{kind}': declare option_constraints for {sorted(set(options) - set(cls.option_constraints))}, "
        f"drop {sorted(set(cls.option_constraints) - set(options))}"
    )
    assert all(cls.option_constraints[name] for name in options)
    assert all(rule.option in options for rule in cls.option_rules)


@pytest.mark.parametrize("kind", KINDS)
def test_init_only_stores(kind):
    """Any value, however wrong, is stored as given (sklearn's rule: no logic in __init__)."""
    cls = stage_class(kind)
    for name in cls.option_names():
        sentinel = object()
        assert cls(**{name: sentinel}).get_params()[name] is sentinel
    assert cls().get_params() == cls.option_defaults()


def _cpu_or_cuda(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}")


def test_interval():
    closed = Interval(int, 2, 1024)
    assert closed.accepts(2) and closed.accepts(1024) and not closed.accepts(1) and not closed.accepts(1025)
    assert not closed.accepts(True) and not closed.accepts(2.0) and not closed.accepts("2")
    assert closed.describe() == "an int in [2, 1024]"
    half_open = Interval(float, 0, 1, closed="right")
    assert (
        half_open.accepts(1)
        and half_open.accepts(0.5)
        and not half_open.accepts(0)
        and not half_open.accepts(math.nan)
    )
    assert half_open.describe() == "a number in (0, 1]"
    assert Interval(int, 1, None).describe() == "an int >= 1"
    assert Interval(float, 0, None, closed="neither").describe() == "a number > 0"
    assert math.nextafter(0, -math.inf) in Interval(float, 0, 1).invalid_values()
    assert 0 in half_open.invalid_values() and 2 in Interval(int, 0, 1).invalid_values()


@pytest.mark.parametrize(
    "constraint",
    [
        Interval(int, 2, 1024),
        Interval(float, -1, 1),
        Interval(float, 0, 1, closed="neither"),
        Options(("word", "char")),
        Boolean(),
        Text(),
        Text(nonempty=True),
        Rule(_cpu_or_cuda, "cpu or cuda", invalid=["gpu"]),
        ListOf(Interval(float, 0, None, closed="neither")),
    ],
    ids=repr,
)
def test_invalid_values_are_refused(constraint):
    assert constraint.invalid_values()
    assert not any(constraint.accepts(v) for v in constraint.invalid_values())


def test_descriptions():
    assert Options(("word", "char")).describe() == "one of 'word', 'char'"
    assert Options(("auto",)).describe() == "'auto'"
    assert Text(nonempty=True).describe() == "a non-empty string" and not Text(nonempty=True).accepts("")
    assert describe_all([Boolean(), Options(("auto",)), IsNone()]) == "a bool (true or false), 'auto' or None"
    assert ListOf(Interval(float, 0, None, closed="neither"), nonempty=False).accepts([])
    assert toml_value(False) == "false" and toml_value("word") == '"word"' and toml_value(0.8) == "0.8"


def test_one_message_form_names_the_option_the_value_and_the_default():
    with pytest.raises(UsageError) as caught:
        MinHashDedup.from_options({"threshold": 1.5}, where="p.toml (stage 1, minhash)")
    assert str(caught.value) == (
        "p.toml (stage 1, minhash): stage 'minhash': option 'threshold' must be a number in (0, 1], got 1.5"
        " -- fix: set threshold = 0.8, or another value that fits"
    )
    with pytest.raises(
        UsageError,
        match=re.escape("option 'normalize' must be a bool (true or false), got 'yes' -- fix: set normalize = false"),
    ):
        stage_class("exact").from_options({"normalize": "yes"})


@pytest.mark.parametrize(
    "kind, options, option",
    [
        ("minhash", {"bands": 20, "rows": 10}, "bands"),
        ("minhash", {"rows": 200}, "rows"),
        ("minhash", {"false_positive_weight": 0, "false_negative_weight": 0}, "false_negative_weight"),
        ("loss_clusters", {}, "loss_column"),
        ("loss_clusters", {"loss_column": "a", "label_column": "b"}, "loss_column"),
        ("loss_clusters", {"loss_column": "a", "fraction": 0.5}, "fraction"),
        ("prototypes", {"balance": "label"}, "balance"),
        ("prototypes", {"label_column": "label"}, "balance"),
    ],
)
def test_rules_across_options(kind, options, option):
    with pytest.raises(UsageError, match=f"stage '{kind}': option '{option}' must be"):
        stage_class(kind).from_options(options)


def test_rules_pass_what_fits_together():
    assert MinHashDedup.from_options({"bands": 16, "rows": 8}).lsh_shape() == (16, 8)
    stage_class("loss_clusters").from_options({"label_column": "label", "keep": "hard", "fraction": 0.5})
    stage_class("prototypes").from_options({"balance": "label", "label_column": "label"})


def test_a_stage_built_directly_gets_the_same_error():
    stage = MinHashDedup(ngram=0)  # __init__ stores it
    with pytest.raises(UsageError, match="stage 'minhash': option 'ngram' must be an int >= 1, got 0"):
        stage.validate_options()
    with pytest.raises(UsageError, match="option 'ngram'"):
        check_options(MinHashDedup, {"ngram": 0})


def test_run_stage_checks_a_directly_built_stage_before_it_fits(tmp_path):
    ctx = StageContext(name="minhash", work_dir=tmp_path / "work")
    with pytest.raises(UsageError, match="option 'bands'"):
        run_stage(MinHashDedup(bands=200), None, ctx, tmp_path / "stage")
    assert not ctx.work_dir.exists()


# --- [report] ---------------------------------------------------------------------------


def test_report_options_are_declared_once():
    names = [option.name for option in REPORT_OPTIONS]
    assert len(names) == len(set(names))
    assert list(REPORT_DEFAULTS) == names
    settings = parse_report_table({})
    assert settings == ReportSettings() and {n: getattr(settings, n) for n in names} == REPORT_DEFAULTS
    assert parse_report_table({"budget": 1e6}).budget == 1e6  # a field now, not only type-checked
    for option in REPORT_OPTIONS:
        assert option.default is None or any(c.accepts(option.default) for c in option.constraints), option.name


@pytest.mark.parametrize("option", REPORT_OPTIONS, ids=lambda o: o.name)
def test_each_report_key_gets_its_own_message(option):
    for value in [v for c in option.constraints for v in c.invalid_values() if v is not None]:
        if any(c.accepts(value) for c in option.constraints):
            continue
        with pytest.raises(
            UsageError,
            match=re.escape(f"[report] {option.name} must be {describe_all(option.constraints)}, got {value!r}"),
        ):
            parse_report_table({option.name: value}, "p.toml")


def test_report_lists_become_floats_and_none_means_unset():
    settings = parse_report_table({"budgets": [1, 10], "epochs": [1], "mix_epochs": [], "law": None})
    assert (
        settings.budgets == [1.0, 10.0]
        and settings.epochs == [1.0]
        and settings.mix_epochs == []
        and settings.law is None
    )
