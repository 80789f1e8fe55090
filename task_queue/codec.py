"""Task <-> bytes, and JSON checks of payloads and results: the only place that serializes.

Payloads and results are JSON. A value is normalized by one encode/decode round trip, so
every broker hands back exactly what a JSON store would (tuples become lists, non-string
keys become strings) and no caller shares mutable state with a broker. Nothing here ever
unpickles.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from .errors import DecodeError, PayloadError
from .models import Task, TaskError, TaskStatus

__all__ = [
    "decode_task",
    "dumps",
    "is_flat",
    "is_text",
    "encode_task",
    "loads",
    "normalize",
    "task_from_dict",
    "task_to_dict",
]

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
# `JSONEncoder.encode` builds a new C encoder on every call, which costs more than
# encoding a small payload; this one is built once with the same settings. Without the
# circular-reference markers a cycle ends in RecursionError, which `dumps` reports.
_encode_chunks = (
    _c_encoder(
        None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    if _c_encoder is not None
    else None
)


def _encode(value: Any) -> str:
    if _encode_chunks is None:  # pragma: no cover - CPython always has the C encoder
        return _encoder.encode(value)
    return "".join(_encode_chunks(value, 0))


_decode = json.JSONDecoder().decode


def is_text(value: str) -> bool:
    """True when `value` can be stored as UTF-8: it holds no lone surrogate.

    Python strings may hold them (`os.listdir` gives them for file names that are not
    UTF-8); JSON text stored as UTF-8 cannot.
    """
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def dumps(value: Any, where: str = "value") -> str:
    """Encode `value` as compact JSON, or raise `PayloadError` naming the offending field."""
    try:
        text = _encode(value)
        if not is_text(text):
            raise ValueError("a string holds a lone surrogate")
    except (TypeError, ValueError, RecursionError) as exc:
        raise _explain(value, where, exc) from None
    return text


def loads(data: str | bytes) -> Any:
    """Decode JSON text; raises `DecodeError` on malformed input."""
    try:
        return _decode(data.decode() if isinstance(data, bytes) else data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed JSON: {exc}") from None


def normalize(value: Any, where: str = "value") -> Any:
    """Return a fresh copy of `value` as it reads back from JSON; `PayloadError` if it can't."""
    if value is None or type(value) in (int, bool):
        return value
    if type(value) is str and is_text(value):
        return value
    if is_flat(value):
        return dict(value)
    return _decode(dumps(value, where))


def is_flat(value: Any) -> bool:
    """True for a dict of str keys and plain values (str, int, float, bool, None; no
    containers) that JSON can encode: it reads back from JSON unchanged."""
    if type(value) is not dict:
        return False
    for key, item in value.items():
        if type(key) is not str or not (key.isascii() or is_text(key)):
            return False
        kind = type(item)
        if kind is str:
            if not (item.isascii() or is_text(item)):
                return False
        elif kind is float:
            if item - item != 0.0:  # inf or nan: not JSON
                return False
        elif kind is int:
            # A huge int may have more digits than str() gives (sys.int_info): the
            # full encoder decides.
            if not -_BIG_INT < item < _BIG_INT:
                return False
        elif kind is not bool and item is not None:
            return False
    return True


_BIG_INT = 2**63


def _explain(value: Any, path: str, cause: BaseException) -> PayloadError:
    bad = _find_bad(value, path, set())
    if bad is None:
        return PayloadError(f"{path} cannot be encoded as JSON: {cause}", path)
    where, reason = bad
    return PayloadError(f"{where} cannot be encoded as JSON: {reason}", where)


_SURROGATE = "holds a lone surrogate, which is not valid Unicode text"
"""Why a string cannot be stored (see `is_text`)."""


