"""The alert rules the gateway brings itself, beside the configured `[alerts.rules]`: analyzer QA findings that come
from checks outside the data stream (gateway/mrv/qa_alerts.py, gateway/mrv/qa_checks.py). One table says, per rule,
what triggers it and which configuration gives it something to check; the engine takes its rules from it and
`cems-gateway alerts rules` lists it, so the two cannot disagree. Their names are reserved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from gateway.alerts.rules import QAL3_RULE, Qal3Rule, QaRule
from gateway.alerts.state import Severity

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

__all__ = [
    "BUILTIN_RULES",
    "PART75_DUE_RULE",
    "PART75_RULE",
    "QAL2_RULE",
    "QAL3_RULE",
    "BuiltinRule",
    "builtin_rules",
]

QAL2_RULE: Final = "qa-qal2-due"
PART75_RULE: Final = "qa-part75-calibration"
PART75_DUE_RULE: Final = "qa-part75-due"


def _vcr_sources(config: GatewayConfig) -> list[str]:
    return [
        s.id
        for s in config.sources
        if any(c.qal2 is not None and c.qal2.vcr is not None for c in s.channels().values())
    ]


def _part75_sources(config: GatewayConfig) -> list[str]:
    return [s.id for s in config.sources if s.part75 is not None]


def _qal3_sources(config: GatewayConfig) -> list[str]:
    return [s.id for s in config.sources if s.qal3 is not None and s.qal3.alert]


@dataclass(frozen=True, slots=True)
class BuiltinRule:
    """A built-in rule, what makes it fire, and which configuration enables it."""

    rule: QaRule | Qal3Rule
    trigger: str
    """what makes it fire, in words, with the clause"""
    enabled_by: str
    """the configuration that gives it something to check"""
    sources: Callable[[GatewayConfig], list[str]]
    """the sources of a config it checks (empty: nothing to check)"""
    always: bool = True
    """in force whenever alerts are on (False: only when `sources` is not empty)"""

    def in_force(self, config: GatewayConfig) -> bool:
        """Whether a gateway with this config (and alerts on) has the rule."""
        return self.always or bool(self.sources(config))


BUILTIN_RULES: Final[tuple[BuiltinRule, ...]] = (
    BuiltinRule(
        QaRule(
            name=QAL2_RULE,
            title="new QAL2 due (EN 14181:2014 valid calibration range check)",
            note="thresholds: [source.vcr_check] (defaults from UK guidance on EN 14181:2014)",
        ),
        trigger="hourly: the year-to-date weekly valid calibration range check says a new QAL2 is due (EN 14181:2014 "
        "§8: too many hourly values above the VCR); resolves when it no longer does",
        enabled_by="a channel's qal2 table with vcr set (e.g. [source.pollutant.qal2]); thresholds in "
        "[source.vcr_check]",
        sources=_vcr_sources,
    ),
    BuiltinRule(
        QaRule(
            name=PART75_RULE,
            severity=Severity.CRITICAL,
            title="Part 75 QA test failed, overdue or past due",
            note="40 CFR 75 App. B §2.1.4-2.1.5, §2.2-2.3: data out of control until a test passes",
        ),
        trigger="every 10 min: a channel's last daily calibration error test failed (40 CFR 75 App. B §2.1.4), or "
        "its validity window (validity_hours) ran out while the unit operates and no grace period applies (App. B "
        "§2.1.5: not while the unit is off; after a restart, grace_operating_hours first); or its linearity check "
        "or RATA is past the grace period after the quarter it was due in (App. B §2.2.4, §2.3.3); resolves when a "
        "test passes",
        enabled_by="[source.part75] span (the channels), validity_hours, grace_operating_hours, "
        "qa_operating_quarter_hours, linearity_* and rata_* keys; the unit's state from [source.operating] and "
        "`cems-gateway operating-state log`",
        sources=_part75_sources,
    ),
    BuiltinRule(
        QaRule(
            name=PART75_DUE_RULE,
            title="Part 75 linearity check or RATA due",
            note="40 CFR 75 App. B §2.2, §2.3: test before the grace period ends, or the data go out of control",
        ),
        trigger="every 10 min: a channel's linearity check or RATA is in the grace period after the quarter it was "
        "due in (40 CFR 75 App. B §2.2.4, §2.3.3), or due within due_warning_days (if every quarter until then is a "
        "QA operating quarter); resolves when the test is recorded",
        enabled_by="[source.part75] due_warning_days (0: only the grace period warns), with a passed linearity "
        "check or RATA recorded (`cems-gateway cal-test linearity|rata`)",
        sources=_part75_sources,
    ),
    BuiltinRule(
        Qal3Rule(
            name=QAL3_RULE,
            note="EN 14181:2014 §7: adjust the AMS, then record a check with `cems-gateway qa-check add --adjusted`",
        ),
        trigger="on each zero/span check: a component's QAL3 control chart signals out of control (EN 14181:2014 §7); "
        "resolves with the check after the adjustment",
        enabled_by="[source.qal3] with alert = true (the default)",
        sources=_qal3_sources,
        always=False,
    ),
)
"""Every built-in rule, in the order `alerts rules` lists them."""


def builtin_rules(config: GatewayConfig) -> list[QaRule | Qal3Rule]:
    """The built-in rules a gateway with this config has when its alerts are on."""
    return [b.rule for b in BUILTIN_RULES if b.in_force(config)]
