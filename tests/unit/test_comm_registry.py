"""Unit tests for the supervisor's comm registry.

The last group drives real ipywidgets in-process through a recording comm and
checks that the registry, fed only the recorded traffic, answers
``request_states`` and replays ``comm_open`` exactly as ipywidgets would.
"""

from __future__ import annotations

import json
from typing import Any

import comm
import pytest
from comm.base_comm import BaseComm

from relaykernel.supervisor.comm_registry import WIDGET_TARGET, CommRecord, CommRegistry

WIDGET_META = {"version": "2.1.0"}


def _widget_open(comm_id: str, state: dict[str, Any], buffer_paths: list[Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
    return {
        "comm_id": comm_id,
        "target_name": WIDGET_TARGET,
        "target_module": None,
        "data": {"state": state, "buffer_paths": buffer_paths or [], **extra},
    }


def _msg(comm_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"comm_id": comm_id, "data": data}


def _model_state(**kw: Any) -> dict[str, Any]:
    state = {"_model_name": "FooModel", "_model_module": "foo",
             "_model_module_version": "1.0.0"}
    state.update(kw)
    return state


# -- plain comms ----------------------------------------------------------------


def test_open_and_close_from_frontend() -> None:
    reg = CommRegistry()
    reg.opened({"comm_id": "c1", "target_name": "my.target", "data": {"a": 1}},
               {"m": True}, [b"xy"], "frontend")
    assert len(reg) == 1 and "c1" in reg
    rec = reg.get("c1")
    assert isinstance(rec, CommRecord)
    assert (rec.comm_id, rec.target_name, rec.target_module) == ("c1", "my.target", None)
    assert rec.data == {"a": 1} and rec.metadata == {"m": True} and rec.buffers == [b"xy"]
    assert not rec.is_widget and rec.state is None
    assert reg.closed("c1") is True
    assert reg.closed("c1") is False
    assert len(reg) == 0 and "c1" not in reg and reg.get("c1") is None


def test_open_and_close_from_kernel_keeps_target_module() -> None:
    reg = CommRegistry()
    reg.opened({"comm_id": "k1", "target_name": "t", "target_module": "mod.x", "data": {}},
               {}, [], "kernel")
    rec = reg.get("k1")
    assert rec is not None and rec.target_module == "mod.x"
    content, metadata, buffers = reg.open_message_for_replay("k1")
    assert content == {"comm_id": "k1", "target_name": "t", "target_module": "mod.x",
                       "data": {}}
    assert metadata == {} and buffers == []
    assert reg.closed("k1") and len(reg) == 0


def test_info_filter_iteration_and_for_target() -> None:
    reg = CommRegistry()
    reg.opened({"comm_id": "a", "target_name": "t1", "data": {}}, {}, [], "kernel")
    reg.opened({"comm_id": "b", "target_name": "t2", "data": {}}, {}, [], "frontend")
    reg.opened({"comm_id": "c", "target_name": "t1", "data": {}}, {}, [], "kernel")
    assert reg.info() == {"a": {"target_name": "t1"}, "b": {"target_name": "t2"},
                          "c": {"target_name": "t1"}}
    assert reg.info("t1") == {"a": {"target_name": "t1"}, "c": {"target_name": "t1"}}
    assert reg.info("nope") == {}
    assert [r.comm_id for r in reg] == ["a", "b", "c"]
    assert [r.comm_id for r in reg.for_target("t1")] == ["a", "c"]
    # iterating over a snapshot: closing while iterating is fine
    for rec in reg:
        reg.closed(rec.comm_id)
    assert len(reg) == 0


def test_unknown_comm_ids() -> None:
    reg = CommRegistry()
    assert reg.message(_msg("ghost", {"method": "update", "state": {}}), [], "frontend") is False
    assert reg.message({"data": {}}, [], "kernel") is False
    assert reg.closed("ghost") is False
    assert reg.get("ghost") is None and "ghost" not in reg
    with pytest.raises(KeyError):
        reg.open_message_for_replay("ghost")
    assert reg.info() == {}


def test_malformed_open_and_bad_side_raise() -> None:
    reg = CommRegistry()
    with pytest.raises(ValueError):
        reg.opened({"target_name": "t", "data": {}}, {}, [], "kernel")
    with pytest.raises(ValueError):
        reg.opened({"comm_id": "x", "data": {}}, {}, [], "kernel")
    with pytest.raises(ValueError):
        reg.opened({"comm_id": "x", "target_name": "t", "data": {}}, {}, [], "worker")
    reg.opened({"comm_id": "x", "target_name": "t"}, None, None, "kernel")
    assert reg.get("x").data == {}  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        reg.message(_msg("x", {}), [], "nobody")


def test_non_widget_messages_do_not_change_open_data() -> None:
    reg = CommRegistry()
    reg.opened({"comm_id": "p", "target_name": "plain", "data": {"k": [1, 2]}},
               {}, [memoryview(b"raw")], "kernel")
    assert reg.message(_msg("p", {"method": "update", "state": {"k": 3}}), [], "frontend")
    content, _, buffers = reg.open_message_for_replay("p")
    assert content["data"] == {"k": [1, 2]}
    assert buffers == [b"raw"] and isinstance(buffers[0], bytes)


def test_reopen_replaces_record() -> None:
    reg = CommRegistry()
    reg.opened(_widget_open("w", _model_state(value=1)), WIDGET_META, [], "kernel")
    reg.opened(_widget_open("w", _model_state(value=2)), WIDGET_META, [], "frontend")
    assert len(reg) == 1
    rec = reg.get("w")
    assert rec is not None and rec.state["value"] == 2


def test_registry_owns_copies() -> None:
    reg = CommRegistry()
    content = _widget_open("w", _model_state(value=[1, 2]), [["blob"]])
    backing = bytearray(b"abc")
    reg.opened(content, WIDGET_META, [memoryview(backing)], "kernel")
    content["data"]["state"]["value"].append(3)
    backing[:] = b"zzz"
    rec = reg.get("w")
    assert rec is not None
    assert rec.state["value"] == [1, 2] and rec.state["blob"] == b"abc"
    assert "blob" not in rec.data["state"] and rec.buffers == [b"abc"]


# -- widget state -----------------------------------------------------------------


def test_widget_state_merge_update_and_echo_update() -> None:
    reg = CommRegistry()
    reg.opened(_widget_open("w", _model_state(value=1, description="d", max=10)),
               WIDGET_META, [], "kernel")
    rec = reg.get("w")
    assert rec is not None and rec.is_widget
    assert reg.message(_msg("w", {"method": "update", "state": {"value": 5},
                                  "buffer_paths": []}), [], "frontend")
    assert rec.state == _model_state(value=5, description="d", max=10)
    assert reg.message(_msg("w", {"method": "echo_update", "state": {"value": 6},
                                  "buffer_paths": []}), [], "kernel")
    assert reg.message(_msg("w", {"method": "update", "state": {"max": 20, "new": "n"}}),
                       [], "kernel")
    assert rec.state == _model_state(value=6, description="d", max=20, new="n")
    # key order is kept for existing keys, new keys are appended
    assert list(rec.state)[-4:] == ["value", "description", "max", "new"]
    # these do not change state
    for data in ({"method": "custom", "content": {"value": 99}},
                 {"method": "request_state"},
                 {"method": "update"},
                 {"method": "whatever", "state": {"value": 99}}):
        assert reg.message(_msg("w", data), [], "frontend")
    assert rec.state["value"] == 6
    content, metadata, buffers = reg.open_message_for_replay("w")
    assert content == {"comm_id": "w", "target_name": WIDGET_TARGET,
                       "data": {"state": _model_state(value=6, description="d", max=20,
                                                      new="n"),
                                "buffer_paths": []}}
    assert metadata == WIDGET_META and buffers == []
    # the original open data is preserved
    assert rec.data["state"]["value"] == 1


def test_binary_buffers_placed_and_reextracted() -> None:
    reg = CommRegistry()
    reg.opened(_widget_open("img", _model_state(format="png", width=""), [["value"]]),
               WIDGET_META, [memoryview(b"\x89PNG-one")], "kernel")
    rec = reg.get("img")
    assert rec is not None and rec.state["value"] == b"\x89PNG-one"
    content, _, buffers = reg.open_message_for_replay("img")
    assert "value" not in content["data"]["state"]
    assert content["data"]["buffer_paths"] == [["value"]]
    assert buffers == [b"\x89PNG-one"]

    # frontend update with a new binary value
    assert reg.message(_msg("img", {"method": "update", "state": {"width": "10"},
                                    "buffer_paths": [["value"]]}),
                       [memoryview(b"two")], "frontend")
    content, _, buffers = reg.open_message_for_replay("img")
    assert content["data"]["state"]["width"] == "10" and buffers == [b"two"]

    # a later non-binary update of the key replaces the binary value
    reg.message(_msg("img", {"method": "echo_update", "state": {"value": None},
                             "buffer_paths": []}), [], "kernel")
    content, _, buffers = reg.open_message_for_replay("img")
    assert content["data"]["state"]["value"] is None
    assert content["data"]["buffer_paths"] == [] and buffers == []

    # and binary again
    reg.message(_msg("img", {"method": "update", "state": {}, "buffer_paths": [["value"]]}),
                [b"three"], "kernel")
    content, _, buffers = reg.open_message_for_replay("img")
    assert "value" not in content["data"]["state"] and buffers == [b"three"]


def test_nested_buffer_paths() -> None:
    reg = CommRegistry()
    state = _model_state(data=[None, 7, None], obj={"shape": [2], "meta": {}})
    reg.opened(_widget_open("n", state, [["data", 0], ["data", 2], ["obj", "raw"]]),
               WIDGET_META, [b"b0", bytearray(b"b2"), memoryview(b"raw")], "kernel")
    rec = reg.get("n")
    assert rec is not None
    assert rec.state["data"] == [b"b0", 7, b"b2"]
    assert rec.state["obj"] == {"shape": [2], "meta": {}, "raw": b"raw"}
    content, _, buffers = reg.open_message_for_replay("n")
    assert content["data"]["state"]["data"] == [None, 7, None]
    assert content["data"]["state"]["obj"] == {"shape": [2], "meta": {}}
    assert content["data"]["buffer_paths"] == [["data", 0], ["data", 2], ["obj", "raw"]]
    assert buffers == [b"b0", b"b2", b"raw"]

    # an update replaces the whole top-level key, nested binaries included
    reg.message(_msg("n", {"method": "update", "state": {"data": [1, None]},
                           "buffer_paths": [["data", 1]]}), [b"new"], "frontend")
    content, _, buffers = reg.open_message_for_replay("n")
    assert content["data"]["state"]["data"] == [1, None]
    assert content["data"]["buffer_paths"] == [["data", 1], ["obj", "raw"]]
    assert buffers == [b"new", b"raw"]


def test_bad_buffer_paths_are_ignored() -> None:
    reg = CommRegistry()
    reg.opened(_widget_open("w", _model_state(v=1), [["missing", "deep"], [], "v"]),
               WIDGET_META, [b"a", b"b", b"c"], "kernel")
    rec = reg.get("w")
    assert rec is not None and rec.state == _model_state(v=1)


def test_replay_keeps_extra_open_data_keys() -> None:
    reg = CommRegistry()
    reg.opened(_widget_open("w", _model_state(v=1), [], extra_key="kept"),
               WIDGET_META, [], "kernel")
    content, _, _ = reg.open_message_for_replay("w")
    assert content["data"]["extra_key"] == "kept"


def test_widget_without_state_is_not_tracked_as_widget() -> None:
    reg = CommRegistry()
    reg.opened({"comm_id": "w", "target_name": WIDGET_TARGET, "data": {}}, {}, [], "frontend")
    rec = reg.get("w")
    assert rec is not None and not rec.is_widget
    assert reg.message(_msg("w", {"method": "update", "state": {"v": 1}}), [], "frontend")
    assert reg.widget_states()[0]["states"] == {}


def test_widget_states_shape() -> None:
    reg = CommRegistry()
    reg.opened(_widget_open("w1", _model_state(value=3)), WIDGET_META, [], "kernel")
    reg.opened(_widget_open("w2", _model_state(items=[None]), [["items", 0]]),
               WIDGET_META, [b"bin"], "kernel")
    reg.opened({"comm_id": "ctl", "target_name": "jupyter.widget.control", "data": {}},
               {"version": "1.0.0"}, [], "frontend")
    data, buffers = reg.widget_states()
    assert data == {
        "method": "update_states",
        "states": {
            "w1": {"model_name": "FooModel", "model_module": "foo",
                   "model_module_version": "1.0.0", "state": _model_state(value=3)},
            "w2": {"model_name": "FooModel", "model_module": "foo",
                   "model_module_version": "1.0.0", "state": _model_state(items=[None])},
        },
        "buffer_paths": [["w2", "state", "items", 0]],
    }
    assert buffers == [b"bin"]
    json.dumps(data)  # wire-ready


# -- against real ipywidgets -----------------------------------------------------------

try:
    import ipywidgets
    from ipywidgets.widgets import widget as widget_mod
except ImportError:  # a test extra; the tests above do not need it
    ipywidgets = widget_mod = None


class RecordingComm(BaseComm):
    """A comm that records what it would publish instead of sending it."""

    def __init__(self, sink: list[dict[str, Any]], **kwargs: Any) -> None:
        self.sink = sink  # set first: BaseComm.__init__ publishes comm_open
        super().__init__(**kwargs)
        if not self.primary:  # as a kernel's comm manager does for incoming opens
            comm.get_comm_manager().register_comm(self)

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                    buffers: Any = None, **keys: Any) -> None:
        # What the frontend would decode: JSON round trip, buffers as bytes.
        content = json.loads(json.dumps(dict(data=data or {}, comm_id=self.comm_id, **keys)))
        self.sink.append({"msg_type": msg_type, "content": content,
                          "metadata": json.loads(json.dumps(metadata or {})),
                          "buffers": [memoryview(b).tobytes() for b in buffers or []]})


@pytest.fixture
def widgets_env():
    """Real ipywidgets talking into a list; all state restored afterwards."""
    if ipywidgets is None:
        pytest.skip("ipywidgets is not installed")
    sink: list[dict[str, Any]] = []
    saved_create = comm.create_comm
    saved_control = widget_mod.Widget._control_comm
    saved_instances = dict(widget_mod._instances)
    widget_mod._instances.clear()
    comm.create_comm = lambda **kw: RecordingComm(sink, **kw)
    try:
        yield sink
    finally:
        widget_mod.Widget.close_all()
        comm.create_comm = saved_create
        widget_mod.Widget._control_comm = saved_control
        widget_mod._instances.clear()
        widget_mod._instances.update(saved_instances)


def _feed(reg: CommRegistry, sink: list[dict[str, Any]], start: int = 0) -> int:
    """Give kernel-side traffic recorded since ``start`` to the registry."""
    for m in sink[start:]:
        if m["msg_type"] == "comm_open":
            reg.opened(m["content"], m["metadata"], m["buffers"], "kernel")
        elif m["msg_type"] == "comm_msg":
            assert reg.message(m["content"], m["buffers"], "kernel")
        elif m["msg_type"] == "comm_close":
            assert reg.closed(m["content"]["comm_id"])
    return len(sink)


def _frontend_update(reg: CommRegistry, w: Any, state: dict[str, Any],
                     buffer_paths: list[Any], buffers: list[bytes]) -> None:
    content = {"comm_id": w.model_id, "data": {"method": "update", "state": state,
                                               "buffer_paths": buffer_paths}}
    assert reg.message(json.loads(json.dumps(content)), buffers, "frontend")
    w.comm.handle_msg({"content": content, "buffers": [memoryview(b) for b in buffers]})


def _ipywidgets_request_states(sink: list[dict[str, Any]]) -> tuple[dict[str, Any], list]:
    ctl = RecordingComm(sink, target_name="jupyter.widget.control", primary=False)
    widget_mod.Widget.handle_control_comm_opened(ctl, {"metadata": {"version": "1.0.0"}})
    n = len(sink)
    ctl.handle_msg({"content": {"comm_id": ctl.comm_id, "data": {"method": "request_states"}},
                    "buffers": []})
    (reply,) = sink[n:]
    assert reply["msg_type"] == "comm_msg"
    return reply["content"]["data"], reply["buffers"]


def test_against_real_ipywidgets(widgets_env: list[dict[str, Any]]) -> None:
    sink = widgets_env
    reg = CommRegistry()
    slider = ipywidgets.IntSlider(value=3, description="s")
    image = ipywidgets.Image(value=b"\x89PNG-first", format="png")
    box = ipywidgets.VBox([slider, image])
    n = _feed(reg, sink)
    assert {r.comm_id for r in reg.for_target(WIDGET_TARGET)} == set(widget_mod._instances)

    slider.value = 5  # kernel-side update
    image.value = b"second"  # kernel-side binary update
    n = _feed(reg, sink, n)
    _frontend_update(reg, slider, {"value": 7}, [], [])  # triggers echo_update
    _frontend_update(reg, image, {"width": "20"}, [["value"]], [b"third"])
    n = _feed(reg, sink, n)
    assert any(m["content"]["data"].get("method") == "echo_update" for m in sink)
    assert slider.value == 7 and image.value == b"third"
    throwaway = ipywidgets.Button()
    throwaway_id = throwaway.model_id
    throwaway.close()  # comm_close: gone from both ipywidgets and the registry
    _feed(reg, sink, n)
    assert throwaway_id not in reg and throwaway_id not in widget_mod._instances

    expected_data, expected_buffers = _ipywidgets_request_states(sink)
    data, buffers = reg.widget_states()
    assert json.loads(json.dumps(data)) == expected_data
    assert data["buffer_paths"] == expected_data["buffer_paths"]  # same order
    assert [bytes(b) for b in buffers] == expected_buffers
    assert [image.model_id, "state", "value"] in data["buffer_paths"]

    # Replayed opens carry the current state, in ipywidgets' own wire layout.
    for w in (slider, image, box, slider.layout, image.layout):
        content, metadata, rbufs = reg.open_message_for_replay(w.model_id)
        state, paths, wbufs = widget_mod._remove_buffers(w.get_state())
        assert metadata == {"version": "2.1.0"}
        assert content["data"] == json.loads(json.dumps({"state": state,
                                                         "buffer_paths": paths}))
        assert rbufs == [memoryview(b).tobytes() for b in wbufs]


def test_replay_recreates_widgets_in_fresh_worker(widgets_env: list[dict[str, Any]]) -> None:
    sink = widgets_env
    reg = CommRegistry()
    slider = ipywidgets.IntSlider(value=2)
    image = ipywidgets.Image(value=b"pixels")
    ipywidgets.HBox([slider, image])
    n = _feed(reg, sink)
    _frontend_update(reg, slider, {"value": 9}, [], [])
    _feed(reg, sink, n)
    before = {mid: w.get_state() for mid, w in widget_mod._instances.items()}

    # The worker "crashes": all kernel-side widget objects are gone, silently.
    manager = comm.get_comm_manager()
    for w in list(widget_mod._instances.values()):
        w.comm._closed = True  # a dead worker sends no comm_close
        manager.comms.pop(w.model_id, None)
    widget_mod._instances.clear()
    for rec in reg:  # open order: children before their containers
        content, metadata, buffers = reg.open_message_for_replay(rec.comm_id)
        new_comm = RecordingComm(sink, comm_id=content["comm_id"],
                                 target_name=content["target_name"], primary=False)
        widget_mod.Widget.handle_comm_opened(new_comm, {
            "content": content, "metadata": metadata,
            "buffers": [memoryview(b) for b in buffers]})
    after = {mid: w.get_state() for mid, w in widget_mod._instances.items()}
    assert set(after) == set(before)
    for mid, state in before.items():
        s1, p1, b1 = widget_mod._remove_buffers(state)
        s2, p2, b2 = widget_mod._remove_buffers(after[mid])
        assert (s1, p1) == (s2, p2)
        assert [bytes(x) for x in b1] == [bytes(x) for x in b2]
    assert widget_mod._instances[slider.model_id].value == 9
    assert widget_mod._instances[image.model_id].value == b"pixels"


# -- deep trees -------------------------------------------------------------------


def _nested(depth: int, leaf: Any = "bottom") -> Any:
    """{"a": [{"a": [... leaf ...]}]}: dicts and lists, ``depth`` containers deep."""
    value = leaf
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


def _chain(value: Any) -> tuple[list[str], Any]:
    """The container types down a _nested tree, and its leaf (== would recurse)."""
    kinds = []
    while isinstance(value, (dict, list)):
        kinds.append(type(value).__name__)
        value = value["a"] if isinstance(value, dict) else value[0]
    return kinds, value


def test_a_comm_open_with_json_nested_beyond_the_recursion_limit_is_kept() -> None:
    """Valid JSON 900 deep (json parses ~1000) was dropped with a RecursionError."""
    data = json.loads(json.dumps({"deep": _nested(900)}))
    reg = CommRegistry()
    reg.opened({"comm_id": "d", "target_name": "t", "data": data}, {"m": _nested(900)}, [], "frontend")
    content, metadata, _ = reg.open_message_for_replay("d")
    assert json.dumps(content["data"]) == json.dumps(data)
    assert metadata == {"m": _nested(900)}
    assert content["data"] is not data  # still a copy


def test_a_deep_widget_state_keeps_its_buffers_and_their_paths() -> None:
    depth = 5000
    state = _model_state(tree=_nested(depth, b"leaf"), flat=b"f")
    reg = CommRegistry()
    reg.opened(_widget_open("w", {"_model_name": "X"}), WIDGET_META, [], "kernel")
    assert reg.message(_msg("w", {"method": "update", "state": state, "buffer_paths": []}), [], "kernel")
    content, _, buffers = reg.open_message_for_replay("w")
    tree_path, flat_path = content["data"]["buffer_paths"]
    assert buffers == [b"leaf", b"f"]  # depth-first, in the state's key order
    assert flat_path == ["flat"]
    assert tree_path[0] == "tree" and len(tree_path) == depth + 1
    assert tree_path[1:] == ["a" if level % 2 else 0 for level in reversed(range(depth))]
    assert _chain(content["data"]["state"]["tree"]) == _chain(_nested(depth, None))  # list items stay, as None
    data, wire_buffers = reg.widget_states()
    assert wire_buffers == [b"leaf", b"f"]
    assert data["buffer_paths"][1] == ["w", "state", "flat"]
