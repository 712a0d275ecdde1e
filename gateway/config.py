"""The gateway's config: broker, store, and where it keeps its own state."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aua_contract import IDENTIFIER_PATTERN
from aua_mqtt import BrokerConnection, is_placeholder
from aua_ops import ConfigError, ConfigFile, describe_validation_error, read_toml_text
from gateway.alerts.rules import (
    AMBIENT_PDK,
    ONE_TIME_MINUTES,
    ClockSkewRule,
    Direction,
    FailureRule,
    GapRule,
    OfflineRule,
    Rule,
    Scope,
    StuckRule,
    Threshold,
    ThresholdRule,
    Window,
    WindowKind,
    parse_duration,
)
from gateway.alerts.state import DeliveryPolicy, Severity
from gateway.errors import GatewayError
from gateway.mrv.config import (
    RollupSection,
    SourceConfig,
    check_sources,
    resolve_mrv_paths,
    source_problems,
    wet_o2_alert_problems,
)
from gateway.roles import ALL_ROLES, Role, role_problems
from gateway.stores import open_store


class GatewayConfigError(GatewayError, ConfigError):
    """A gateway config that cannot be used; one line per problem: FILE:LINE: KEY: what."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


RoleName = Literal["ingest", "alerts", "mrv"]
ROLE_NAMES: dict[Role, RoleName] = {Role.INGEST: "ingest", Role.ALERTS: "alerts", Role.MRV: "mrv"}


class GatewaySection(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "gateway-1"
    roles: list[RoleName] = Field(
        default_factory=lambda: [ROLE_NAMES[role] for role in ALL_ROLES],
        description="what this instance does (gateway/roles.py): ingest scales out with [mqtt] shared_group; "
        "alerts and mrv need every reading, so each runs in exactly one instance without shared_group",
    )
    state: Path = Field(default=Path("var/gateway-state.sqlite"), description="ledger and dead letters")
    spool: Path | None = Field(
        default=None, description="batches waiting while the store is down; default: next to `state`"
    )
    spool_max_bytes: Annotated[int, Field(ge=4096, le=2**44)] = Field(
        default=1024**3,
        description="payload bytes the spool holds at most; when full the gateway takes no more messages (they "
        "stay unacknowledged on the broker) until the store is back and the spool drains",
    )
    spool_max_batches: Annotated[int, Field(ge=1, le=10**9)] = Field(
        default=1_000_000, description="batches the spool holds at most (as spool_max_bytes)"
    )
    http: str | None = Field(
        default=None, pattern=r"^[^\s:]+:\d{1,5}$", description="HOST:PORT for /health and /metrics; unset: off"
    )
    create_dirs: bool = Field(
        default=False,
        description="create missing folders of state, spool and a SQLite store at start; off: a missing folder "
        "(often a typo, which would start an empty ledger) stops the start with the key's line",
    )
    write_max_readings: Annotated[int, Field(ge=1)] = Field(
        default=20_000,
        description="readings gathered from many batches into one store write (InfluxDB: sent as concurrent "
        "requests of 5,000 lines)",
    )
    write_max_delay_s: Annotated[float, Field(ge=0, le=10)] = Field(
        default=0.0,
        description="how long a batch may wait for others to share its store write; 0: group only what is "
        "already queued (under load the queue fills while a write is in flight, so writes grow by themselves)",
    )
    write_queue_readings: Annotated[int, Field(ge=1)] = Field(
        default=100_000,
        description="decoded readings waiting for the writer before the MQTT consumer stops taking more: the "
        "broker is the buffer beyond that (a deeper queue only costs memory and garbage-collector time)",
    )
    gap_check_s: Annotated[float, Field(gt=0)] = Field(default=5.0, description="how often to look for missing batches")
    gap_grace_s: Annotated[float, Field(ge=0)] = Field(
        default=10.0, description="a missing batch is asked for only after this long (it may be in flight)"
    )
    gap_retry_s: Annotated[float, Field(gt=0)] = Field(default=30.0, description="ask again this often until filled")
    health_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0, description="how often to write gateway and per-agent accounting to the store (aua_health)"
    )
    metrics_max_agents: Annotated[int, Field(ge=0, le=100_000)] = Field(
        default=1000,
        description="agents with labels of their own in /metrics when [registry] agents is empty; the rest are "
        'summed under agent="_other" and counted (aua_gateway_metrics_agents_folded)',
    )
    stall_s: Annotated[float, Field(gt=0, le=86_400)] = Field(
        default=120.0, description="a store write (or spool write) running longer than this is a stall in /health"
    )

    @field_validator("roles")
    @classmethod
    def _roles_once(cls, value: list[str]) -> list[str]:
        problems = role_problems(value, shared_group=None)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("http")
    @classmethod
    def _port_in_range(cls, value: str | None) -> str | None:
        if value is not None and not 0 <= int(value.rsplit(":", 1)[1]) <= 65535:
            raise ValueError(f"port of {value!r} must be 0 (any free port) ... 65535")
        return value

    @property
    def spool_path(self) -> Path:
        return self.spool or self.state.with_name(f"{self.state.stem}-spool.sqlite")

    @property
    def http_address(self) -> tuple[str, int] | None:
        if self.http is None:
            return None
        host, port = self.http.rsplit(":", 1)
        return host, int(port)


