"""Gateway roles: which of the gateway's jobs an instance does, so ingest can scale out and nothing computes
on part of the data. Pure.

- `ingest` takes the agents' batches off the broker, stores them, keeps the accounting and asks agents for
  missing batches. Several instances may share the work: `[mqtt] shared_group` makes the broker hand each
  batch to one of them, and they meet in the store through batch receipts (docs/gateway.md, "Several
  gateways").
- `alerts` evaluates the alert rules. Rolling means, daily means and stuck-value counts need every reading of
  a series, so it takes a full subscription of its own, and exactly one instance runs it.
- `mrv` keeps the rollups up to date and runs the scheduled reports and the state feed, all from the store.
  Without `ingest` in the same process it learns which minutes changed from the batches it sees on its own
  full subscription, and rolls a batch up only once a batch receipt in the store shows that an ingest
  instance stored it. Exactly one instance runs it.

All three run in one process by default. A combination that would compute on partial data (alerts or mrv on
a shared subscription) is refused at config time; two instances both running alerts or mrv cannot be seen
from one config file, so docs/deployment.md says how to deploy them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    INGEST = "ingest"
    ALERTS = "alerts"
    MRV = "mrv"


ALL_ROLES: tuple[Role, ...] = (Role.INGEST, Role.ALERTS, Role.MRV)
"""The default: one process does everything (a single plant gateway)."""


def role_problems(roles: Iterable[str], *, shared_group: str | None) -> list[str]:
    """Why this role set cannot run with this subscription, one sentence each (empty: it can)."""
    given = list(roles)
    problems = []
    unknown = [role for role in given if role not in Role.__members__.values()]
    if unknown:
        problems.append(f"unknown role(s) {', '.join(map(repr, unknown))}: the roles are ingest, alerts and mrv")
    if not given:
        problems.append("names no role: give at least one of ingest, alerts, mrv")
    if len(set(given)) != len(given):
        problems.append("names a role twice")
    partial = [role for role in (Role.ALERTS, Role.MRV) if role in given]
    if shared_group is not None and partial:
        problems.append(
            f"{' and '.join(partial)} cannot run on a shared subscription ([mqtt] shared_group): each instance "
            "there sees only part of every agent's batches, so rolling means and rollups would be computed on "
            'partial data; give the shared instances roles = ["ingest"] and run alerts and mrv in one '
            "instance without shared_group"
        )
    if shared_group is not None and Role.INGEST not in given:
        problems.append("has no ingest role, but [mqtt] shared_group only splits the batches among ingest instances")
    return problems


@dataclass(frozen=True)
class RolePlan:
    """What one instance runs, from its roles and subscription (see `plan`)."""

    ingest: bool
    """consume (shared or not), write to the store and spool, account, repair gaps"""
    alerts: bool
    """evaluate alert rules on every batch and status (a full subscription)"""
    mrv: bool
    """rollups, scheduled reports, the state feed"""
    shared: bool
    """the readings subscription is `$share/GROUP/...` (ingest only)"""

    @property
    def writes_receipts(self) -> bool:
        """Stored batches leave a receipt in the store: other ingest instances look there before asking an agent
        again, and an mrv instance elsewhere rolls a batch up once its receipt is there."""
        return self.ingest and (self.shared or not self.mrv)

    @property
    def rolls_up_from_receipts(self) -> bool:
        """mrv without ingest: minutes are marked for rollup once the batch's receipt shows it stored."""
        return self.mrv and not self.ingest

    @property
    def tasks(self) -> tuple[str, ...]:
        """The supervised tasks this instance runs (their names in /health), besides the health writer."""
        names = ["consume"]
        if self.ingest:
            names += ["write", "drain-spool"]
        if self.alerts:
            names.append("alerts")
        if self.mrv:
            names.append("rollups")
        if self.rolls_up_from_receipts:
            names.append("stored-batches")
        return tuple(names)


def plan(roles: Iterable[str], *, shared_group: str | None) -> RolePlan:
    """The plan for a role set `role_problems` accepted (ValueError otherwise)."""
    given = list(roles)
    problems = role_problems(given, shared_group=shared_group)
    if problems:
        raise ValueError("roles " + "; ".join(problems))
    return RolePlan(
        ingest=Role.INGEST in given,
        alerts=Role.ALERTS in given,
        mrv=Role.MRV in given,
        shared=shared_group is not None,
    )
