"""How the agent and the gateway reach the MQTT broker: address, credentials, TLS.

Shared by both sides so that their `[mqtt]` sections take the same keys and mean the same by them. Unlike
the pure wire contract (aua_contract), this is an I/O edge: it loads the certificate files the settings name.
"""

from aua_mqtt.connection import BrokerConnection, is_placeholder
from aua_mqtt.probe import broker_problem, reach_problem

__all__ = ["BrokerConnection", "broker_problem", "is_placeholder", "reach_problem"]
