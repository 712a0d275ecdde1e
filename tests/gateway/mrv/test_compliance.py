"""IED compliance tests (gateway/mrv/compliance.py), table-driven with hand-computed cases.

Directive 2010/75/EU Annex V Part 4 point 1 (large combustion plants): no validated monthly average above the
ELV, no validated daily average above 110 % of it, 95 % of the validated hourly averages not above 200 % of it.
Annex VI Part 8 point 1.1 (waste incineration): no daily average above the daily ELV, 97 % of the half-hourly
averages not above column B (= the daily ELV). ELV 100 mg/Nm³ below, so a value is its own percentage.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from gateway.mrv.compliance import COMPLIANCE_DEFAULTS, Compliance, ComplianceCheck, evaluate, share_passes
from gateway.mrv.config import RollupSection
from gateway.mrv.rollup import RULE_SETS, Aggregate, Period

DAY = datetime(2026, 5, 1, tzinfo=UTC)
INVALID = 900.0
"""the value an invalid period carries: never judged"""


def validated(values: list[float | None], *, base: Period = Period.HOUR) -> list[Aggregate]:
    step = timedelta(hours=1) if base is Period.HOUR else timedelta(minutes=30)
    return [
        Aggregate(
            "s", "gas", "so2", base, DAY + n * step, INVALID if v is None else v, 1, 1, v is not None, unit="mg/Nm3"
        )
        for n, v in enumerate(values)
    ]


def outcomes(
    values: list[float | None], rule_set: str = "ied-lcp"
) -> dict[ComplianceCheck, tuple[bool | None, int, int]]:
    rules = RULE_SETS[rule_set]
    found = evaluate(
        COMPLIANCE_DEFAULTS[rule_set], validated(values, base=rules.base), elv=100.0, rules=rules, zone=UTC
    )
    return {o.test: (o.passed, o.periods, o.periods_above) for o in found}


M, D, B = ComplianceCheck.MONTH_MEAN, ComplianceCheck.DAY_MEAN, ComplianceCheck.BASE_SHARE


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([100.0] * 24, {M: (True, 1, 0), D: (True, 1, 0), B: (True, 24, 0)}),
        ([110.0] * 24, {M: (False, 1, 1), D: (True, 1, 0), B: (True, 24, 0)}),
        ([110.0] * 23 + [110.24], {M: (False, 1, 1), D: (False, 1, 1), B: (True, 24, 0)}),
        ([50.0] * 23 + [500.0], {M: (True, 1, 0), D: (True, 1, 0), B: (True, 24, 1)}),
        ([50.0] * 22 + [201.0, 201.0], {M: (True, 1, 0), D: (True, 1, 0), B: (False, 24, 2)}),
        ([50.0] * 22 + [200.0, 200.0], {M: (True, 1, 0), D: (True, 1, 0), B: (True, 24, 0)}),
        ([50.0] * 21 + [None] * 3, {M: (True, 1, 0), D: (True, 1, 0), B: (True, 21, 0)}),
        ([50.0] * 20 + [None] * 4, {M: (True, 1, 0), D: (None, 0, 0), B: (True, 20, 0)}),
        ([None] * 24, {M: (None, 0, 0), D: (None, 0, 0), B: (None, 0, 0)}),
    ],
    ids=[
        "Annex V Part 4 (a): a monthly mean at the ELV complies",
        "(b) a daily mean at 110 % complies, (a) the month at 110 % does not",
        "(b) a daily mean of 110.01 % fails",
        "(d) 23 of 24 hours ≤ 200 % is 95.8 %: complies",
        "(d) 22 of 24 is 91.7 %: fails",
        "(d) exactly 200 % is within",
        "invalid hours are not judged (their value is never read); 3 invalid: the day stays valid",
        "> 3 invalid hours: the day is invalid and not judged (Annex V Part 3 point 10)",
        "nothing valid: no test passes or fails",
    ],
)
def test_large_combustion_plant_tests(
    values: list[float | None], expected: dict[ComplianceCheck, tuple[bool | None, int, int]]
) -> None:
    assert outcomes(values) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([100.0] * 47 + [101.0], {D: (False, 1, 1), B: (True, 48, 1)}),
        ([100.0] * 46 + [101.0] * 2, {D: (False, 1, 1), B: (False, 48, 2)}),
        ([90.0] * 46 + [110.0] * 2, {D: (True, 1, 0), B: (False, 48, 2)}),
        ([90.0] * 47 + [140.0], {D: (True, 1, 0), B: (True, 48, 1)}),
    ],
    ids=[
        "Annex VI Part 8 1.1(a): a daily mean of 100.02 % fails; (b) 47 of 48 half-hours is 97.9 %: complies",
        "(b) 46 of 48 is 95.8 % < 97 %: fails",
        "(a) a daily mean of 90.8 % complies while (b) fails",
        "(a) and (b) comply with one half-hour above column B",
    ],
)
def test_waste_incineration_tests(
    values: list[float | None], expected: dict[ComplianceCheck, tuple[bool | None, int, int]]
) -> None:
    assert outcomes(values, "ied-wi") == expected


@pytest.mark.parametrize(
    ("within", "periods", "share", "passes"),
    [(19, 20, 95.0, True), (18, 20, 95.0, False), (97, 100, 97.0, True), (96, 100, 97.0, False), (8322, 8760, 95, True),
     (8321, 8760, 95, False), (1, 1, 100.0, True), (0, 1, 100.0, False)],
    ids=["95 % exactly passes", "90 % fails", "97 % exactly passes", "96 % fails", "8,322 of 8,760 hours is 95.0 %",
         "8,321 of 8,760 is 94.99 %", "all within", "one above with 100 % required"],
)  # fmt: skip
def test_share_boundaries(within: int, periods: int, share: float, passes: bool) -> None:
    assert share_passes(within, periods, share) is passes


def test_the_monthly_mean_weighs_every_valid_hour_of_the_month() -> None:
    """Two local days of May: 24 hours at 90 and 12 valid hours at 120 (the second day invalid, > 3 hours
    missing): the month is (24 × 90 + 12 × 120) / 36 = 100, at the ELV."""
    values: list[float | None] = [90.0] * 24 + [120.0] * 12 + [None] * 12
    rules = RULE_SETS["ied-lcp"]
    [month] = [
        o
        for o in evaluate(COMPLIANCE_DEFAULTS["ied-lcp"], validated(values), elv=100.0, rules=rules, zone=UTC)
        if o.test is M
    ]
    assert (month.max_value, month.passed) == (pytest.approx(100.0), True)


def test_rule_sets_without_compliance_tests_give_none() -> None:
    for name in ("mrr", "part75", "ambient"):
        assert COMPLIANCE_DEFAULTS.get(name) is None
    assert evaluate(Compliance(), validated([500.0] * 24), elv=100.0, rules=RULE_SETS["mrr"], zone=UTC) == []


def test_a_rule_set_of_your_own_changes_the_percentages_and_the_tests() -> None:
    """Annex V Part 4 point 1(c): 150 % daily for plants of coal boilers below 50 MW, as a rule set of your own."""
    rollup = RollupSection.model_validate(
        {
            "rule_sets": {
                "lcp-small-coal": {"based_on": "ied-lcp", "compliance": {"day_mean_percent": 150}},
                "wi-column-a": {
                    "based_on": "ied-wi",
                    "compliance": {"base_percent": 400, "base_share_percent": 100, "citation": "permit, column A"},
                },
                "no-tests": {"based_on": "ied-lcp", "compliance": {"tests": []}},
                "mrr-80": {"based_on": "mrr"},
            }
        }
    )
    resolved = rollup.resolved_compliance()
    small = resolved["lcp-small-coal"]
    assert (small.tests, small.day_mean_percent, small.month_mean_percent) == ((M, D, B), 150.0, 100.0)
    column_a = resolved["wi-column-a"]
    assert (column_a.tests, column_a.base_percent, column_a.base_share_percent) == ((D, B), 400.0, 100.0)
    assert column_a.citation == "permit, column A"
    assert resolved["no-tests"].tests == ()
    assert resolved["mrr-80"].tests == ()
    assert resolved["ied-lcp"] == COMPLIANCE_DEFAULTS["ied-lcp"]


@pytest.mark.parametrize(
    ("compliance", "message"),
    [
        ({"base_share_percent": 120}, "rule_sets.x.compliance.base_share_percent"),
        ({"day_mean_percent": 0}, "rule_sets.x.compliance.day_mean_percent"),
        ({"tests": ["day-mean", "day-mean"]}, "a test is named twice"),
        ({"tests": ["hour-max"]}, "rule_sets.x.compliance.tests.0"),
        ({"percent": 110}, "rule_sets.x.compliance.percent"),
    ],
)
def test_bad_compliance_config_names_the_key(compliance: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace(".", "\\.")):
        RollupSection.model_validate({"rule_sets": {"x": {"based_on": "ied-lcp", "compliance": compliance}}})
