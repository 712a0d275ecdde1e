"""The exception tree of docs/errors.md: each package's errors under its documented base, each still under the
built-in base its callers catch."""

from __future__ import annotations

import pytest

from aua_contract import ContractError
from aua_ops import ConfigError
from edge_agent.decoding import DecodeError
from edge_agent.driver import BadFrame, DeviceException, DeviceTimeout, DriverError, LinkDown
from edge_agent.errors import AgentError
from edge_agent.rtu import FrameError
from gateway.alerts.engine import AlertError
from gateway.alerts.notify import NotifyError
from gateway.config import GatewayConfigError
from gateway.dashboards.grafana import DashboardPushError
from gateway.errors import GatewayError
from gateway.mrv.arithmetic import StandardisationError
from gateway.mrv.operating_log import OperatingLogError
from gateway.mrv.report_production import ReportError
from gateway.stores import StoreError
from gateway.stores.base import RevisionError
from gateway.stores.influx import StatementError
from gateway.supervisor import TaskFailed
from gateway.units import UnitError


@pytest.mark.parametrize(
    ("error", "base", "builtin"),
    [
        (ContractError, ValueError, ValueError),
        (ConfigError, ValueError, ValueError),
        (GatewayConfigError, GatewayError, ConfigError),
        (StoreError, GatewayError, Exception),
        (RevisionError, GatewayError, LookupError),
        (StatementError, GatewayError, ValueError),
        (UnitError, GatewayError, ValueError),
        (StandardisationError, GatewayError, ValueError),
        (AlertError, GatewayError, ValueError),
        (OperatingLogError, GatewayError, ValueError),
        (NotifyError, GatewayError, Exception),
        (ReportError, GatewayError, Exception),
        (DashboardPushError, GatewayError, RuntimeError),
        (TaskFailed, GatewayError, Exception),
        (DecodeError, AgentError, ValueError),
        (FrameError, AgentError, ValueError),
        (DriverError, AgentError, Exception),
        (DeviceTimeout, DriverError, Exception),
        (LinkDown, DriverError, Exception),
        (BadFrame, DriverError, Exception),
        (DeviceException, DriverError, Exception),
    ],
)
def test_each_error_sits_under_its_package_base_and_its_builtin_base(
    error: type[BaseException], base: type[BaseException], builtin: type[BaseException]
) -> None:
    assert issubclass(error, base)
    assert issubclass(error, builtin)


def test_the_agent_and_the_gateway_do_not_share_a_base() -> None:
    """The agent never imports the gateway (and the reverse): their bases are separate on purpose."""
    assert not issubclass(GatewayError, AgentError)
    assert not issubclass(AgentError, GatewayError)
