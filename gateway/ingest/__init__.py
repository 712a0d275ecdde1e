"""Ingest: MQTT batches in, validated readings stored, every message accounted for.

Pure core: validation, quality_checks, gap_repair, accounting. I/O: service (the subscriber), ledger and
spool (SQLite state files), agent_presence, revisions_cli.
"""
