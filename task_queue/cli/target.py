"""What a command inspects: the queues behind `--url` (Redis) or `--app` (a service)."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from ..broker.base import AbstractBroker
from ..broker.memory import InMemoryBroker
from .worker import load_service

__all__ = ["URL_ENV", "CliError", "Queue", "Target", "Secrets", "open_target"]

URL_ENV = "TASK_QUEUE_URL"
"""Environment variable read when neither `--url` nor `--app` is given."""

_CONNECT_SECONDS = 3.0  # how long a command keeps retrying an unreachable Redis


class CliError(Exception):
    """A command cannot do what was asked: the message is shown, `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Secrets:
    """Hides the passwords of the URLs given on the command line in any text shown."""

    _pairs: list[tuple[str, str]] = field(default_factory=list)

    def add_url(self, url: str) -> str:
        """Remember `url` as secret-bearing and return it with its password masked."""
        masked = mask_url(url)
        if masked != url:
            self._pairs.append((url, masked))
            try:
                parts = urlsplit(url)
                passwords = [parts.password, *re.findall(r"(?i)password=([^&]*)", parts.query)]
            except ValueError:
                passwords = []
            for password in passwords:
                if password:
                    self._pairs.append((password, "***"))
                    self._pairs.append((unquote(password), "***"))
        return masked

    def scrub(self, text: str) -> str:
        """Return `text` with every remembered URL masked and every password replaced."""
        for secret, shown in self._pairs:
            text = text.replace(secret, shown)
        return text


def mask_url(url: str) -> str:
    """`url` with its password masked (see `task_queue.broker.redis.mask_url`)."""
    try:
        from ..broker.redis import mask_url as mask
    except ImportError:  # no redis-py: a Redis URL cannot be used, but never show it whole
        return re.sub(r"//[^@/]*@", "//***@", url)
    return mask(url)


@dataclass(slots=True)
class Queue:
    """One queue to inspect: its name and the broker that reads it."""

    name: str
    broker: AbstractBroker


@dataclass(slots=True)
class Target:
    """The queues a command works on, and how to describe where they live."""

    where: str
    queues: list[Queue]
    in_memory: bool = False

    async def close(self) -> None:
        """Close every broker this target opened."""
        for queue in self.queues:
            await queue.broker.close()


def _option(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name, None)


def open_target(args: argparse.Namespace, secrets: Secrets) -> Target:
    """Build the target from `--url`/`--queue`/`--prefix` or `--app`; CliError(2) if unclear."""
    url = _option(args, "url")
    app = _option(args, "app")
    if url and app:
        raise CliError("give either --url or --app, not both", 2)
    if app:
        if _option(args, "queue") or _option(args, "prefix"):
            raise CliError(
                "--queue and --prefix go with --url; with --app the service's broker decides", 2
            )
        try:
            service = load_service(app)
        except (ImportError, ValueError, TypeError) as exc:
            raise CliError(f"cannot load {app}: {exc}", 2) from None
        broker = service.broker
        name = str(getattr(broker, "queue", "default"))
        return Target(f"app {app}", [Queue(name, broker)], isinstance(broker, InMemoryBroker))
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise CliError(
            f"say where the queue is: --url redis://..., --app module:service or ${URL_ENV}", 2
        )
    shown = secrets.add_url(url)
    try:
        from ..broker.redis import RedisBroker
    except ImportError as exc:
        raise CliError(str(exc), 2) from None
    names = _option(args, "queue") or ["default"]
    prefix = _option(args, "prefix") or "tq"
    queues = []
    for name in dict.fromkeys(names):
        try:
            broker = RedisBroker.from_url(
                url,
                queue=name,
                prefix=prefix,
                retry_seconds=_CONNECT_SECONDS,
                client_options={"socket_connect_timeout": _CONNECT_SECONDS},
            )
        except ValueError as exc:
            raise CliError(
                f"bad --url {shown} or queue/prefix: {secrets.scrub(str(exc))}", 2
            ) from None
        queues.append(Queue(name, broker))
    return Target(f"{shown} prefix {prefix}", queues)
