"""Prefect's temporary server, started early.

With no ``PREFECT_API_URL`` configured, Prefect starts a temporary local server on first use.  prunebench starts
the same server (same command, same settings) at the very beginning of a command, before Prefect and torch are
imported, so the server's start-up overlaps ours; ``PREFECT_API_URL`` then points at it and it stops when the
command exits.  This module must stay light: it imports neither Prefect nor torch.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

# Quiet, offline defaults for Prefect (before it is imported) and its temporary server subprocess.  Also
# OMP_WAIT_POLICY=PASSIVE (read when torch loads): on a busy machine OpenMP's spin-waiting threads made a
# finetune epoch 17x slower (95 s instead of 5.5 s on 2 shared cores).
for _key, _value in {"PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL", "PREFECT_LOGGING_LEVEL": "WARNING",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                     "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                     "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
                     "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false", "OMP_WAIT_POLICY": "PASSIVE"}.items():
    os.environ.setdefault(_key, _value)


_SERVER: dict = {}


def spawn_temporary_server() -> None:
    """With no ``PREFECT_API_URL``, start Prefect's temporary server *now*, as a subprocess, before Prefect and
    torch are imported here, so its start-up overlaps ours; ``PREFECT_API_URL`` then points at it.

    This is what Prefect itself does on first use (``SubprocessASGIServer``), started earlier and without
    importing the server package into this process.  The server stops when this process exits.
    """
    if os.environ.get("PREFECT_API_URL") or _SERVER:
        return
    import atexit
    import importlib.util
    import socket
    import subprocess
    import sys
    from filelock import FileLock
    spec = importlib.util.find_spec("prefect")
    app_dir = str(Path(spec.origin).parent.parent)
    # Held until the server answers (wait_for_server): two servers creating one fresh Prefect database at once
    # collide in its migrations and one exits, so commands started together start their servers in turn.
    lock = FileLock(Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser() / "server-start.lock")
    lock.acquire()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
                             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "error", "--lifespan", "on"], env=env, stdin=subprocess.DEVNULL)
    _SERVER.update(proc=proc, url=f"http://127.0.0.1:{port}/api", lock=lock)
    os.environ["PREFECT_API_URL"] = _SERVER["url"]

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    atexit.register(stop)


def wait_for_server(timeout: float = 180.0) -> None:
    """Block until the temporary server (if this process started one) answers its health check."""
    if not _SERVER:
        return
    import httpx
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if _SERVER["proc"].poll() is not None:
                raise RuntimeError(f"Prefect's temporary server exited with code {_SERVER['proc'].returncode}")
            try:
                if httpx.get(f"{_SERVER['url']}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Prefect's temporary server did not start in time")
    finally:
        _SERVER["lock"].release()