class LedgerSection(_Strict):
    """[ledger]: bounds of the gateway's own state file (gateway/ingest/ledger.py), so it stops growing once full."""

    detail_batches: Annotated[int, Field(ge=1, le=100_000_000)] = Field(
        default=100_000,
        description="per agent, the last this many sequence numbers keep per-batch detail (sealing time, to tell "
        "a redelivery from a reused sequence number); older batches are kept only as sequence ranges with counts",
    )
    detail_days: Annotated[float, Field(gt=0, le=3650)] = Field(
        default=7.0, description="per-batch detail is also dropped once older than this"
    )
    receipt_batches: Annotated[int, Field(ge=1, le=100_000_000)] = Field(
        default=100_000,
        description="with [mqtt] shared_group: per agent, batch receipts kept in the store for the last this many "
        "sequence numbers (and none below what the agent still holds); older ones are pruned and counted",
    )
    gap_max_ranges: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=1_000, description="per agent and check, the missing ranges gap repair looks at (oldest first)"
    )
    max_agents: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=10_000,
        description="when [registry] agents is empty: agents the gateway follows at most; batches and statuses "
        "of further new agent ids become dead letters (counted), so invented ids cannot grow the ledger",
    )
    repair_max_agents: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=10_000,
        description="agents whose holes' timing (noticed, last asked) gap repair remembers; beyond it the least "
        "recently checked is forgotten (its holes wait their grace again) and counted",
    )
    resend_max_requests: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=20, description="per agent and check, the resend requests published at most"
    )
    resend_max_batches: Annotated[int, Field(ge=1, le=10**9)] = Field(
        default=200_000, description="per agent and check, the batches asked for at most (the rest waits)"
    )
    dead_letter_payload_bytes: Annotated[int, Field(ge=0, le=64 * 1024 * 1024)] = Field(
        default=64 * 1024, description="bytes of each dead letter's payload kept (its size and SHA-256 always are)"
    )
    dead_letter_max_rows: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    dead_letter_max_bytes: Annotated[int, Field(ge=1024, le=2**40)] = Field(
        default=64 * 1024 * 1024, description="payload bytes kept over all dead letters"
    )
    dead_letter_days: Annotated[float, Field(gt=0, le=3650)] = Field(
        default=30.0, description="dead letters older than this are pruned (oldest first, a few at a time)"
    )


class MqttSection(BrokerConnection):
    """[mqtt]: the broker, credentials and TLS (aua_mqtt, the same keys as an agent's), and what
    to subscribe to."""

    sites: str = Field(
        default="+",
        pattern=rf"^(\+|{IDENTIFIER_PATTERN.strip('^$')})$",
        description="site id to subscribe to, or + for all",
    )
    shared_group: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="MQTT shared subscription group: instances with the same group split the batches between "
        "them ($share/GROUP/...); they meet in the store (batch receipts) for accounting and gap repair",
    )


