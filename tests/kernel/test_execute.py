"""execute_request semantics against a real kernel."""

from __future__ import annotations

from tests.kernel.helpers import (
    IS_IPYKERNEL,
    collect_iopub_until_idle,
    evaluate,
    execute,
    execute_ok,
    get_reply,
    of_type,
    outputs,
    parent_id,
    stream_text,
)


def _count(kc) -> int:
    """The current execution_count, read without incrementing it."""
    reply, _ = execute(kc, "", silent=True)
    return reply["content"]["execution_count"]


def test_execute_result_with_execution_count(kernel):
    kc = kernel.kc
    reply1, iopub1 = execute_ok(kc, "6 * 7")
    results = of_type(iopub1, "execute_result")
    assert len(results) == 1
    assert results[0]["content"]["data"]["text/plain"] == "42"
    assert results[0]["content"]["execution_count"] == reply1["content"]["execution_count"]
    inputs = of_type(iopub1, "execute_input")
    assert len(inputs) == 1
    assert inputs[0]["content"]["code"] == "6 * 7"
    assert inputs[0]["content"]["execution_count"] == reply1["content"]["execution_count"]

    reply2, iopub2 = execute_ok(kc, "'a' + 'b'")
    assert reply2["content"]["execution_count"] == reply1["content"]["execution_count"] + 1
    [result2] = of_type(iopub2, "execute_result")
    assert result2["content"]["data"]["text/plain"] == "'ab'"
    assert result2["content"]["execution_count"] == reply2["content"]["execution_count"]
    # A statement produces no execute_result.
    _, iopub3 = execute_ok(kc, "y = 3")
    assert of_type(iopub3, "execute_result") == []


def test_silent_execution(kernel):
    kc = kernel.kc
    execute_ok(kc, "a = 1")
    before = _count(kc)
    _reply, iopub = execute_ok(kc, "a = 2; 99", silent=True)
    # silent: no execute_input, no execute_result, only busy/idle
    assert [m["msg_type"] for m in iopub] == ["status", "status"], iopub
    # (stdout written by silent code is still published by ipykernel, so that
    # is not asserted either way; but there is never an execute_input/result)
    _, iopub = execute_ok(kc, "print('p'); 7", silent=True)
    assert of_type(iopub, "execute_input") == []
    assert of_type(iopub, "execute_result") == []
    assert _count(kc) == before
    # ... but the code did run
    assert evaluate(kc, "a") == "2"


def test_store_history_false_keeps_count(kernel):
    kc = kernel.kc
    execute_ok(kc, "1")
    before = _count(kc)
    reply, iopub = execute_ok(kc, "b = 5; b", store_history=False)
    # outputs are still published
    [result] = of_type(iopub, "execute_result")
    assert result["content"]["data"]["text/plain"] == "5"
    assert _count(kc) == before
    # the next stored execution gets the next number: nothing was consumed
    reply, _ = execute_ok(kc, "b")
    assert reply["content"]["execution_count"] == before + 1


def test_user_expressions(kernel):
    kc = kernel.kc
    execute_ok(kc, "z = 10")
    reply, _ = execute_ok(
        kc, "z += 1", user_expressions={"ok": "z * 2", "bad": "1/0", "missing": "undefined_name"}
    )
    ue = reply["content"]["user_expressions"]
    assert ue["ok"]["status"] == "ok"
    # evaluated after the code ran
    assert ue["ok"]["data"]["text/plain"] == "22"
    assert ue["bad"]["status"] == "error"
    assert ue["bad"]["ename"] == "ZeroDivisionError"
    assert ue["missing"]["status"] == "error"
    assert ue["missing"]["ename"] == "NameError"


def test_error_reply_and_iopub_error(kernel):
    kc = kernel.kc
    reply, iopub = execute(kc, "def f():\n    raise ValueError('bad value 123')\nf()")
    content = reply["content"]
    assert content["status"] == "error"
    assert content["ename"] == "ValueError"
    assert content["evalue"] == "bad value 123"
    assert isinstance(content["traceback"], list) and content["traceback"]
    assert any("bad value 123" in line for line in content["traceback"])
    errors = of_type(iopub, "error")
    assert len(errors) == 1
    assert errors[0]["content"]["ename"] == "ValueError"
    assert errors[0]["content"]["evalue"] == "bad value 123"
    assert errors[0]["content"]["traceback"]
    # the kernel still works
    reply, _ = execute_ok(kc, "1")


