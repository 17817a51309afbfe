"""Prefect's temporary server, started early.

With no ``PREFECT_API_URL`` configured, Prefect starts a temporary local server on first use.  prunebench starts
the same server (same command, same settings) at the very beginning of a command, before Prefect and torch are
imported, so the server's start-up overlaps ours; ``PREFECT_API_URL`` then points at it and it stops when the
command exits or is killed.  This module must stay light: it imports neither Prefect nor torch (the server
subprocess runs it as ``python -m flows.server``, which imports uvicorn there).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .env import quiet_environment

# Quiet, offline defaults for Prefect (before it is imported) and its temporary server subprocess.
quiet_environment()


_SERVER: dict = {}


def exit_with_parent():
    """A ``preexec_fn`` asking Linux to send the child SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), or
    None where that is unavailable.

    The signal fires when the *thread* that forked the child exits, so it is only set up from the main thread
    (which lives as long as the process).  libc is resolved here, before the fork: the child only makes the call.
    """
    import sys
    import threading
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes
    import signal
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def spawn_temporary_server() -> None:
    """With no ``PREFECT_API_URL``, start Prefect's temporary server *now*, as a subprocess, before Prefect and
    torch are imported here, so its start-up overlaps ours; ``PREFECT_API_URL`` then points at it.

    This is what Prefect itself does on first use (``SubprocessASGIServer``), started earlier and without
    importing the server package into this process.  The server stops when this process exits, also when it is
    killed (``kill -9``): the parent-death signal and the server's own watchdog see to that.
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
    # the child runs this module (``serve`` below), so it needs the folder that holds ``flows`` on its path
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(Path(__file__).parent.parent)]))
    proc = subprocess.Popen([sys.executable, "-m", "flows.server", str(os.getpid()), "--app-dir", app_dir,
                             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                            env=env, stdin=subprocess.DEVNULL, preexec_fn=exit_with_parent())
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


def serve(parent_pid: int, uvicorn_args: list) -> None:
    """The server subprocess: ``python -m uvicorn <uvicorn_args>``, stopped when its parent goes away.

    A watchdog thread polls the parent pid: when the parent dies the child is re-parented (to init or a
    subreaper) and the pid changes.  This backs up ``PR_SET_PDEATHSIG`` where prctl is unavailable (not Linux, or
    spawned off the main thread) and covers a parent that died before prctl took effect.
    """
    import threading
    threading.Thread(target=_stop_when_orphaned, args=(parent_pid,), daemon=True).start()
    from uvicorn.main import main
    main(uvicorn_args)


def _stop_when_orphaned(parent_pid: int, poll: float = 0.5, grace: float = 10.0) -> None:
    import signal
    while os.getppid() == parent_pid:
        time.sleep(poll)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown (the database is closed cleanly)
    time.sleep(grace)
    os._exit(1)


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


if __name__ == "__main__":  # the server subprocess started by spawn_temporary_server
    import sys
    serve(int(sys.argv[1]), sys.argv[2:])
