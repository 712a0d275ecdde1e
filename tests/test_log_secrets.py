"""No secret in any log line: a real gateway run at DEBUG, its whole output captured.

The store URL carries a password, the state feed's URL carries a user, a password and a ?token=, the feed has a
bearer token and the broker a password; the gateway really uses them all (InfluxDB writes, a POST the local
receiver records) and httpx logs every request's URL at INFO. None of the secrets may appear in the output.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from http_receiver import HttpReceiver
from ports import free_port
from servers import MosquittoServer

from gateway.rollup import Aggregate, Period
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