class StoreSection(_Strict):
    url: str = Field(
        default="sqlite://var/aua.sqlite",
        description="sqlite:///ABSOLUTE/PATH, sqlite://PATH relative to this file, or influx://HOST:PORT/DB",
    )
    password_file: Path | None = Field(
        default=None,
        description="InfluxDB v1 password from this file (first line), for the user named in the URL "
        "(influx://USER@HOST/DB): a secret mounted by the deployment instead of a password in the config",
    )
    raw_retention_days: Annotated[float, Field(ge=1 / 24, le=36_500)] | None = Field(
        default=None,
        description="raw readings kept this many days (rollups stay); unset: forever (gateway/mrv/retention.py)",
    )
    rollup_retention_days: Annotated[float, Field(ge=1 / 24, le=36_500)] | None = Field(
        default=3653.0, description="rollups kept this many days; 10 years: EU MRR 2018/2066 Art. 67(1)"
    )

    @field_validator("url")
    @classmethod
    def _known_store(cls, url: str) -> str:
        open_store(url)  # builds, connects to nothing: a ValueError names what is wrong (no password in it)
        password = urlsplit(url).password
        if password is not None and is_placeholder(unquote(password)):
            raise ValueError(
                "the URL's password is a placeholder from the shipped examples: set a real one "
                "(the compose stack: python3 deploy/init-secrets.py)"
            )
        return url

    def with_password_file(self) -> str | None:
        """The URL with the password from `password_file` in it; a problem (one line) when it cannot be."""
        if self.password_file is None:
            return None
        parts = urlsplit(self.url)
        if parts.username is None or parts.password is not None:
            return "needs a URL with a user and no password (influx://USER@HOST:PORT/DB)"
        try:
            lines = self.password_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            return f"cannot read {self.password_file}: {getattr(error, 'strerror', None) or error}"
        if not lines or not lines[0]:
            return f"{self.password_file} is empty"
        if is_placeholder(lines[0]):
            return f"{self.password_file} holds a placeholder password: set a real one"
        self.url = parts._replace(
            netloc=f"{parts.username}:{quote(lines[0], safe='')}@{parts.netloc.split('@', 1)[1]}"
        ).geturl()
        return None


# --------------------------------------------------------------------------------------------------
# [alerts]: threshold and data alerts (gateway/alerts/rules.py, gateway/alerts/engine.py)
# --------------------------------------------------------------------------------------------------


