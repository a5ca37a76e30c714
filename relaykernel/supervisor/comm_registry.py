"""Authoritative registry of open comms, kept by the supervisor.

The worker that runs user code can crash and be replaced at any moment, and
with it every in-process ``comm.BaseComm`` object.  The frontend, however,
still believes those comms are open and keeps talking to them.  The supervisor
sees all comm traffic in both directions, so it is the one place where the
comms can be remembered: this module records every ``comm_open``, tracks
``comm_msg``/``comm_close``, and for ipywidgets comms keeps the latest full
widget state so that a new worker can be handed replayable ``comm_open``
messages and ``request_states`` can be answered even while no worker is up.

Standard library only: the supervisor must stay small and must never import
IPython, zmq or ipywidgets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["WIDGET_TARGET", "CommRecord", "CommRegistry"]

log = logging.getLogger(__name__)

#: Target name of ipywidgets model comms (one comm per widget model).
WIDGET_TARGET = "jupyter.widget"
#: Widget comm_msg methods that change model state.  ``echo_update`` is the
#: kernel confirming a frontend update (protocol 2.1); both carry state deltas.
_STATE_METHODS = ("update", "echo_update")
_SIDES = ("frontend", "kernel")
_BINARY = (bytes, bytearray, memoryview)
_SCALARS = frozenset({str, int, float, bool, type(None)})

Path = list[str | int]


def _to_bytes(buf: Any) -> bytes:
    """Own a copy of a buffer: zmq frames behind memoryviews may be reused."""
    if isinstance(buf, bytes):
        return buf
    return memoryview(buf).tobytes()


def _copy_json(value: Any) -> Any:
    """Copy a decoded JSON tree so later caller mutations cannot reach us.

    Tuples become lists (what they would be after a JSON round trip) and
    binary leaves become ``bytes``.  Iterative, like :func:`_split_buffers`:
    valid JSON nested deeper than Python's recursion allows (``json`` parses
    ~1000 levels) must not make the supervisor drop a comm_open.
    """
    if type(value) is dict and all(type(v) in _SCALARS for v in value.values()):
        return dict(value)  # most widget updates: {"value": 7}
    root: list[Any] = [None]
    todo: list[tuple[Any, Any, Any]] = [(value, root, 0)]  # (source, its copy's container, key)
    while todo:
        source, into, key = todo.pop()
        if isinstance(source, dict):
            copy: Any = dict.fromkeys(source)  # the keys in their order, values filled in below
            todo.extend((v, copy, k) for k, v in source.items())
        elif isinstance(source, (list, tuple)):
            copy = [None] * len(source)
            todo.extend((v, copy, i) for i, v in enumerate(source))
        elif isinstance(source, _BINARY):
            copy = _to_bytes(source)
        else:
            copy = source
        into[key] = copy
    return root[0]


def _put_buffers(state: dict[str, Any], paths: list[Any], buffers: list[Any]) -> None:
    """Place each buffer into ``state`` at its path (the inverse of splitting).

    Bad paths are logged and skipped rather than raised: a malformed message
    from one widget must not take the supervisor down.
    """
    for path, buf in zip(paths, buffers):
        if not isinstance(path, (list, tuple)) or not path:
            log.warning("ignoring invalid widget buffer path %r", path)
            continue
        obj: Any = state
        try:
            for key in path[:-1]:
                obj = obj[key]
            last = path[-1]
            if isinstance(obj, list) and isinstance(last, int) and last == len(obj):
                obj.append(None)
            obj[last] = _to_bytes(buf)
        except (KeyError, IndexError, TypeError):
            log.warning("ignoring widget buffer with unreachable path %r", path)


def _split_buffers(value: Any, path: Path, paths: list[Path], buffers: list[bytes]) -> Any:
    """Return a copy of ``value`` without binary leaves, collecting them.

    Mirrors the ipywidgets wire layout: a binary dict value is removed from
    its dict, a binary list item is replaced by ``None`` (so indices stay
    valid), and buffers are listed in depth-first, insertion order.
    Iterative, so a state of any depth can be replayed (see _copy_json).
    """
    root: list[Any] = [None]
    # (source, its copy's container, key, path); popped in depth-first order
    todo: list[tuple[Any, Any, Any, Path]] = [(value, root, 0, path)]
    while todo:
        source, into, key, at = todo.pop()
        if isinstance(source, _BINARY):
            paths.append(at)
            buffers.append(_to_bytes(source))
            if isinstance(into, list):
                into[key] = None
            continue
        if isinstance(source, dict):
            copy: Any = {k: None for k, v in source.items() if not isinstance(v, _BINARY)}
            children = list(source.items())
        elif isinstance(source, (list, tuple)):
            copy = [None] * len(source)
            children = list(enumerate(source))
        else:
            into[key] = source
            continue
        into[key] = copy
        todo.extend((v, copy, k, [*at, k]) for k, v in reversed(children))
    return root[0]


@dataclass
class CommRecord:
    """Everything needed to re-create one open comm in a fresh worker.

    ``data``/``metadata``/``buffers`` are those of the original ``comm_open``.
    For widget comms ``state`` is the latest full model state with binary
    values stored inline (as ``bytes``) at their place in the tree, which
    makes merging updates trivial; :meth:`split_state` gives the wire form.
    """

    comm_id: str
    target_name: str
    target_module: str | None
    data: dict[str, Any]
    metadata: dict[str, Any]
    buffers: list[bytes]
    state: dict[str, Any] | None = None

    @property
    def is_widget(self) -> bool:
        """True for ipywidgets model comms whose state we track."""
        return self.state is not None

    def split_state(self) -> tuple[dict[str, Any], list[Path], list[bytes]]:
        """Widget state as (JSON state, buffer_paths, buffers), wire layout."""
        paths: list[Path] = []
        buffers: list[bytes] = []
        state = _split_buffers(self.state or {}, [], paths, buffers)
        return state, paths, buffers


class CommRegistry:
    """The set of open comms, updated from traffic seen in both directions.

    Only the supervisor's main thread uses it, so it takes no lock: the loop owns
    every socket and worker link, and the early responder thread (early.py), which
    has the sockets before the loop, holds comm messages for the loop to route.
    """

    def __init__(self) -> None:
        self._comms: dict[str, CommRecord] = {}

    # -- traffic -----------------------------------------------------------

    def opened(self, content: dict[str, Any], metadata: dict[str, Any] | None,
               buffers: list[Any] | None, side: str) -> None:
        """Record a ``comm_open`` sent by ``side`` ("frontend" or "kernel").

        Re-opening an existing comm_id replaces the record: the newest open is
        what the frontend now holds.  Raises ValueError on a malformed open so
        the caller can log it and move on.
        """
        if side not in _SIDES:
            raise ValueError(f"side must be one of {_SIDES}, not {side!r}")
        comm_id = content.get("comm_id")
        target_name = content.get("target_name")
        if not isinstance(comm_id, str) or not isinstance(target_name, str):
            # ValueError, not TypeError: a malformed message, not a programming error.
            raise ValueError("comm_open content needs string comm_id and target_name")  # noqa: TRY004
        data = content.get("data")
        data = _copy_json(data) if isinstance(data, dict) else {}
        bufs = [_to_bytes(b) for b in buffers or []]
        record = CommRecord(
            comm_id=comm_id,
            target_name=target_name,
            target_module=content.get("target_module"),
            data=data,
            metadata=_copy_json(metadata or {}),
            buffers=bufs,
        )
        if target_name == WIDGET_TARGET and isinstance(data.get("state"), dict):
            state = _copy_json(data["state"])
            _put_buffers(state, data.get("buffer_paths") or [], bufs)
            record.state = state
        self._comms[comm_id] = record

    def message(self, content: dict[str, Any], buffers: list[Any] | None, side: str) -> bool:
        """Account for a ``comm_msg``; return False if its comm_id is unknown.

        Widget ``update``/``echo_update`` deltas are merged key by key into
        the tracked state (a key's new value, binary or not, replaces the old
        one wholesale, as in the model).  Other methods (``custom``,
        ``request_state``...) do not change state.
        """
        if side not in _SIDES:
            raise ValueError(f"side must be one of {_SIDES}, not {side!r}")
        comm_id = content.get("comm_id")
        record = self._comms.get(comm_id) if isinstance(comm_id, str) else None
        if record is None:
            return False
        data = content.get("data")
        if record.state is None or not isinstance(data, dict):
            return True
        if data.get("method") in _STATE_METHODS and isinstance(data.get("state"), dict):
            delta = _copy_json(data["state"])
            _put_buffers(delta, data.get("buffer_paths") or [], list(buffers or []))
            record.state.update(delta)
        return True

    def closed(self, comm_id: str) -> bool:
        """Forget a comm (``comm_close`` from either side); False if unknown."""
        return self._comms.pop(comm_id, None) is not None

    # -- queries -----------------------------------------------------------

    def get(self, comm_id: str) -> CommRecord | None:
        """The live record for ``comm_id``, or None."""
        return self._comms.get(comm_id)

    def __len__(self) -> int:
        return len(self._comms)

    def __contains__(self, comm_id: object) -> bool:
        return comm_id in self._comms

    def __iter__(self) -> Iterator[CommRecord]:
        """Records in open order (a snapshot, so closing while iterating is safe).

        Open order matters for replay: a widget refers to models opened
        before it (e.g. its layout), so they must be re-created first.
        """
        return iter(list(self._comms.values()))

    def for_target(self, target_name: str) -> list[CommRecord]:
        """Records of all open comms with ``target_name``, in open order."""
        return [r for r in self if r.target_name == target_name]

    def info(self, target_name: str | None = None) -> dict[str, dict[str, str]]:
        """The ``comms`` field of a ``comm_info_reply``.

        Answered by the supervisor so it stays correct while the worker is
        down or being replaced.
        """
        return {r.comm_id: {"target_name": r.target_name}
                for r in self if target_name is None or r.target_name == target_name}

    # -- replay --------------------------------------------------------------

    def open_message_for_replay(
        self, comm_id: str
    ) -> tuple[dict[str, Any], dict[str, Any], list[bytes]]:
        """(content, metadata, buffers) of a ``comm_open`` re-creating the comm.

        Sent to a fresh worker after a crash.  For widgets the open data
        carries the latest state (not the stale one from the original open),
        with binary values split out as buffers in wire layout.  Raises
        KeyError for an unknown comm_id.
        """
        record = self._comms[comm_id]
        data = _copy_json(record.data)
        buffers = list(record.buffers)
        if record.state is not None:
            data["state"], data["buffer_paths"], buffers = record.split_state()
        content: dict[str, Any] = {"comm_id": record.comm_id,
                                   "target_name": record.target_name,
                                   "data": data}
        if record.target_module is not None:
            content["target_module"] = record.target_module
        return content, _copy_json(record.metadata), buffers

    def widget_states(self) -> tuple[dict[str, Any], list[bytes]]:
        """(data, buffers) of the ``update_states`` reply on the control comm.

        Same shape as ipywidgets' own answer to ``request_states``:
        ``{"method": "update_states", "states": {model_id: {"model_name",
        "model_module", "model_module_version", "state"}}, "buffer_paths":
        [[model_id, "state", ...], ...]}``.  Lets the supervisor restore a
        reloaded page's widgets without asking a (possibly absent) worker.
        """
        states: dict[str, Any] = {}
        paths: list[Path] = []
        buffers: list[bytes] = []
        for record in self.for_target(WIDGET_TARGET):
            if record.state is None:
                continue
            states[record.comm_id] = {
                "model_name": record.state.get("_model_name"),
                "model_module": record.state.get("_model_module"),
                "model_module_version": record.state.get("_model_module_version"),
                "state": record.state,
            }
        wire_states = _split_buffers(states, [], paths, buffers)
        data = {"method": "update_states", "states": wire_states, "buffer_paths": paths}
        return data, buffers
