"""Takes stage, cluster: join the cluster a ``ClusterSpec`` names, or fail in one line.

Input: a ``ClusterSpec``. Output: a ``Connection`` (Ray initialised in this process, what the
cluster offers) that ``close`` ends; this process's own Ray connection is reused when there is
one (a notebook, a Ray job) and then left open.

Failing fast matters more than Ray's own retries here: Ray waits two minutes and exits the
process on a GCS port that refuses connections, so a TCP connect (5 s) comes first and anything
that does not answer is one error line. Ray's core logs its connection retries straight to the
process's stderr, so that is captured while connecting and read for the token refusal it names.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from . import ClusterError, ClusterSpec, require_ray

CONNECT_TIMEOUT_S = 5.0
_REFUSED_TOKEN = ("InvalidAuthToken", "Unauthenticated")
_TOKEN_FIX = ("set RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN or "
              "~/.ray/auth_token (on the head node: ray get-auth-token)")


@dataclass
class Connection:
    """Ray, initialised; ``owned``: this connection was made here (and ``close`` ends it)."""

    ray: ModuleType
    address: str
    owned: bool

    def resources(self) -> dict[str, float]:
        return dict(self.ray.cluster_resources())

    def close(self) -> None:
        """Disconnect (a ``local`` cluster stops; a joined one keeps running)."""
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()


def connect(spec: ClusterSpec, log: Callable[[str], None]) -> Connection:
    """Join or start the cluster. Raises ``ClusterError`` in one line within about 25 s."""
    ray = require_ray()
    if ray.is_initialized():
        return Connection(ray, "this process's Ray", owned=False)
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR",
                             "log_to_driver": False}
    if spec.address == "local":
        ray.init(**quiet)
        log(f"cluster: started a local Ray cluster ({_summary(ray.cluster_resources())})")
        return Connection(ray, "local", owned=True)
    if spec.address == "ray":
        address = os.environ.get("RAY_ADDRESS") or _started_here()
        if address is None:
            raise ClusterError("--cluster ray: no Ray cluster to join: RAY_ADDRESS is not set "
                               "and 'ray start' has not started one on this machine; set "
                               "RAY_ADDRESS=host:port, use --cluster ray://host:port, or "
                               "--cluster local")
    else:
        address = spec.address
    host, port = _split(address)
    _reachable(spec.address, host, port)
    with _captured_stderr() as said:
        try:
            ray.init(address=address, **quiet)
        except Exception as e:  # ConnectionError, AuthenticationError, ray's RuntimeErrors
            raise _connect_error(spec.address, address, e, said()) from None
        except SystemExit:  # what Ray does when the GCS never answers
            raise _connect_error(spec.address, address, None, said()) from None
    log(f"cluster: joined {address} ({_summary(ray.cluster_resources())})")
    return Connection(ray, address, owned=True)


def _summary(res: dict[str, float]) -> str:
    nodes = sum(1 for k in res if k.startswith("node:") and k != "node:__internal_head__")
    gpus = int(res.get("GPU", 0))
    return f"{nodes} node(s), {int(res.get('CPU', 0))} CPUs, {gpus} GPU(s)"


def _started_here() -> str | None:
    """The address a ``ray start`` on this machine wrote (Ray's own ``auto``, minus its scan of
    running processes, which on a shared machine would join someone else's cluster)."""
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    with contextlib.suppress(OSError):
        text = current.read_text().strip()
        if text:
            return text
    return None


def _split(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"RAY_ADDRESS={address!r} is not host:port; set it to the address "
                           f"'ray start --head' printed, e.g. 10.0.0.5:6379")
    return host, int(port)


def _reachable(given: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ClusterError(f"--cluster {given}: no Ray cluster answers at {host}:{port} "
                           f"({why}); check the address and that the cluster runs "
                           f"('ray status' on its head node), or use --cluster local") from None


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Callable[[], str]]:
    """Route file descriptor 2 to a temporary file (Ray's C++ core writes there directly)."""
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        restored = False

        def said() -> str:
            nonlocal restored
            if not restored:
                os.dup2(saved, 2)
                restored = True
            tmp.seek(0)
            return tmp.read().decode(errors="replace")

        try:
            yield said
        finally:
            said()
            os.close(saved)


def _connect_error(given: str, address: str, error: Exception | None,
                   said: str) -> ClusterError:
    name = type(error).__name__ if error is not None else ""
    text = f"{error or ''}\n{said}"
    if any(s in text for s in _REFUSED_TOKEN):
        return ClusterError(f"--cluster {given}: the cluster at {address} refused this "
                            f"driver's token (it runs with token authentication); {_TOKEN_FIX}")
    if name == "AuthenticationError":
        return ClusterError(f"--cluster {given}: token authentication is on here "
                            f"(RAY_AUTH_MODE=token) but no token was found; {_TOKEN_FIX}")
    first = (str(error).strip().splitlines() or ["no answer"])[0] if error else "no answer"
    return ClusterError(f"--cluster {given}: cannot join the Ray cluster at {address} "
                        f"({first}); check the address, that the cluster runs and that this "
                        f"machine's Ray is the cluster's version")
