"""Process faults and lifecycle by pid: spawn a session leader, kill, pause, resume, reap.

The stack supervisor owns its children through `Child`; a controller attached to a
running stack (`Stack.attach`) only has pids, so every operation also works by pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class ProcessError(RuntimeError):
    """A process could not be started, signalled or stopped."""


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # state is the field after the parenthesised command name
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def signal_pid(pid: int, sig: signal.Signals) -> bool:
    """Send `sig`; False when the process is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait until `pid` no longer runs (reaping it if it is our child); True if gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:
            pass  # not our child: someone else reaps it
        if not alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the spawning thread's process dies (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _batch_scheduling() -> None:
    """In the child: SCHED_BATCH (Linux), inherited by every thread it starts. The kernel then
    never lets its wake-ups preempt a running task; it runs when a CPU is free or at the next
    tick. Lowering the policy needs no privilege; where it is refused, the child runs as usual."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, policy, os.sched_param(0))


def _in_child(tie: bool, batch: bool) -> Callable[[], None] | None:
    if not (tie or batch):
        return None

    def prepare() -> None:
        if tie:
            _die_with_parent()
        if batch:
            _batch_scheduling()

    return prepare


class Child:
    """One supervised process in its own session, output appended to a log file.

    `batch_scheduling`: run it under SCHED_BATCH (chaosbed.stack: Toxiproxy)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
        die_with_parent: bool = True,
        name: str | None = None,
        batch_scheduling: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.name = name or Path(self.argv[0]).name
        with log_path.open("ab") as log:
            # PDEATHSIG fires when the *thread* that forked exits: only tie to the main thread
            tie = die_with_parent and threading.current_thread() is threading.main_thread()
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    env=dict(env),
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_in_child(tie, batch_scheduling),
                )
            except OSError as exc:
                raise ProcessError(f"cannot start {self.argv[0]}: {exc}") from exc
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the whole session (the child and anything it started)."""
        _signal_group(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole session and reap."""
        _signal_group(self.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM (and SIGCONT, in case it is paused), SIGKILL after `grace_s`; always reaps."""
        if self.popen.poll() is not None:
            return self.popen.returncode
        _signal_group(self.pid, signal.SIGTERM)
        _signal_group(self.pid, signal.SIGCONT)
        try:
            return self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.pid, signal.SIGKILL)
            return self.popen.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        signal_pid(pid, sig)


def stop_pid(pid: int, grace_s: float = 5.0) -> bool:
    """Graceful stop of a process we may not own; True when it is gone."""
    if not alive(pid):
        return True
    signal_pid(pid, signal.SIGTERM)
    signal_pid(pid, signal.SIGCONT)
    if wait_gone(pid, grace_s):
        return True
    signal_pid(pid, signal.SIGKILL)
    return wait_gone(pid, 5.0)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