def _duration(value: object) -> object:
    """Seconds as a number or "90s", "15m", "2h", "1d"; a timedelta passes through."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return parse_duration(value)
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
RULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Patterns = Annotated[list[str], BeforeValidator(lambda value: [value] if isinstance(value, str) else value)]

_THRESHOLD_ONLY = ("window", "above", "below", "clear", "unit", "species", "reference_o2", "h2o_parameter")
_KIND_ONLY = {"after": "gap", "count": "stuck", "max_skew": "clock_skew"}


class AlertRuleSection(_Strict):
    """One rule, `[alerts.rules.NAME]`. A table named like a default rule changes only the keys it sets."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: Literal["threshold", "offline", "failure", "gap", "stuck", "clock_skew"] = "threshold"
    enabled: bool = True
    title: str = Field(default="", description="what, in words, for messages")
    note: str = Field(default="", description="the limit's source or a caveat, shown in messages")
    severity: Severity = Severity.WARNING
    site: Patterns = Field(default_factory=lambda: ["*"], description="glob pattern(s)")
    agent: Patterns = Field(default_factory=lambda: ["*"])
    instrument: Patterns = Field(default_factory=lambda: ["*"])
    parameter: Patterns = Field(default_factory=lambda: ["*"])
    for_: Duration = Field(default=timedelta(0), alias="for", description="hold this long before firing")
    clear_for: Duration = Field(default=timedelta(0), description="be clear this long before resolving")
    # threshold rules
    window: WindowKind | None = None
    minutes: Annotated[int, Field(ge=0, le=7 * 24 * 60)] = 0
    above: float | None = None
    below: float | None = None
    clear: float | None = Field(default=None, description="hysteresis: resolve only once back past this")
    unit: str | None = None
    species: str | None = None
    min_coverage: Annotated[float, Field(gt=0, le=1)] = 0.75
    hold: Duration = timedelta(minutes=5)
    reference_o2: float | None = None
    o2_parameter: str = "o2"
    o2_wet: bool = Field(default=False, description="the O2 is measured wet (in situ): dried with h2o_parameter")
    h2o_parameter: str | None = Field(default=None, description="the moisture reading (% vol) that dries a wet O2")
    # data rules
    after: Duration | None = None
    count: int | None = None
    tolerance: Annotated[float, Field(ge=0)] = 0.0
    max_skew: Duration | None = None

    @model_validator(mode="after")
    def _fits_kind(self) -> AlertRuleSection:
        if self.kind == "threshold":
            if self.window is None or self.unit is None:
                raise ValueError("a threshold rule needs window and unit")
            if (self.above is None) == (self.below is None):
                raise ValueError("a threshold rule needs exactly one of above or below")
        else:
            stray = [key for key in _THRESHOLD_ONLY if getattr(self, key) is not None] + ["o2_wet"] * self.o2_wet
            if stray:
                raise ValueError(f"{', '.join(stray)}: only for threshold rules, not {self.kind}")
        for key, kind in _KIND_ONLY.items():
            if getattr(self, key) is not None and self.kind != kind:
                raise ValueError(f"{key}: only for {kind} rules, not {self.kind}")
            if getattr(self, key) is None and self.kind == kind:
                raise ValueError(f"a {kind} rule needs {key}")
        self.to_rule("check")  # the rule's own checks (hysteresis direction, window minutes), named by this key
        return self

    def to_rule(self, name: str) -> Rule:
        common: dict[str, Any] = {
            "name": name,
            "scope": Scope(tuple(self.site), tuple(self.agent), tuple(self.instrument), tuple(self.parameter)),
            "severity": self.severity,
            "for_": self.for_,
            "clear_for": self.clear_for,
            "title": self.title,
            "note": self.note,
        }
        if self.kind == "threshold":
            if self.window is None or self.unit is None:
                raise ValueError("a threshold rule needs window and unit")
            direction = Direction.ABOVE if self.above is not None else Direction.BELOW
            limit = self.above if self.above is not None else self.below
            if limit is None:
                raise ValueError("a threshold rule needs exactly one of above or below")
            return ThresholdRule(
                **common,
                window=Window(self.window, self.minutes),
                threshold=Threshold(direction, limit, limit if self.clear is None else self.clear),
                unit=self.unit,
                species=self.species,
                min_coverage=self.min_coverage,
                hold=self.hold,
                reference_o2=self.reference_o2,
                o2_parameter=self.o2_parameter,
                o2_wet=self.o2_wet,
                h2o_parameter=self.h2o_parameter,
            )
        if self.kind == "offline":
            return OfflineRule(**common)
        if self.kind == "failure":
            return FailureRule(**common)
        if self.kind == "gap":
            return GapRule(**common, after=self.after or timedelta(0))
        if self.kind == "stuck":
            return StuckRule(**common, count=self.count or 0, tolerance=self.tolerance)
        return ClockSkewRule(**common, max_skew=self.max_skew or timedelta(0))


def default_alert_rules(ambient_sites: list[str], *, data_rules: bool = True) -> dict[str, dict[str, Any]]:
    """The built-in rules as config tables: ambient ПДК (regulatory-basis.md §5) for `ambient_sites`, and data rules.

    One-time ПДК: a 20-minute rolling mean (ПДК м.р. is defined for a 20–30 minute sample), 10 % hysteresis.
    Daily ПДК: the mean of the local calendar day, judged when the day is over, with ≥ 75 % data (§3).
    Mercury has no one-time ПДК; `hg-screening` compares the instant value with the daily-mean ПДК so an
    episode is seen while it happens, and says so in every message.
    """
    rules: dict[str, dict[str, Any]] = {}
    for limit in AMBIENT_PDK:
        if limit.one_time is not None:
            rules[f"{limit.parameter}-one-time"] = {
                "title": f"{limit.label} above the maximum one-time ПДК",
                "note": (
                    "ПДК м.р. (maximum one-time, a 20–30 min sample), docs/regulatory-basis.md §5; "
                    "verify against the current order"
                ),
                "severity": "critical",
                "site": list(ambient_sites),
                "parameter": limit.parameter,
                "window": "rolling",
                "minutes": ONE_TIME_MINUTES,
                "above": limit.one_time,
                "clear": round(limit.one_time * 0.9, 9),
                "unit": limit.unit,
            }
        if limit.daily is not None:
            rules[f"{limit.parameter}-daily"] = {
                "title": f"{limit.label} daily mean above the daily ПДК",
                "note": "ПДК с.с. (daily mean of the local calendar day, ≥ 75 % data), regulatory-basis.md §5 and §3",
                "severity": "critical",
                "site": list(ambient_sites),
                "parameter": limit.parameter,
                "window": "daily",
                "above": limit.daily,
                "unit": limit.unit,
            }
    rules["hg-screening"] = {
        "title": "gaseous mercury above 300 ng/m³ (instant value, screening)",
        "note": (
            "screening level, not a ПДК exceedance: Hg has only a daily-mean ПДК of 300 ng/m³ "
            "(docs/regulatory-basis.md §5), judged by hg-daily when the day is over"
        ),
        "severity": "warning",
        "site": list(ambient_sites),
        "parameter": "hg",
        "window": "instant",
        "above": 300.0,
        "clear": 270.0,
        "unit": "ng/m3",
        "for": "30s",
    }
    if data_rules:
        rules["agent-offline"] = {"kind": "offline", "severity": "warning", "for": "60s"}
        rules["instrument-failure"] = {"kind": "failure", "severity": "warning", "for": "60s"}
        rules["data-gap"] = {"kind": "gap", "severity": "warning", "after": "120s"}
        rules["stuck-value"] = {"kind": "stuck", "severity": "info", "count": 60}
        rules["clock-skew"] = {"kind": "clock_skew", "severity": "info", "max_skew": "120s", "for": "5m"}
    return rules


