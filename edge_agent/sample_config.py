"""`edge-agent config sample`: a commented site config naming every option, to copy and uncomment."""

from __future__ import annotations

SAMPLE = """\
# Aua edge agent: site config. Printed by `edge-agent config sample`; every option is listed,
# optional ones commented out with their default value.
#
#     edge-agent config sample > /etc/aua/site.toml   # then edit
#     edge-agent validate /etc/aua/site.toml          # the file and its profiles, no device needed
#     edge-agent plan /etc/aua/site.toml              # the Modbus requests it will send, and why
#     edge-agent check /etc/aua/site.toml             # reads every tag once, tests the broker
#     edge-agent run /etc/aua/site.toml
#
# Relative paths are relative to the folder this file is in. Device profiles (register maps) come
# with Aua in config/profiles/; copy that folder next to this file (e.g. /etc/aua/profiles/).

## Who this agent is. Both names appear in MQTT topics and in every stored reading: keep them stable.
[agent]
  ## Site (installation) name: letters, digits, '.', '_', '-'; up to 64 characters.
  site = "pavlodar-chp"
  ## This agent's name, unique within the site (one agent per stack, station or cabinet is typical).
  id = "chp-stack1"
  ## Seconds between two polls of every instrument (0 < interval <= 3600). A cycle waits for its
  ## instruments until the next tick less a tenth (at most 0.25 s); a device not done by then is not
  ## waited for: its readings come in a later batch, and it alone skips the ticks while still busy
  ## (metrics aua_agent_late_polls, aua_agent_busy_skips).
  # poll_interval = 1.0
  ## Store-and-forward queue on local disk: every reading lands here before it is sent, and waits
  ## here while the broker is unreachable. Survives kill -9 and power loss.
  outbox = "/var/lib/aua/outbox.sqlite"
  ## Create the outbox's folder at start if it is missing. Off: a missing folder (often a typo, which would
  ## start an empty outbox elsewhere) stops `run` with the line of `outbox`.
  # create_dirs = false
  ## Most readings in one MQTT message (1 ... 10000).
  # batch_max_readings = 1000
  ## Bounds of the outbox: batches, payload bytes, and age of acknowledged batches. Past a bound the
  ## oldest acknowledged batches go first; if it is full of unsent ones, the oldest unsent are dropped,
  ## counted and reported (status topic `dropped`, metric aua_agent_outbox_dropped).
  ## Size the byte bound to the disk: the file is about 5 % larger, plus up to 8 MiB of WAL, and stays
  ## that size once full (`edge-agent check` says when the disk cannot hold it). A reading is about
  ## 125 bytes: one 30-tag analyzer at 1 s fills 1 GiB in 3 days, 500 of them in 9 minutes.
  # outbox_max_bytes = 1073741824
  # outbox_max_batches = 1000000
  ## Seconds acknowledged batches are kept so the gateway can ask for them again (gap repair).
  # outbox_retention_s = 604800
  ## Resend requests from the gateway: at most this many batches per request (the gateway asks again
  ## for the rest), this many waiting in all (requests beyond are refused and counted), republished at
  ## resend_rate batches per second after a burst of resend_burst. Overlapping requests are merged.
  # resend_max_batches = 10000
  # resend_max_queued = 20000
  # resend_rate = 50.0
  # resend_burst = 1000
  ## Seconds between two prunings of the outbox (retention, overflow report).
  # outbox_prune_interval_s = 60.0
  ## Seconds between two retained status messages (online, next_seq, oldest_seq, dropped).
  # status_interval_s = 10.0
  ## Prometheus endpoint (per-device polls, errors, latency; bus, outbox and MQTT counters): off unless set.
  # metrics_port = 9108
  # metrics_host = "127.0.0.1"
  ## Warn when the wall clock jumps more than this many seconds between two polls.
  # clock_jump_s = 2.0

## The MQTT broker readings are published to (QoS 1, persistent session, retained status and last will).
[mqtt]
  ## Broker host name or address.
  host = "127.0.0.1"
  ## 1883 plain MQTT, 8883 MQTT over TLS.
  port = 1883
  ## MQTT client id, unique per broker; unset gives "aua-agent-<site>-<id>".
  # client_id = "aua-agent-pavlodar-chp-chp-stack1"
  ## Credentials, if the broker requires them (the shipped broker ACL wants username = "SITE/AGENT").
  # username = "pavlodar-chp/chp-stack1"
  ## The password, or (better) a file holding it; a password starting with change-me is refused.
  # password = "..."
  # password_file = "/etc/aua/mqtt-password"
  ## Seconds between keepalive pings (5 ... 3600); the broker declares the agent offline after 1.5x this.
  # keepalive = 30
  ## TLS: on with tls = true, or as soon as one of the files below is set.
  # tls = false
  ## CA certificate(s) that signed the broker's certificate; unset: the system's CA store.
  # ca_file = "/etc/aua/tls/ca.crt"
  ## Client certificate and its key, for brokers that authenticate clients by certificate.
  # cert_file = "/etc/aua/tls/chp-stack1.crt"
  # key_file = "/etc/aua/tls/chp-stack1.key"
  ## Skip verifying the broker's certificate and host name. Testing only: anyone could pose as the broker.
  # insecure = false

## One [[instrument]] table per analyzer or meter.
## `profile` names the device profile (register map) of the instrument model; the rest says where it is.

## Modbus TCP: an analyzer with an Ethernet port, or a Modbus TCP gateway (unit id selects the device).
[[instrument]]
  ## Instrument name, unique within the agent; part of every reading's identity.
  id = "stack1-gas"
  ## Device profile file (relative to this file's folder).
  profile = "profiles/stack-gas-analyzer.toml"
  ## "tcp" (Modbus TCP), "rtu" (RTU on a local serial line), "rtu-over-tcp" (RTU through a serial
  ## device server in transparent/raw TCP mode).
  transport = "tcp"
  ## Instrument (or gateway / device server) address and port.
  host = "127.0.0.1"
  port = 5020
  ## Modbus unit id: 0 ... 255 for TCP, 1 ... 247 on an RTU bus.
  device_id = 1
  ## Seconds to wait for an answer before the read counts as failed (no value, quality failure).
  # timeout = 1.0
  ## Unused registers between two tags that may be read along rather than split into two requests
  ## (0 ... 124). If the device refuses such a block, the agent narrows it down and reads around it.
  # max_gap = 10

## Modbus RTU on a serial line (RS-485): every instrument with the same serial_port shares the line;
## the agent sends one request at a time, takes turns between the devices, and a device that stops
## answering is only probed now and then so it cannot starve the others.
# [[instrument]]
#   id = "stack1-flow"
#   profile = "profiles/stack-flow.toml"
#   transport = "rtu"
#   ## Prefer the stable /dev/serial/by-id/... name over /dev/ttyUSB0, which may change at reboot.
#   serial_port = "/dev/ttyUSB0"
#   ## Line settings, the same for every instrument on the line.
#   baudrate = 9600          # 1200 2400 4800 9600 19200 38400 57600 115200
#   parity = "N"             # "N", "E", "O"
#   stopbits = 1             # 1 or 2
#   bytesize = 8             # 7 or 8
#   device_id = 2
#   timeout = 0.5

## Modbus RTU through a serial device server (Moxa NPort, USR-TCP232 ...) in TCP server mode:
## host/port of the device server; baudrate is the one of the serial line behind it (sets the gap
## between frames and the time on the wire).
# [[instrument]]
#   id = "stack1-dust"
#   profile = "profiles/stack-dust.toml"
#   transport = "rtu-over-tcp"
#   host = "192.0.2.10"
#   port = 4001
#   baudrate = 9600
#   device_id = 3
#   timeout = 0.5
"""
