"""A Ray connection for the duration of a block: the cluster at an address, or a new local Ray on 127.0.0.1.

``address`` (else ``RAY_ADDRESS``) connects to a running cluster; without one, a new local Ray starts bound to
127.0.0.1, without its dashboard, with at least ``num_cpus`` CPUs. Only a Ray this block started is shut down,
and an already initialised Ray is used as it is. An address that cannot be reached is a :class:`ConfigError`
naming ``--address``.

Example:
    >>> with ray_session(None, num_cpus=2):  # doctest: +SKIP
    ...     ray.get([f.remote() for _ in range(2)])
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from config.strict import ConfigError

__all__ = ["ray_session"]


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int) -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"  # "local": a new Ray, never a stray one
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False}
    if address == "local":
        kwargs |= {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        kwargs["num_cpus"] = max(num_cpus, os.cpu_count() or 1)
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise ConfigError(f"--address {address}: cannot connect to Ray ({e})") from None
    try:
        yield
    finally:
        ray.shutdown()