GroupField = Literal["rule", "site", "agent", "instrument", "parameter"]


def _group_by_default() -> list[GroupField]:
    return ["rule", "site"]


class AlertNotifySection(_Strict):
    """Where messages go. Every configured channel gets every message."""

    apprise: list[SecretStr] = Field(
        default_factory=list, description="apprise URLs: mailto://, tgram://, slack://, json://, ..."
    )
    mqtt: bool = Field(default=False, description="publish each notice on aua/v1/{site}/alerts (the [mqtt] broker)")
    grafana_url: str | None = Field(default=None, description="Grafana base URL for annotations")
    grafana_token: SecretStr | None = None
    grafana_dashboard_uid: str | None = None
    console: bool = Field(default=False, description="print messages on standard output")


class AlertsSection(_Strict):
    enabled: bool = True
    timezone: str = Field(default="Asia/Almaty", description="IANA zone for daily/hourly periods and local times")
    dashboard_url: str | None = Field(default=None, description="Grafana dashboard URL linked from messages")
    reference_temperature_c: float = Field(
        default=0.0,
        ge=-50,
        le=50,
        description="°C at which ppb/ppm convert to mass per volume (0: docs/regulatory-basis.md §2)",
    )
    ambient_sites: list[str] = Field(default_factory=list, description="sites (globs) the ambient ПДК rules apply to")
    data_rules: bool = True
    group_wait: Duration = timedelta(seconds=10)
    group_by: list[GroupField] = Field(default_factory=_group_by_default, description="one message per group")
    max_messages: Annotated[int, Field(ge=1)] = 20
    per: Duration = timedelta(hours=1)
    remind_every: Duration = Field(default=timedelta(0), description="repeat unacknowledged firing alerts; 0: never")
    notify: AlertNotifySection = Field(default_factory=AlertNotifySection)
    rules: dict[str, AlertRuleSection] = Field(default_factory=dict)
    history_keep: Duration = Field(
        default=timedelta(days=90), description="alert history (notices, messages, deliveries) kept this long"
    )
    history_max_notices: Annotated[int, Field(ge=100, le=10_000_000)] = Field(
        default=100_000, description="and at most this many notices (queued ones always stay)"
    )
    max_series: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=50_000,
        description="agents, instruments and series with alert state; new names beyond it are not evaluated "
        "(counted: aua_gateway_alert_series_refused)",
    )

    @model_validator(mode="before")
    @classmethod
    def _with_defaults(cls, data: Any) -> Any:
        """Default rules first; a user table of the same name overrides the keys it sets."""
        if not isinstance(data, dict):
            return data
        sites = data.get("ambient_sites", [])
        defaults = default_alert_rules(
            sites if isinstance(sites, list) else [], data_rules=bool(data.get("data_rules", True))
        )
        user = data.get("rules", {})
        if not isinstance(user, dict):
            return data
        merged: dict[str, Any] = {name: dict(table) for name, table in defaults.items()}
        for name, table in user.items():
            if not isinstance(table, dict) or name not in defaults:
                merged[name] = table
                continue
            base = dict(defaults[name])
            default_limit = base.get("above", base.get("below"))
            new_limit = table.get("above", table.get("below"))
            flipped = any(key in table and key not in base for key in ("above", "below"))
            for key, other in (("above", "below"), ("below", "above")):
                if key in table:
                    base.pop(other, None)  # a rule turned around: the default's direction goes
            if new_limit is not None and "clear" not in table and "clear" in base:
                # A new limit keeps the default's relative hysteresis (e.g. clear at 90 % of the limit).
                if flipped or not isinstance(new_limit, int | float) or not default_limit:
                    base.pop("clear")
                else:
                    base["clear"] = round(new_limit * base["clear"] / default_limit, 9)
            merged[name] = {**base, **table}
        return {**data, "rules": merged}

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Almaty)") from None
        return value

    @field_validator("rules")
    @classmethod
    def _rule_names(cls, value: dict[str, AlertRuleSection]) -> dict[str, AlertRuleSection]:
        bad = [name for name in value if not re.fullmatch(RULE_NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"rule names {bad} must match {RULE_NAME_PATTERN}")
        from gateway.alerts.builtin import BUILTIN_RULES  # noqa: PLC0415 (it imports this module's types)

        taken = sorted(set(value) & {builtin.rule.name for builtin in BUILTIN_RULES})
        if taken:
            raise ValueError(
                f"rule names {taken} are built-in rules (`cems-gateway alerts rules` lists them): choose another name"
            )
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def effective_rules(self) -> list[Rule]:
        return [table.to_rule(name) for name, table in sorted(self.rules.items()) if table.enabled]

    def delivery_policy(self) -> DeliveryPolicy:
        return DeliveryPolicy(group_wait=self.group_wait, max_messages=self.max_messages, per=self.per)


class ParameterRule(_Strict):
    """What is plausible for one parameter; `*` matches any site or instrument."""

    site: str = "*"
    instrument: str = "*"
    parameter: str
    min: float | None = None
    max: float | None = None
    max_rate_per_s: Annotated[float, Field(gt=0)] | None = None
    stuck_samples: Annotated[int, Field(ge=2)] | None = None


class RegistrySection(_Strict):
    """Who may send and what is plausible. Empty lists accept everything (the demo's default)."""

    agents: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")]] = Field(
        default_factory=list, description="SITE/AGENT pairs allowed to publish; others are dead letters"
    )
    known_parameters_only: bool = Field(
        default=False, description="dead-letter readings whose instrument/parameter matches no [[registry.parameter]]"
    )
    parameter: list[ParameterRule] = Field(default_factory=list)
    max_payload_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_future_s: Annotated[float, Field(ge=0, le=31_536_000)] = 300.0
    max_age_days: Annotated[float, Field(gt=0, le=36_500)] = 30.0
    screen_cache_series: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=100_000,
        description="series whose last value is kept for the stuck and spike checks; the least recently seen "
        "is forgotten first (counted: aua_gateway_screen_cache_evictions)",
    )

    def rule_for(self, site: str, instrument: str, parameter: str) -> ParameterRule | None:
        """The most specific matching rule (exact instrument beats *, exact site beats *)."""
        best: tuple[int, ParameterRule] | None = None
        for rule in self.parameter:
            if rule.parameter != parameter or rule.site not in ("*", site) or rule.instrument not in ("*", instrument):
                continue
            score = (rule.instrument != "*") * 2 + (rule.site != "*")
            if best is None or score > best[0]:
                best = (score, rule)
        return None if best is None else best[1]


