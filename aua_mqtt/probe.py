"""Can we reach the broker as configured? For `edge-agent check` and `cems-gateway check`: a TLS handshake
of our own first (a wrong CA or a refused client certificate gets its own message), then an MQTT CONNECT
with the configured credentials. Each answer is one line or None."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiomqtt

from aua_mqtt.connection import BrokerConnection


async def tls_problem(mqtt: BrokerConnection, context: ssl.SSLContext, timeout_s: float) -> str | None:
    """A TLS handshake of our own first, so a wrong CA or a refused client certificate gets its own message.

    With TLS 1.3 a broker refuses a client certificate only after the handshake, with an alert: it shows on the
    first read. A broker that accepted waits for our MQTT CONNECT, so a short read timeout means fine.
    """
    where = f"{mqtt.host}:{mqtt.port}"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                mqtt.host, mqtt.port, ssl=context, server_hostname=None if mqtt.insecure else mqtt.host
            )
    except ssl.SSLError as error:
        return f"mqtt: TLS with {where} failed: {error.reason or error}"
    except (OSError, TimeoutError) as error:
        return f"mqtt: cannot reach {where}: {error or 'timeout'}"
    try:
        async with asyncio.timeout(0.5):
            await reader.read(1)
    except TimeoutError:
        pass
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        return f"mqtt: {where} refused the TLS session: {reason} (client certificate missing or not trusted?)"
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, OSError):
            await writer.wait_closed()
    return None


async def broker_problem(mqtt: BrokerConnection, client_id: str, timeout_s: float = 5.0) -> str | None:
    """Connect with the configured address, TLS and credentials (under another client id, so a running
    client's session is left alone); None when the broker accepts."""
    try:
        context = mqtt.tls_context()
    except (OSError, ssl.SSLError) as error:
        return f"mqtt: TLS files cannot be used: {error}"
    if context is not None:
        problem = await tls_problem(mqtt, context, timeout_s)
        if problem is not None:
            return problem
    try:
        options = mqtt.client_options(client_id, tls_context=context)
    except (OSError, ValueError) as error:
        return f"mqtt: password_file: {error}"
    client = aiomqtt.Client(**options, clean_session=True, timeout=timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            async with client:
                pass
    except TimeoutError:
        return (
            f"mqtt: no MQTT answer from {mqtt.host}:{mqtt.port} within {timeout_s:.0f} s"
            " (a TLS port spoken to in plain MQTT looks like this)"
        )
    except aiomqtt.MqttError as error:
        return f"mqtt: {mqtt.host}:{mqtt.port}: {error}"
    return None


async def reach_problem(mqtt: BrokerConnection, timeout_s: float = 5.0) -> str | None:
    """Does the broker's address answer (a TCP connection, and the TLS handshake when TLS is on)? No MQTT login:
    a broker that binds client ids to usernames would hand a login the session of a running client."""
    try:
        context = mqtt.tls_context()
    except (OSError, ssl.SSLError) as error:
        return f"mqtt: TLS files cannot be used: {error}"
    if context is not None:
        return await tls_problem(mqtt, context, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(mqtt.host, mqtt.port)
    except (OSError, TimeoutError) as error:
        return f"mqtt: cannot reach {mqtt.host}:{mqtt.port}: {error or 'timeout'}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None
