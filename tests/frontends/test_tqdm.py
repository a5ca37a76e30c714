"""tqdm's notebook progress bar: ipywidgets over comms, updated while the cell runs."""

from __future__ import annotations

from pathlib import Path
from queue import Empty

import pytest

from tests.kernel.helpers import (
    Deadline,
    KernelHandle,
    collect_iopub_until_idle,
    evaluate,
    get_reply,
    parent_id,
)

pytest.importorskip("tqdm")
pytest.importorskip("ipywidgets")

LOOP = """\
import os, time
from {module} import tqdm
FLAG = {flag!r}
for i in tqdm(range(4), mininterval=0, desc='work'):
    if i == 2:
        # block until the test has seen the bar at 2/4: proves updates flow mid-cell
        end = time.monotonic() + 30
        while not os.path.exists(FLAG) and time.monotonic() < end:
            time.sleep(0.02)
print('loop done')
"""


def _progress_model_id(msgs):
    for m in msgs:
        if m["msg_type"] == "comm_open":
            state = m["content"]["data"]["state"]
            if state.get("_model_name") == "FloatProgressModel":
                return m["content"]["comm_id"], state
    return None, None


def _run_bar(kernel: KernelHandle, module: str, tmp_path: Path):
    kc = kernel.kc
    flag = tmp_path / "go"
    msg_id = kc.execute(LOOP.format(module=module, flag=str(flag)), allow_stdin=False)
    deadline = Deadline(60)
    early: list[dict] = []
    # Read iopub while the cell is blocked at i == 2.
    while True:
        assert not deadline.expired(), (
            f"no progress update to 2/4 while the cell ran; got "
            f"{[m['msg_type'] for m in early]}")
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Empty:
            continue
        if parent_id(msg) != msg_id:
            continue
        early.append(msg)
        assert msg["msg_type"] not in ("error", "execute_result")
        assert not (msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle"), \
            f"cell finished before the flag was set: {[m['msg_type'] for m in early]}"
        comm_id, _ = _progress_model_id(early)
        if comm_id and msg["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == comm_id \
                and msg["content"]["data"].get("state", {}).get("value") == 2.0:
            break
    flag.write_text("go")
    reply = get_reply(kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "ok", reply["content"]
    rest = collect_iopub_until_idle(kc, msg_id, timeout=30)
    return early, early + rest


def _check_widget_bar(early, msgs):
    opens = [m for m in msgs if m["msg_type"] == "comm_open"]
    assert opens and all(m["content"]["target_name"] == "jupyter.widget" for m in opens)
    comm_id, state = _progress_model_id(msgs)
    assert comm_id, "no FloatProgressModel widget was opened"
    assert state["max"] == 4
    # the bar's container is displayed as a widget view
    views = [m for m in msgs if m["msg_type"] == "display_data"
             and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
    assert len(views) == 1
    assert any(m["msg_type"] == "display_data" for m in early)
    values = [m["content"]["data"]["state"]["value"] for m in msgs
              if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id
              and "value" in m["content"]["data"].get("state", {})]
    assert values[:1] == [1.0] and values[-1] == 4.0, values
    assert values == sorted(values)
    styles = [m["content"]["data"]["state"]["bar_style"] for m in msgs
              if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id
              and "bar_style" in m["content"]["data"].get("state", {})]
    assert styles[-1:] == ["success"]
    text = "".join(m["content"]["text"] for m in msgs
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
    assert text == "loop done\n"
    # no text progress bar leaked to stderr
    assert not [m for m in msgs if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
                and "it/s" in m["content"]["text"]]


def test_tqdm_notebook_widget(kernel: KernelHandle, tmp_path: Path):
    early, msgs = _run_bar(kernel, "tqdm.notebook", tmp_path)
    _check_widget_bar(early, msgs)


def test_tqdm_auto_renders_as_widget(kernel: KernelHandle, tmp_path: Path):
    # fail fast (rather than at the loop's bound) when tqdm.auto picks the text bar
    # tqdm.auto.tqdm is a class of its own module, built on the notebook or the text bar
    picked = evaluate(kernel.kc, "issubclass(__import__('tqdm.auto', fromlist=['tqdm']).tqdm, "
                                 "__import__('tqdm.notebook', fromlist=['tqdm']).tqdm)")
    assert picked == "True", "tqdm.auto picked the text bar"
    early, msgs = _run_bar(kernel, "tqdm.auto", tmp_path)
    _check_widget_bar(early, msgs)
