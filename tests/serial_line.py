"""A real pty for RTU tests: socat links a pty to a TCP port (the simulator's RtuLine) as a child process.

The agent opens the pty like any serial port (termios, raw mode); what it writes arrives at the TCP side.
A pty does not emulate baud rate, so timing is tested with devices that delay their answers on purpose
(aua_simulator.rtu_line.RtuLine), not with the line speed.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from servers import ServerError, find_binary


class SocatPty:
    """`socat pty,raw,echo=0,link=LINK tcp:HOST:PORT`; stop() ends it, and the link disappears."""

    def __init__(self, link: Path, host: str, port: int) -> None:
        self.link = link
        self.host = host
        self.port = port
        self.binary = find_binary("socat")
        self.log_path = link.with_suffix(".socat.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> None:
        argv = [self.binary, "-d", "-d", f"pty,raw,echo=0,link={self.link}", f"tcp:{self.host}:{self.port}"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.process.poll() is not None:
                raise ServerError(f"socat exited with {self.process.returncode}: {self.log_path.read_text()}")
            if self.link.exists():
                return
            time.sleep(0.01)
        self.stop()
        raise ServerError(f"socat did not create {self.link} within {timeout} s: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
