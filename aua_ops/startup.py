"""Start-up checks both programs make before opening anything: can a SQLite database be written at a path,
can a port be listened on. Each answer is what is wrong, in words, or None; the caller adds file, line and key."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
from pathlib import Path


def path_problem(path: Path, *, create_dirs: bool, create_key: str) -> str | None:
    """Why a database file cannot be created or written at `path`, or None. SQLite also writes a journal
    next to the file, so the folder must be writable too."""
    if path.is_dir():
        return f"{path} is a folder"
    folder = path.parent
    if not folder.is_dir():
        if folder.exists():
            return f"{folder} is not a folder"
        if not create_dirs:
            return f"folder {folder} does not exist: create it, or set {create_key} = true"
        existing = next((p for p in folder.parents if p.exists()), None)
        if existing is None or not os.access(existing, os.W_OK | os.X_OK):
            return f"cannot create folder {folder} ({existing} is not writable)"
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not writable"
    if path.exists():
        return _not_sqlite(path)
    return None


def _not_sqlite(path: Path) -> str | None:
    """An existing file must be a SQLite database (a config pointing at another file would be overwritten or
    fail on the first write); opened read-only, nothing is changed."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            connection.execute("PRAGMA schema_version").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as error:
        return f"{path} is not a SQLite database ({error})"
    return None


def bind_problem(host: str, port: int) -> str | None:
    """Can /health and /metrics listen there? Bind and let go at once."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        return f"cannot listen on {host}:{port}: unknown host ({error})"
    family, kind, proto, _, address = addresses[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"cannot listen on {host}:{port}: the port is in use (another gateway?)"
            return f"cannot listen on {host}:{port}: {error.strerror or error}"
    return None
