"""Prefect's temporary server lives exactly as long as the prunebench command that started it.

Real commands in subprocesses: a Python process starts the server with ``flows.server`` (as every ``prunebench``
command that runs a flow does), and is then killed with SIGKILL (no atexit handler runs) or exits normally.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from flows.server import exit_with_parent

ROOT = Path(__file__).resolve().parents[1]
# argv: where to start the server (main thread or another one), then what to do once it answers: stay (until
# killed) or exit normally when told to on stdin
COMMAND = """
import sys, threading, time
from flows.server import spawn_temporary_server, wait_for_server

def start():
    spawn_temporary_server()
    wait_for_server()

if sys.argv[1] == "thread":
    starter = threading.Thread(target=start)
    starter.start()
    starter.join()  # the thread that forked the server is gone from here on
else:
    start()
print("ready", flush=True)
if sys.argv[2] == "stay":
    time.sleep(600)
else:
    sys.stdin.readline()
"""


@pytest.fixture()
def command(tmp_path):
    """Start COMMAND; yields a function returning (process, its server's psutil.Process) once the server answers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    started, servers = [], []

    def start(where: str, then: str):
        proc = subprocess.Popen([sys.executable, "-c", COMMAND, where, then], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        children = psutil.Process(proc.pid).children()
        assert len(children) == 1, children
        servers.append(children[0])
        return proc, children[0]
    yield start
    for server in servers:  # what a failed test left behind
        with contextlib.suppress(psutil.NoSuchProcess):
            server.kill()
    for proc in started:
        proc.kill()
        proc.wait()


def assert_gone_soon(server: psutil.Process, timeout: float = 20.0):
    gone, alive = psutil.wait_procs([server], timeout=timeout)
    assert not alive, f"server {server.pid} still running {timeout:g} s after its command went away"


@pytest.mark.parametrize("where", ["main", "thread"])  # thread: no parent-death signal, the watchdog alone
def test_the_server_dies_when_its_command_is_killed(command, where):
    proc, server = command(where, "stay")
    psutil.wait_procs([server], timeout=1.5)  # longer than the watchdog's poll: it must not fire early
    assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_gone_soon(server)


def test_the_server_stops_when_its_command_exits(command):
    proc, server = command("main", "exit")
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0
    assert_gone_soon(server, timeout=1.0)  # atexit already terminated it and waited


def test_a_configured_server_is_used_as_is(tmp_path):
    script = ("import os, psutil\nfrom flows.server import spawn_temporary_server, wait_for_server\n"
              "spawn_temporary_server(); wait_for_server()\n"
              "print(os.environ['PREFECT_API_URL'], len(psutil.Process().children()))")
    url = "http://127.0.0.1:9/api"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": url}).stdout
    assert out.split() == [url, "0"]


PRINT_PARENT_DEATH_SIGNAL = ("import ctypes; value = ctypes.c_int(); "
                             "ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0); print(value.value)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_the_child_gets_sigterm_as_its_parent_death_signal():
    out = subprocess.run([sys.executable, "-c", PRINT_PARENT_DEATH_SIGNAL], capture_output=True, text=True,
                         check=True, preexec_fn=exit_with_parent()).stdout
    assert int(out) == signal.SIGTERM


def test_no_parent_death_signal_off_the_main_thread():
    # it would fire when that thread ends, killing the server while its command still runs
    found = []
    thread = threading.Thread(target=lambda: found.append(exit_with_parent()))
    thread.start()
    thread.join()
    assert found == [None]
