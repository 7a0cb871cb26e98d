"""Run the evaluator as its own process (as deployed) and wait until it is healthy. Used by the demo,
the benchmark and the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.evaluator.security import TOKEN_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EvaluatorProcess:
    """`chexrl serve-evaluator` on a free port (bound to `host`, default the settings' loopback; reached over
    loopback), with start / stop / kill; `args` are extra command-line options (e.g. `--insecure`), and
    `launcher` a command that execs the rest (e.g. `unshare` with a private filesystem)."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        token: str | None = None,
        config: Path | None = None,
        log: Path | None = None,
        host: str | None = None,
        args: tuple[str, ...] = (),
        launcher: tuple[str, ...] = (),
    ) -> None:
        self.state_dir, self.token, self.config, self.log = Path(state_dir), token, config, log
        self.host, self.args, self.launcher = host, tuple(args), tuple(launcher)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"  # loopback reaches a 0.0.0.0 bind too
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> EvaluatorProcess:
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        if self.token:
            env[TOKEN_ENV] = self.token
        cmd = [
            *self.launcher,
            sys.executable,
            "-m",
            "chexrl.cli",
            "serve-evaluator",
            "--port",
            str(self.port),
        ]
        cmd += ["--state-dir", str(self.state_dir), *self.args]
        if self.host:
            cmd += ["--host", self.host]
        if self.config:
            cmd += ["--config", str(self.config)]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"evaluator exited with {self.proc.returncode} (log: {self.log}){self._tail()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"evaluator not healthy after {timeout_s:.0f} s (log: {self.log})")

    def _tail(self) -> str:
        if self.log is None or not Path(self.log).is_file():
            return ""
        return ":\n" + Path(self.log).read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
