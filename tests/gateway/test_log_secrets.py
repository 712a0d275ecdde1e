"""No secret in any log line: a real gateway run at DEBUG, its whole output captured.

The store URL carries a password, the state feed's URL carries a user, a password and a ?token=, the feed has a
bearer token and the broker a password; the gateway really uses them all (InfluxDB writes, a POST the local
receiver records) and httpx logs every request's URL at INFO. None of the secrets may appear in the output.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from http_receiver import HttpReceiver
from ports import free_port
from servers import MosquittoServer

from aua_ops import SecretFilter, redact_text, secrets_of
from gateway.config import load_gateway_config
from gateway.mrv.rollup import Aggregate, Period
from gateway.stores import open_store

STORE_PASSWORD = "St0re-Pa55word"
FEED_PASSWORD = "Feed-Pa55word"
FEED_QUERY_TOKEN = "Query-T0ken-123"
FEED_BEARER = "Bearer-T0ken-456"
MQTT_PASSWORD = "Mqtt-Pa55word"
SECRETS = (STORE_PASSWORD, FEED_PASSWORD, FEED_QUERY_TOKEN, FEED_BEARER, MQTT_PASSWORD)


async def write_one_completed_hour(store_url: str) -> None:
    """One hourly average that ended an hour ago, so the state feed has something to POST."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    async with open_store(store_url) as store:
        await store.write_aggregates(
            [Aggregate("pavlodar-chp", "stack1-gas", "so2", Period.HOUR, hour, 12.5, 60, 60, True, "", 0, "mg/m3")]
        )


def test_no_secret_in_any_log_line_of_a_real_gateway_run_at_debug(
    tmp_path: Path, influx_db_url: str, mosquitto: MosquittoServer, http_receiver: HttpReceiver
) -> None:
    store_url = influx_db_url.replace("http://", f"http://aua-gateway:{STORE_PASSWORD}@")
    asyncio.run(write_one_completed_hour(store_url))
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nstate = "state.sqlite"\nhttp = "127.0.0.1:{free_port()}"\nhealth_interval_s = 0.5\n'
        f'[mqtt]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\nusername = "gw"\npassword = "{MQTT_PASSWORD}"\n'
        f'client_id = "secrets-{tmp_path.name}"\n'
        f'[store]\nurl = "{store_url}"\n'
        f"[state_feed]\n"
        f'url = "http://feeder:{FEED_PASSWORD}@{http_receiver.hostport}/feed?token={FEED_QUERY_TOKEN}"\n'
        f'token = "{FEED_BEARER}"\nperiod = "1h"\ninterval_s = 0.5\ndelay_s = 0\n'
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "-v", "run", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(1200):
            text = log.read_text()
            if http_receiver.requests and "subscribed at" in text and text.count("HTTP Request: POST") >= 3:
                break
            assert process.poll() is None, text
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    # the secrets were really in use ...
    assert http_receiver.requests, text
    request = http_receiver.requests[0]
    assert request.path == f"/feed?token={FEED_QUERY_TOKEN}"
    assert request.headers["Authorization"].startswith("Basic ")  # httpx sends the URL's user:password
    # ... the lines that would carry them were written, at INFO and DEBUG ...
    assert f"HTTP Request: POST http://***@{http_receiver.hostport}/feed?token=*** " in text
    assert "HTTP Request: POST http://127.0.0.1" in text  # the store's writes
    assert " DEBUG " in text
    # ... and no secret is in any of them
    assert [secret for secret in SECRETS if secret in text] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'HTTP Request: POST http://u:pw@h:8086/write?db=aua&token=abc&precision=ns "HTTP/1.1 204"',
            'HTTP Request: POST http://***@h:8086/write?db=aua&token=***&precision=ns "HTTP/1.1 204"',
        ),
        ("mailtos://me:app-pw@smtp.example.com?to=x", "mailtos://***@smtp.example.com?to=x"),
        ("https://h/x?api_key=k1&sig=s2&page=3", "https://h/x?api_key=***&sig=***&page=3"),
        ("login failed: password=hunter22 for user x", "login failed: password=*** for user x"),
        ("series_key=abc monkey=5 n=3", "series_key=abc monkey=5 n=3"),  # not secrets: left alone
        ("influx://aua-gateway@influxdb:8086/aua", "influx://***@influxdb:8086/aua"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_secrets_of_a_config_and_the_filter_on_messages_and_tracebacks(tmp_path: Path) -> None:
    password_file = tmp_path / "mqtt-password"
    password_file.write_text("From-A-File-99\n")
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[mqtt]\npassword_file = "{password_file}"\n[store]\nurl = "influx://u:Url-Pass-77@h:8086/db"\n'
        '[alerts.notify]\napprise = ["tgram://123456:BotToken/42"]\ngrafana_token = "glsa_Grafana-Tok"\n'
    )
    secrets = secrets_of(load_gateway_config(config))
    assert {"From-A-File-99", "Url-Pass-77", "tgram://123456:BotToken/42", "glsa_Grafana-Tok"} <= secrets
    secret_filter = SecretFilter(secrets)
    error = RuntimeError("connect to tgram://123456:BotToken/42 failed with glsa_Grafana-Tok")
    exc_info = (RuntimeError, error, None)
    record = logging.LogRecord("x", logging.ERROR, "f", 1, "sent %s", ("From-A-File-99",), exc_info)
    assert secret_filter.filter(record)
    shown = logging.Formatter().format(record)
    assert "sent ***" in shown
    assert "RuntimeError: connect to *** failed with ***" in shown
    assert [s for s in secrets if s in shown] == []
