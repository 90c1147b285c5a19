"""A built adaptd as a child process, for benchmarks, tools and Python tests: started with its
stderr (JSON lines) in a log file, and its ports read from its startup lines ("metrics",
"health", "serving"; "serving" comes last)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import time


def start(binary: str | pathlib.Path, args: list[str], log: pathlib.Path,
          timeout: float = 120) -> tuple[subprocess.Popen, dict[str, int]]:
    """Starts `binary args`, appending its stderr to `log`; returns it and {startup line: port}
    once it serves. Raises RuntimeError with the log if it exits or does not serve in time."""
    out = open(log, "a+")
    begin = out.tell()  # this start's lines only
    proc = subprocess.Popen([str(binary), *args], stderr=out)
    ports: dict[str, int] = {}
    deadline = time.time() + timeout
    while "serving" not in ports:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"adaptd did not start: {pathlib.Path(log).read_text()[begin:]}")
        out.seek(begin)
        for line in out:
            if '"port"' in line:
                j = json.loads(line)
                ports[j["msg"]] = j["port"]
        time.sleep(0.05)
    return proc, ports