def _find_bad(value: Any, path: str, seen: set[int]) -> tuple[str, str] | None:
    if isinstance(value, str):
        return None if is_text(value) else (path, f"it {_SURROGATE}")
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"{value!r} is not a finite number")
    if isinstance(value, dict | list | tuple):
        if id(value) in seen:
            return (path, "it contains itself (circular reference)")
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and not isinstance(key, str | int | float | bool | None):
                return (f"{path}[{key!r}]", f"key of type {type(key).__name__} is not allowed")
            if isinstance(key, str) and not is_text(key):
                return (f"{path}[{key!r}]", f"the key {_SURROGATE}")
            found = _find_bad(item, f"{path}[{key!r}]", seen)
            if found is not None:
                return found
        seen.discard(id(value))
        return None
    return (path, f"object of type {type(value).__name__} is not JSON serializable")


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def task_to_dict(task: Task) -> dict[str, Any]:
    """Describe `task` with JSON types only (times as POSIX seconds)."""
    error = task.error
    return {
        "id": task.id,
        "name": task.name,
        "payload": task.payload,
        "priority": task.priority,
        "scheduled_at": task.scheduled_at.timestamp(),
        "created_at": task.created_at.timestamp(),
        "status": task.status.value,
        "attempts": task.attempts,
        "max_retries": task.max_retries,
        "timeout": task.timeout,
        "result": task.result,
        "error": None
        if error is None
        else {"type": error.type, "message": error.message, "traceback": error.traceback},
        "started_at": _ts(task.started_at),
        "finished_at": _ts(task.finished_at),
        "progress": task.progress,
        "metadata": task.metadata,
        "token": task.token,
        "worker_id": task.worker_id,
        "cancel_requested": task.cancel_requested,
        "depends_on": task.depends_on,
        "context": task.context,
        "logs": task.logs,
    }


def task_from_dict(data: Any) -> Task:
    """Rebuild a task from `task_to_dict` output; `DecodeError` says what is wrong."""
    if not isinstance(data, dict):
        raise DecodeError(f"task record must be a JSON object, got {type(data).__name__}")
    try:
        raw_error = data.get("error")
        error = (
            None
            if raw_error is None
            else TaskError(
                type=str(raw_error["type"]),
                message=str(raw_error.get("message", "")),
                traceback=raw_error.get("traceback"),
            )
        )
        payload = data.get("payload") or {}
        metadata = data.get("metadata") or {}
        context = data.get("context") or {}
        if not all(isinstance(d, dict) for d in (payload, metadata, context)):
            raise TypeError("payload, metadata and context must be JSON objects")
        depends_on = data.get("depends_on") or []
        logs = data.get("logs") or []
        if not isinstance(depends_on, list) or not isinstance(logs, list):
            raise TypeError("depends_on and logs must be JSON arrays")
        return Task(
            id=str(data["id"]),
            name=str(data["name"]),
            payload=payload,
            priority=int(data.get("priority", 0)),
            scheduled_at=datetime.fromtimestamp(float(data["scheduled_at"]), UTC),
            created_at=datetime.fromtimestamp(float(data["created_at"]), UTC),
            status=TaskStatus(data.get("status", "pending")),
            attempts=int(data.get("attempts", 0)),
            max_retries=int(data.get("max_retries", 3)),
            timeout=None if data.get("timeout") is None else float(data["timeout"]),
            result=data.get("result"),
            error=error,
            started_at=_dt(data.get("started_at")),
            finished_at=_dt(data.get("finished_at")),
            progress=float(data.get("progress", 0.0)),
            metadata=metadata,
            token=int(data.get("token", 0)),
            worker_id=data.get("worker_id"),
            cancel_requested=bool(data.get("cancel_requested", False)),
            depends_on=[str(p) for p in depends_on],
            context=context,
            logs=logs,
        )
    except (KeyError, TypeError, ValueError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise DecodeError(f"invalid task record: {what}") from None


def encode_task(task: Task) -> bytes:
    """Encode `task` as UTF-8 JSON; `PayloadError` names a field that can't be encoded."""
    return dumps(task_to_dict(task), "task").encode()


def decode_task(data: str | bytes) -> Task:
    """Decode bytes made by `encode_task`; `DecodeError` on anything else."""
    return task_from_dict(loads(data))