SERIES_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class StateFeedSection(_Strict):
    """The real-time feed to the state system (docs/regulatory-basis.md §1: Kazakhstan's АСМ sends data in real time to
    the national environmental data bank; interval and format are set by Order No. 208, not verified
    here, so both are configuration). Every completed average of `period` is POSTed as JSON once, and
    again, as a new revision, if late data changes it within `correction_hours`."""

    url: str = Field(description="POST endpoint of the state system (or of the operator's relay to it)")
    token: SecretStr | None = Field(default=None, description="sent as 'Authorization: Bearer TOKEN'")
    period: Literal["1m", "20m", "30m", "1h", "1d"] = Field(
        default="1h", description="which averages are sent; 20m: computed from the stored 1-minute rollups"
    )
    interval_s: Annotated[float, Field(gt=0, le=86400)] = Field(default=60.0, description="how often to send")
    delay_s: Annotated[float, Field(ge=0, le=86400)] = Field(
        default=120.0, description="a period is sent this long after it ends (rollups and late data first)"
    )
    correction_hours: Annotated[float, Field(gt=0, le=24 * 31)] = Field(
        default=24.0, description="averages recomputed within this window are sent again as a new revision"
    )
    max_values: Annotated[int, Field(ge=1, le=100_000)] = Field(default=1000, description="values per POST")
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    codes: dict[Annotated[str, Field(pattern=SERIES_KEY)], str] = Field(
        default_factory=dict,
        description="SITE/INSTRUMENT/PARAMETER -> the code the state system knows the series by",
    )
    only_coded: bool = Field(default=False, description="send only the series that have a code")

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url {url!r} must start with http:// or https://")
        return url


