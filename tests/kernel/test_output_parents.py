"""Which request an output answers (its parent header), issue 17 item 6.

Output belongs to the cell whose context produced it: an asyncio task keeps
publishing to the cell that created it after the next cell began, a thread to
the cell that started it.  ``shell.set_parent``, ``set_thread_parent`` and
``kernel.get_parent(channel)`` behave as in ipykernel.
"""

from __future__ import annotations

from typing import Any

from tests.kernel.helpers import (
    Deadline,
    execute_ok,
    get_reply,
    of_type,
    parent_id,
    relaykernel_only,
)


def _run_collecting_all(kc: Any, code: str, timeout: float = 30) -> tuple[str, list[dict[str, Any]]]:
    """Execute ``code``; return its msg_id and every iopub message, whatever its
    parent, up to this execute's idle."""
    msg_id = kc.execute(code, allow_stdin=False)
    reply = get_reply(kc, msg_id, timeout=timeout)
    assert reply["content"]["status"] == "ok", reply["content"]
    deadline = Deadline(timeout)
    msgs = []
    while True:
        msg = kc.get_iopub_msg(timeout=deadline.remaining())
        msgs.append(msg)
        if (parent_id(msg) == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            return msg_id, msgs


def _parents_of(msgs: list[dict[str, Any]], marker: str) -> set[str | None]:
    """The parents of the stream and display messages that carry ``marker``."""
    found = set()
    for msg in msgs:
        if msg["msg_type"] == "stream":
            text = msg["content"]["text"]
        elif msg["msg_type"] == "display_data":
            text = msg["content"]["data"].get("text/plain", "")
        else:
            continue
        if marker in text:
            found.add(parent_id(msg))
    return found


TASK_CELL = """
import asyncio, sys
go = asyncio.Event()
async def later():
    await go.wait()
    print('task out')
    print('task err', file=sys.stderr)
    display('task display')
task = asyncio.ensure_future(later())
"""


def test_a_task_publishes_to_the_cell_that_created_it(kernel):
    kc = kernel.kc
    first, _ = execute_ok(kc, TASK_CELL)
    first_id = first["parent_header"]["msg_id"]
    second_id, msgs = _run_collecting_all(kc, "go.set()\nawait task\nprint('cell two')")
    assert _parents_of(msgs, "task out") == {first_id}
    assert _parents_of(msgs, "task err") == {first_id}
    assert _parents_of(msgs, "task display") == {first_id}
    assert _parents_of(msgs, "cell two") == {second_id}


THREAD_CELL = """
import threading
go = threading.Event()
def later():
    go.wait(30)
    print('thread out', flush=True)
    display('thread display')
worker = threading.Thread(target=later)
worker.start()
"""


@relaykernel_only  # ipykernel 7.4 sends a thread's output to the latest request (here the second cell)
def test_a_thread_publishes_to_the_cell_that_started_it(kernel):
    kc = kernel.kc
    first, _ = execute_ok(kc, THREAD_CELL)
    first_id = first["parent_header"]["msg_id"]
    second_id, msgs = _run_collecting_all(kc, "go.set()\nworker.join(30)\nprint('cell two')")
    assert _parents_of(msgs, "thread out") == {first_id}
    assert _parents_of(msgs, "thread display") == {first_id}
    assert _parents_of(msgs, "cell two") == {second_id}


POOL_CELL = """
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(1)
pool.submit(print, 'warming up').result()
"""


def test_pool_work_publishes_to_the_cell_that_submitted_it(kernel):
    """Not to the cell whose submit started the pool's thread."""
    kc = kernel.kc
    first_id, msgs = _run_collecting_all(kc, POOL_CELL)
    assert _parents_of(msgs, "warming up") == {first_id}
    second_id, msgs = _run_collecting_all(
        kc, "import asyncio\n"
            "pool.submit(print, 'from the pool').result()\n"
            "await asyncio.get_running_loop().run_in_executor(pool, print, 'through the loop')\n"
            "pool.shutdown()")
    assert _parents_of(msgs, "from the pool") == {second_id}
    assert _parents_of(msgs, "through the loop") == {second_id}


REDIRECTING_CELL = """
import threading
ip = get_ipython()
def redirected():
    tokens = ip.set_thread_parent(first)
    print('to the first cell', flush=True)
    ip.reset_thread_parent(tokens)
    print('to this cell', flush=True)
t = threading.Thread(target=redirected)
t.start()
t.join(30)
ip.set_parent(first)
print('main thread to the first cell')
"""


def test_set_thread_parent_and_set_parent_redirect_output(kernel):
    """The reply and idle still answer the second cell after its code set another parent."""
    kc = kernel.kc
    first, _ = execute_ok(kc, "first = get_ipython().get_parent()")
    first_id = first["parent_header"]["msg_id"]
    second_id, msgs = _run_collecting_all(kc, REDIRECTING_CELL)
    assert _parents_of(msgs, "to the first cell") == {first_id}
    assert _parents_of(msgs, "to this cell") == {second_id}
    assert _parents_of(msgs, "main thread to the first cell") == {first_id}
    assert not of_type([m for m in msgs if parent_id(m) == second_id], "error")


DISPLAY_CELL = """
ip = get_ipython()
this = ip.get_parent()['header']['msg_id']
assert ip.display_pub.parent_header['msg_id'] == this
assert ip.displayhook.parent_header['msg_id'] == this
assert callable(ip.displayhook.set_parent) and callable(ip.display_pub.set_parent)
tokens = ip.display_pub.set_thread_parent(first)
display('display to the first cell')
ip.display_pub.reset_thread_parent(tokens)
display('display to this cell')
"""


def test_the_display_publisher_and_hook_have_a_parent_as_in_ipykernel(kernel):
    kc = kernel.kc
    first_id, _ = _run_collecting_all(kc, "first = get_ipython().get_parent()")
    second_id, msgs = _run_collecting_all(kc, DISPLAY_CELL)
    assert _parents_of(msgs, "display to the first cell") == {first_id}
    assert _parents_of(msgs, "display to this cell") == {second_id}


def test_get_parent_names_the_request_being_handled_or_the_latest_of_a_channel(kernel):
    """``get_parent()``: the running request; ``get_parent('control')``: the request
    that came on control last, ``get_parent('shell')`` the one that came on shell
    (the supervisor tells the worker which channel a request came on)."""
    kc = kernel.kc
    shell_id, _ = _run_collecting_all(kc, "k = get_ipython().kernel")
    control = kc.session.msg("execute_request", {
        "code": "print('control sees', k.get_parent()['header']['msg_id'],\n"
                "      k.get_parent('shell')['header']['msg_id'])",
        "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False})
    kc.control_channel.send(control)
    control_id = control["header"]["msg_id"]
    assert get_reply(kc, control_id, channel="control")["content"]["status"] == "ok"
    code = ("print(k.get_parent()['header']['msg_id'])\n"
            "print(k.get_parent('shell')['header']['msg_id'])\n"
            "print(get_ipython().get_parent()['header']['msg_id'])\n"
            "print(k.get_parent('control')['header']['msg_id'])")
    msg_id, msgs = _run_collecting_all(kc, code)
    text = "".join(m["content"]["text"] for m in of_type(msgs, "stream") if parent_id(m) == msg_id)
    assert text.split() == [msg_id] * 3 + [control_id]
    seen = "".join(m["content"]["text"] for m in of_type(msgs, "stream") if "control sees" in m["content"]["text"])
    assert seen.split() == ["control", "sees", control_id, shell_id]
