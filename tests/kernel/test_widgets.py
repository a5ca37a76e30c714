"""ipywidgets 8 end to end, at the protocol level: the test client plays the widget manager."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kernel.comm_helpers import (
    comm_info,
    comm_msg,
    comm_open,
    comms_of,
    handled,
    new_comm_id,
    only,
)
from tests.kernel.helpers import evaluate, execute_ok, of_type, parent_id, stream_text

pytest.importorskip("ipywidgets", minversion="8")

WIDGET_TARGET = "jupyter.widget"
CONTROL_TARGET = "jupyter.widget.control"
PROTOCOL_VERSION = "2.1.0"  # ipywidgets 8 widget protocol
CONTROL_PROTOCOL_VERSION = "1.0.0"  # ipywidgets 8 control protocol


def _models(iopub: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """comm_id -> comm_open message of every widget model opened in ``iopub``."""
    return {m["content"]["comm_id"]: m for m in comms_of(iopub, "comm_open")
            if m["content"]["target_name"] == WIDGET_TARGET}


def _slider(kc) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """Create and display ``s = IntSlider(value=3)``; return (comm_id, its open msg, iopub)."""
    reply, iopub = execute_ok(kc, "import ipywidgets\n"
                                  "s = ipywidgets.IntSlider(value=3, description='v')\n"
                                  "display(s)\n")
    models = _models(iopub)
    sliders = [m for m in models.values()
               if m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"]
    opened = only(sliders)
    assert parent_id(opened) == parent_id(reply)
    return opened["content"]["comm_id"], opened, iopub


def test_int_slider_open_update_echo_and_request_states(kernel):
    kc = kernel.kc
    slider_id, opened, iopub = _slider(kc)

    # -- the comm_open carries the full model state
    data = opened["content"]["data"]
    state = data["state"]
    assert state["value"] == 3
    assert state["_model_name"] == "IntSliderModel"
    assert state["_model_module"] == "@jupyter-widgets/controls"
    assert state["description"] == "v"
    assert data["buffer_paths"] == []
    assert opened["metadata"]["version"] == PROTOCOL_VERSION
    # its layout and style models are opened before it (the slider refers to them)
    models = _models(iopub)
    for ref in ("layout", "style"):
        ref_id = state[ref].removeprefix("IPY_MODEL_")
        assert ref_id in models, (ref, list(models))
        assert iopub.index(models[ref_id]) < iopub.index(opened)

    # -- displayed as a widget view
    display = only(of_type(iopub, "display_data"))
    view = display["content"]["data"]["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == slider_id

    info = comm_info(kc, WIDGET_TARGET)
    assert set(info) == set(models)
    assert comm_info(kc)[slider_id] == {"target_name": WIDGET_TARGET}

    # -- the frontend moves the slider
    execute_ok(kc, "s.observe(lambda change: print('value is now', change['new']), 'value')")
    msg_id = comm_msg(kc, slider_id, {"method": "update", "state": {"value": 7},
                                      "buffer_paths": []})
    iopub = handled(kc, msg_id)
    echo = only(comms_of(iopub, "comm_msg", slider_id))
    assert echo["content"]["data"]["method"] == "echo_update"
    assert echo["content"]["data"]["state"] == {"value": 7}
    assert echo["content"]["data"].get("buffer_paths", []) == []
    assert parent_id(echo) == msg_id
    # an observer's print is output of the update message
    assert stream_text(iopub) == "value is now 7\n"
    assert all(parent_id(m) == msg_id for m in of_type(iopub, "stream"))
    assert evaluate(kc, "s.value") == "7"

    # -- a reloaded page asks for every model's state on the control comm
    control_id = new_comm_id()
    iopub = handled(kc, comm_open(kc, control_id, CONTROL_TARGET,
                                  metadata={"version": CONTROL_PROTOCOL_VERSION}))
    assert not comms_of(iopub, "comm_close"), "the control comm was refused"
    msg_id = comm_msg(kc, control_id, {"method": "request_states"})
    iopub = handled(kc, msg_id)
    answer = only(comms_of(iopub, "comm_msg", control_id))
    assert parent_id(answer) == msg_id
    data = answer["content"]["data"]
    assert data["method"] == "update_states"
    states = data["states"]
    assert slider_id in states
    assert states[slider_id]["model_name"] == "IntSliderModel"
    assert states[slider_id]["model_module"] == "@jupyter-widgets/controls"
    assert states[slider_id]["state"]["value"] == 7
    assert set(models) <= set(states)
    assert data["buffer_paths"] == []

    # -- the kernel changes the value: an update goes out on the model's comm
    reply, iopub = execute_ok(kc, "s.value = 11")
    update = only(comms_of(iopub, "comm_msg", slider_id))
    assert update["content"]["data"] == {"method": "update", "state": {"value": 11},
                                         "buffer_paths": []}
    assert parent_id(update) == parent_id(reply)
    iopub = handled(kc, comm_msg(kc, control_id, {"method": "request_states"}))
    states = only(comms_of(iopub, "comm_msg", control_id))["content"]["data"]["states"]
    assert states[slider_id]["state"]["value"] == 11


def test_widget_close_from_kernel(kernel):
    kc = kernel.kc
    slider_id, _, _ = _slider(kc)
    reply, iopub = execute_ok(kc, "s.close()")
    closed = only(comms_of(iopub, "comm_close", slider_id))
    assert parent_id(closed) == parent_id(reply)
    assert slider_id not in comm_info(kc)
    # the state request no longer includes it
    control_id = new_comm_id()
    handled(kc, comm_open(kc, control_id, CONTROL_TARGET,
                          metadata={"version": CONTROL_PROTOCOL_VERSION}))
    iopub = handled(kc, comm_msg(kc, control_id, {"method": "request_states"}))
    states = only(comms_of(iopub, "comm_msg", control_id))["content"]["data"]["states"]
    assert slider_id not in states


def test_binary_widget_state_round_trip(kernel):
    """A bytes trait travels as a buffer with its buffer_path, both ways."""
    kc = kernel.kc
    _, iopub = execute_ok(kc, (
        "import ipywidgets\n"
        "img = ipywidgets.Image(value=b'\\x89PNG-first', format='png')\n"))
    opened = only([m for m in _models(iopub).values()
                   if m["content"]["data"]["state"].get("_model_name") == "ImageModel"])
    img_id = opened["content"]["comm_id"]
    assert opened["content"]["data"]["buffer_paths"] == [["value"]]
    assert [bytes(b) for b in opened["buffers"]] == [b"\x89PNG-first"]

    new = bytes(range(256)) * 4
    msg_id = comm_msg(kc, img_id, {"method": "update", "state": {}, "buffer_paths": [["value"]]},
                      buffers=[new])
    iopub = handled(kc, msg_id)
    echo = only(comms_of(iopub, "comm_msg", img_id))
    assert echo["content"]["data"]["method"] == "echo_update"
    assert echo["content"]["data"]["buffer_paths"] == [["value"]]
    assert [bytes(b) for b in echo["buffers"]] == [new]
    assert evaluate(kc, "img.value == bytes(range(256)) * 4") == "True"

    # request_states sends binary state as buffers, with paths [model_id, 'state', ...]
    control_id = new_comm_id()
    handled(kc, comm_open(kc, control_id, CONTROL_TARGET,
                          metadata={"version": CONTROL_PROTOCOL_VERSION}))
    iopub = handled(kc, comm_msg(kc, control_id, {"method": "request_states"}))
    answer = only(comms_of(iopub, "comm_msg", control_id))
    data = answer["content"]["data"]
    assert data["method"] == "update_states"
    assert "value" not in data["states"][img_id]["state"]
    assert data["states"][img_id]["state"]["format"] == "png"
    by_path = {tuple(p): bytes(b) for p, b in zip(data["buffer_paths"], answer["buffers"])}
    assert len(by_path) == len(answer["buffers"])
    assert by_path[(img_id, "state", "value")] == new


def test_output_widget_captures_by_msg_id(kernel):
    """``with out:`` tells the frontend (by msg_id) which outputs belong to the widget."""
    kc = kernel.kc
    reply, iopub = execute_ok(kc, "import ipywidgets\nout = ipywidgets.Output()\n")
    out_id = only([m for m in _models(iopub).values()
                   if m["content"]["data"]["state"].get("_model_name") == "OutputModel"]
                  )["content"]["comm_id"]
    reply, iopub = execute_ok(kc, "with out:\n    print('inside')\nprint('outside')\n")
    exec_id = parent_id(reply)
    updates = [m["content"]["data"]["state"] for m in comms_of(iopub, "comm_msg", out_id)
               if m["content"]["data"].get("method") == "update"]
    assert {"msg_id": exec_id} in updates, updates
    assert updates[-1] == {"msg_id": ""}, updates
    assert stream_text(iopub) == "inside\noutside\n"


def test_button_click_from_frontend(kernel):
    """A custom widget message (a click) runs the kernel's handler; its output is the message's."""
    kc = kernel.kc
    _, iopub = execute_ok(kc, (
        "import ipywidgets\n"
        "b = ipywidgets.Button(description='go')\n"
        "clicks = []\n"
        "def on_click(button):\n"
        "    clicks.append(1)\n"
        "    print('clicked', len(clicks))\n"
        "b.on_click(on_click)\n"))
    button_id = only([m for m in _models(iopub).values()
                      if m["content"]["data"]["state"].get("_model_name") == "ButtonModel"]
                     )["content"]["comm_id"]
    for n in (1, 2):
        msg_id = comm_msg(kc, button_id, {"method": "custom", "content": {"event": "click"}})
        iopub = handled(kc, msg_id)
        assert stream_text(iopub) == f"clicked {n}\n"
        assert all(parent_id(m) == msg_id for m in of_type(iopub, "stream"))
    assert evaluate(kc, "len(clicks)") == "2"