class GatewayConfig(_Strict):
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    ledger: LedgerSection = Field(default_factory=LedgerSection, description="bounds of the gateway's state file")
    store: StoreSection = Field(default_factory=StoreSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    alerts: AlertsSection | None = Field(default=None, description="threshold and data alerts; absent: none")
    rollup: RollupSection = Field(default_factory=RollupSection, description="rollups, rule sets, reports")
    sources: list[SourceConfig] = Field(default_factory=list, alias="source", description="[[source]]: MRV stacks")
    state_feed: StateFeedSection | None = Field(default=None, description="real-time feed to the state system")

    @model_validator(mode="after")
    def _sources_fit_rollup(self, info: ValidationInfo) -> GatewayConfig:
        if not (info.context or {}).get("sources_checked_by_caller"):
            check_sources(self.rollup, self.sources)
        return self

    @model_validator(mode="after")
    def _roles_fit_subscription(self, info: ValidationInfo) -> GatewayConfig:
        if not (info.context or {}).get("sources_checked_by_caller"):  # the loader names the key's line
            problems = self.role_problems()
            if problems:
                raise ValueError(f"gateway.roles: {'; '.join(problems)}")
        return self

    def role_problems(self) -> list[str]:
        """Roles that would compute on partial data with this subscription (gateway/roles.py)."""
        return role_problems(self.gateway.roles, shared_group=self.mqtt.shared_group)

    @model_validator(mode="after")
    def _no_wet_o2_taken_as_dry(self) -> GatewayConfig:
        if self.alerts is not None and self.sources:
            problems = wet_o2_alert_problems(self.alerts.effective_rules(), self.sources)
            if problems:
                raise ValueError("; ".join(problems))
        return self


def resolve_store_url(url: str, base: Path) -> str:
    """A relative SQLite path (`sqlite://aua.sqlite`) is relative to the config file, like every other path in
    it; `sqlite:///var/lib/aua/aua.sqlite` is absolute, as `open_store` reads it everywhere else. (Until
    2026-12 a config file read `sqlite:///x` as relative: one URL meant two files.)"""
    prefix = "sqlite://"
    path = url[len(prefix) :] if url.startswith(prefix) else None
    if path and not path.startswith("/") and path != ":memory:":
        return prefix + str((base / path).resolve())
    return url


def load_gateway_config(path: Path) -> GatewayConfig:
    """Read and validate; every problem is one line, FILE:LINE: KEY: what (GatewayConfigError)."""
    document, text = read_toml_text(path, GatewayConfigError)
    try:
        config = GatewayConfig.model_validate(document, context={"sources_checked_by_caller": True})
    except ValidationError as error:
        raise GatewayConfigError(describe_validation_error(error, str(path), text, model=GatewayConfig)) from None
    located = ConfigFile(path, text)
    problems = [f"{located.at(at)}: {what}" for at, what in source_problems(config.rollup, config.sources)]
    problems += [located.problem(("gateway", "roles"), what) for what in config.role_problems()]
    if problems:
        raise GatewayConfigError("\n".join(problems))
    base = path.parent
    if not config.gateway.state.is_absolute():
        config.gateway.state = base / config.gateway.state
    if config.gateway.spool is not None and not config.gateway.spool.is_absolute():
        config.gateway.spool = base / config.gateway.spool
    config.store.url = resolve_store_url(config.store.url, base)
    if config.store.password_file is not None:
        if not config.store.password_file.is_absolute():
            config.store.password_file = base / config.store.password_file
        problem = config.store.with_password_file()
        if problem is not None:
            raise GatewayConfigError(located.problem(("store", "password_file"), problem))
    config.mqtt.resolve_paths(base)
    resolve_mrv_paths(config.rollup, config.sources, base)
    return config