def test_display_data(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(
        kc,
        "from IPython.display import display, HTML\n"
        "display(HTML('<b>bold</b>'), metadata={'k': 'v'})\n"
        "display({'text/plain': 'plain', 'application/json': {'a': 1}}, raw=True)",
    )
    displays = of_type(iopub, "display_data")
    assert len(displays) == 2
    assert displays[0]["content"]["data"]["text/html"] == "<b>bold</b>"
    assert "text/plain" in displays[0]["content"]["data"]
    assert displays[0]["content"]["metadata"] == {"k": "v"}
    assert displays[1]["content"]["data"]["application/json"] == {"a": 1}
    assert of_type(iopub, "execute_result") == []


def test_update_display_data(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(
        kc,
        "from IPython.display import display\n"
        "h = display('first', display_id=True)\n"
        "h.update('second')\n"
        "did = h.display_id",
    )
    [disp] = of_type(iopub, "display_data")
    [upd] = of_type(iopub, "update_display_data")
    display_id = disp["content"]["transient"]["display_id"]
    assert display_id
    assert upd["content"]["transient"]["display_id"] == display_id
    assert disp["content"]["data"]["text/plain"] == "'first'"
    assert upd["content"]["data"]["text/plain"] == "'second'"
    assert evaluate(kc, "did") == repr(display_id)

    # update from a later cell: parent is the later request
    _reply, iopub2 = execute_ok(kc, "h.update('third')")
    [upd2] = of_type(iopub2, "update_display_data")
    assert upd2["content"]["transient"]["display_id"] == display_id
    assert upd2["content"]["data"]["text/plain"] == "'third'"


def test_clear_output_wait(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(
        kc,
        "from IPython.display import clear_output\n"
        "print('before')\n"
        "clear_output(wait=True)\n"
        "print('after')\n"
        "clear_output()",
    )
    types = [m["msg_type"] for m in outputs(iopub)]
    clears = of_type(iopub, "clear_output")
    assert [c["content"]["wait"] for c in clears] == [True, False]
    # ordering: stream 'before' precedes the first clear, 'after' precedes the second
    first_clear = types.index("clear_output")
    assert "before" in stream_text(outputs(iopub)[:first_clear])
    assert "after" in stream_text(outputs(iopub)[first_clear:])


def test_set_next_input_payload(kernel):
    kc = kernel.kc
    reply, _ = execute_ok(kc, "get_ipython().set_next_input('x = 1')")
    payloads = reply["content"]["payload"]
    [p] = [p for p in payloads if p["source"] == "set_next_input"]
    assert p["text"] == "x = 1"
    assert p["replace"] is False
    # Payloads do not leak into the next reply.
    reply, _ = execute_ok(kc, "2")
    assert reply["content"]["payload"] == []


def test_page_payload(kernel):
    kc = kernel.kc
    execute_ok(kc, "def documented():\n    'Docstring for the pager 4711.'\n")
    reply, _iopub = execute_ok(kc, "documented?")
    payloads = reply["content"]["payload"]
    [p] = [p for p in payloads if p["source"] == "page"]
    assert "text/plain" in p["data"]
    assert "Docstring for the pager 4711." in p["data"]["text/plain"]
    assert isinstance(p.get("start", 0), int)
    reply, _ = execute_ok(kc, "?print")
    [p] = [p for p in reply["content"]["payload"] if p["source"] == "page"]
    assert "print" in p["data"]["text/plain"]


def test_magic_time(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(kc, "%time 1+1")
    [result] = of_type(iopub, "execute_result")
    assert result["content"]["data"]["text/plain"] == "2"
    assert "Wall time" in stream_text(iopub, "stdout")


def test_cell_magic_bash(kernel):
    _, iopub = execute_ok(kernel.kc, "%%bash\necho hi\necho err >&2")
    assert stream_text(iopub, "stdout") == "hi\n"
    assert "err" in stream_text(iopub, "stderr")


def test_shell_escape(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(kc, "!echo shell")
    assert "shell" in stream_text(iopub, "stdout")
    _, iopub = execute_ok(kc, "out = !echo captured\nout")
    [result] = of_type(iopub, "execute_result")
    assert "captured" in result["content"]["data"]["text/plain"]


def test_top_level_await(kernel):
    kc = kernel.kc
    _, iopub = execute_ok(kc, "import asyncio\nawait asyncio.sleep(0.01)\n5")
    [result] = of_type(iopub, "execute_result")
    assert result["content"]["data"]["text/plain"] == "5"
    _, iopub = execute_ok(
        kc, "async def twice(x):\n    await asyncio.sleep(0)\n    return 2 * x\nawait twice(21)"
    )
    [result] = of_type(iopub, "execute_result")
    assert result["content"]["data"]["text/plain"] == "42"


def test_status_busy_idle_around_each_request(kernel):
    kc = kernel.kc
    for request in (
        lambda: kc.execute("print(1)"),
        lambda: kc.execute("1/0"),
        lambda: kc.kernel_info(),
        lambda: kc.complete("pri", 3),
        lambda: kc.inspect("print", 5),
        lambda: kc.is_complete("x = ("),
        lambda: kc.history(hist_access_type="tail", n=3),
    ):
        msg_id = request()
        reply = get_reply(kc, msg_id)
        iopub = collect_iopub_until_idle(kc, msg_id)
        assert all(parent_id(m) == msg_id for m in iopub)
        statuses = [m["content"]["execution_state"] for m in iopub if m["msg_type"] == "status"]
        assert statuses == ["busy", "idle"], (reply["msg_type"], statuses)
        assert iopub[0]["msg_type"] == "status"  # busy comes first
        assert iopub[-1]["msg_type"] == "status"  # idle comes last


def test_stop_on_error_aborts_queued(kernel, tmp_path):
    kc = kernel.kc
    # Only requests already in the kernel when the error comes are aborted (ipykernel's
    # stop_on_error_timeout is 0 too), so the first cell fails only once the next two
    # are there: relaykernel's supervisor answers kernel_info at once, after the shell
    # requests sent before it; ipykernel's shell thread takes them off the socket as
    # they come, while the cell has yet to find the file.
    release = tmp_path / "release"
    id1 = kc.execute(f"import os, time\nend = time.monotonic() + 30\n"
                     f"while not os.path.exists({str(release)!r}) and time.monotonic() < end:\n"
                     f"    time.sleep(0.01)\n"
                     f"raise RuntimeError('first fails')", allow_stdin=False)
    id2 = kc.execute("x = 1", allow_stdin=False)
    id3 = kc.execute("x = 2", allow_stdin=False)
    if not IS_IPYKERNEL:
        get_reply(kc, kc.kernel_info(), timeout=10)
    release.touch()
    r1 = get_reply(kc, id1)
    r2 = get_reply(kc, id2)
    r3 = get_reply(kc, id3)
    assert r1["content"]["status"] == "error"
    assert r1["content"]["ename"] == "RuntimeError"
    assert r2["content"]["status"] == "aborted"
    assert r3["content"]["status"] == "aborted"
    for msg_id in (id1, id2, id3):
        collect_iopub_until_idle(kc, msg_id)
    reply, _ = execute(kc, "x")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "NameError"
    # the abort is over: new requests run normally
    execute_ok(kc, "x = 3")
    assert evaluate(kc, "x") == "3"


def test_stop_on_error_false_runs_queued(kernel):
    kc = kernel.kc
    id1 = kc.execute("raise RuntimeError('first fails')", stop_on_error=False, allow_stdin=False)
    id2 = kc.execute("x = 1", allow_stdin=False)
    id3 = kc.execute("x = x + 1", allow_stdin=False)
    r1 = get_reply(kc, id1)
    r2 = get_reply(kc, id2)
    r3 = get_reply(kc, id3)
    assert r1["content"]["status"] == "error"
    assert r2["content"]["status"] == "ok"
    assert r3["content"]["status"] == "ok"
    for msg_id in (id1, id2, id3):
        collect_iopub_until_idle(kc, msg_id)
    assert evaluate(kc, "x") == "2"
