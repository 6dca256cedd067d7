"""Ray sessions for the commands that use Ray: a private local instance, or a running cluster joined by address.

Imported only where Ray is used (``automq`` itself stays free of ray): the ``tune`` strategy's executor and
multi-worker supernet training (:mod:`automq.oneshot.distributed`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import ray
from ray._private.authentication import authentication_token_setup as ray_auth  # pinned Ray 2.60
from ray.exceptions import AuthenticationError

from automq.errors import RayClusterError

__all__ = ["connect_cluster", "ray_session"]

REACH_TIMEOUT_S = 5.0  # how long a head that does not answer is waited for


@contextmanager
def ray_session(address: str | None, workers: int | None, work_dir: Path) -> Iterator[int]:
    """Connect to Ray for one command and yield the number of workers (concurrent trials) to run.

    ``address=None`` starts a private local Ray instance whose session files live in ``work_dir/tmp`` and stops
    it afterwards; an ``address`` joins that existing cluster (:func:`connect_cluster`); an already initialised
    Ray (a caller-managed cluster) is used as it is.
    """
    owned = not ray.is_initialized()
    link = None
    if owned and address is None:
        link = _short_link(work_dir / "tmp")
        ray.init(address="local", num_cpus=workers or os.cpu_count(), _temp_dir=str(link),
                 include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    elif owned:
        connect_cluster(address)
    try:
        yield workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if owned:
            ray.shutdown()
        if link is not None:
            link.unlink()


def connect_cluster(address: str) -> None:
    """Join the running Ray cluster at ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) with the
    token authentication its head uses, or raise :class:`RayClusterError` saying what to check."""
    if address != "auto":
        _check_reachable(address)
    _use_token_if_available()
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, AuthenticationError) as error:
        raise RayClusterError(_connection_advice(address, error)) from error


def _check_reachable(address: str) -> None:
    """Fail at once when nothing listens at ``address``: Ray itself retries an unreachable head for minutes."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        host = port = None
    if not host or port is None:
        raise RayClusterError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
    except OSError as error:
        raise RayClusterError(
            f"cannot reach a Ray cluster at {address} ({error.strerror or error}): check that `ray start --head "
            f"--port {port}` runs on {host} and that this machine can reach that port") from error


def _use_token_if_available() -> None:
    """Connect with token authentication when a token is at hand and the user has not set ``RAY_AUTH_MODE``.

    ``ray start --head`` turns token authentication on whenever a token exists, but Ray 2.60 connects to an
    explicit address with it off, so the head rejects the client (20 s of ``InvalidAuthToken`` lines, then a
    ``ConnectionError``). This is what ``ray.init(address="auto")`` does itself, through the same pinned Ray
    internals: the token comes from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``. A client
    with a token also joins a head that has authentication disabled (checked with Ray 2.60.0).
    """
    if ray_auth.AUTH_MODE_ENV_VAR in os.environ:
        return
    if ray_auth.AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        ray_auth._enable_token_auth()  # sets RAY_AUTH_MODE=token and reloads Ray's cached configuration


def _connection_advice(address: str, error: BaseException) -> str:
    """One line for a failed ``ray.init(address=...)``: Ray's own reason and what the user should check."""
    chain = list(_causes(error))
    if any(isinstance(e, AuthenticationError) or "InvalidAuthToken" in str(e) for e in chain):
        return (f"the Ray cluster at {address} rejected this machine's authentication token: put the head node's "
                "~/.ray/auth_token in ~/.ray/auth_token here (or point RAY_AUTH_TOKEN_PATH at a copy, or set "
                "RAY_AUTH_TOKEN), and do not set RAY_AUTH_MODE=disabled here when the head uses tokens")
    reason = (str(chain[0]).strip().splitlines() or [type(chain[0]).__name__])[0]
    return (f"cannot connect to the Ray cluster at {address} ({reason}): check that `ray start --head` runs there "
            f"and that this machine has the same Python and Ray {ray.__version__} as the cluster")


def _causes(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from (Ray wraps the reason of a failed connection twice)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _short_link(folder: Path) -> Path:
    """A short symlink in the system temp dir to ``folder``: Ray's unix sockets live under its temp dir and their
    paths must stay below 107 bytes. Named after ``folder``, so a resumed search replaces the link that a killed
    one left behind."""
    folder.mkdir(parents=True, exist_ok=True)
    folder = folder.resolve()
    link = Path(tempfile.gettempdir()) / f"automq-ray-{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}"
    link.unlink(missing_ok=True)
    link.symlink_to(folder, target_is_directory=True)
    return link
