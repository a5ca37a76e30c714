"""The stdin channel: input(), getpass, and allow_stdin=False."""

from __future__ import annotations

from tests.kernel.helpers import (
    collect_iopub_until_idle,
    execute,
    get_reply,
    relaykernel_only,
    stream_text,
)


def test_input_round_trip(kernel):
    kc = kernel.kc
    msg_id = kc.execute("v = input('your name? ')\nprint('hello', v)\nlen(v)", allow_stdin=True)
    request = kc.get_stdin_msg(timeout=30)
    assert request["header"]["msg_type"] == "input_request"
    assert request["parent_header"]["msg_id"] == msg_id
    assert request["content"]["prompt"] == "your name? "
    assert request["content"]["password"] is False
    kc.input("Ada Lovelace")
    reply = get_reply(kc, msg_id)
    assert reply["content"]["status"] == "ok"
    iopub = collect_iopub_until_idle(kc, msg_id)
    assert "hello Ada Lovelace" in stream_text(iopub)
    results = [m for m in iopub if m["msg_type"] == "execute_result"]
    assert results[0]["content"]["data"]["text/plain"] == "12"

    # a second input in the same kernel works too
    msg_id = kc.execute("w = input()\nw * 2", allow_stdin=True)
    request = kc.get_stdin_msg(timeout=30)
    assert request["content"]["prompt"] == ""
    kc.input("ab")
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    iopub = collect_iopub_until_idle(kc, msg_id)
    [result] = [m for m in iopub if m["msg_type"] == "execute_result"]
    assert result["content"]["data"]["text/plain"] == "'abab'"


def test_getpass_sets_password_flag(kernel):
    kc = kernel.kc
    msg_id = kc.execute("import getpass\npw = getpass.getpass('Password: ')\nlen(pw)",
                        allow_stdin=True)
    request = kc.get_stdin_msg(timeout=30)
    assert request["content"]["password"] is True
    assert request["content"]["prompt"] == "Password: "
    kc.input("s3cret")
    reply = get_reply(kc, msg_id)
    assert reply["content"]["status"] == "ok"
    iopub = collect_iopub_until_idle(kc, msg_id)
    [result] = [m for m in iopub if m["msg_type"] == "execute_result"]
    assert result["content"]["data"]["text/plain"] == "6"
    # the secret is not echoed on iopub
    assert "s3cret" not in stream_text(iopub)


def test_allow_stdin_false_gives_clear_error(kernel):
    kc = kernel.kc
    reply, _iopub = execute(kc, "input('never answered: ')", allow_stdin=False, timeout=30)
    content = reply["content"]
    assert content["status"] == "error"
    assert content["ename"] == "StdinNotImplementedError"
    assert "input" in content["evalue"].lower()
    # no input_request went out
    assert kc.stdin_channel.msg_ready() is False
    # still usable
    reply, _ = execute(kc, "1 + 1")
    assert reply["content"]["status"] == "ok"


def test_interrupting_input_then_a_late_answer_does_no_harm(kernel):
    """Interrupt a cell waiting in input(); a reply sent after that must not
    answer the next prompt, and the worker keeps its state."""
    kc = kernel.kc
    execute(kc, "kept = 'yes'")
    msg_id = kc.execute("input('stuck? ')", allow_stdin=True)
    assert kc.get_stdin_msg(timeout=30)["content"]["prompt"] == "stuck? "
    kernel.km.interrupt_kernel()
    reply = get_reply(kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    collect_iopub_until_idle(kc, msg_id)
    kc.input("too late")  # answers nothing: no prompt is open
    msg_id = kc.execute("fresh = input('again? ')\nkept + ' ' + fresh", allow_stdin=True)
    assert kc.get_stdin_msg(timeout=30)["content"]["prompt"] == "again? "
    kc.input("on time")
    assert get_reply(kc, msg_id, timeout=30)["content"]["status"] == "ok"
    iopub = collect_iopub_until_idle(kc, msg_id)
    [result] = [m for m in iopub if m["msg_type"] == "execute_result"]
    assert result["content"]["data"]["text/plain"] == "'yes on time'"


@relaykernel_only
def test_an_input_reply_to_another_prompt_is_not_taken(kernel):
    """A reply whose parent is not the open input_request (say, a prompt that was
    interrupted) is dropped; the reply to the open prompt answers it."""
    kc = kernel.kc
    msg_id = kc.execute("input('which? ')", allow_stdin=True)
    prompt = kc.get_stdin_msg(timeout=30)
    assert prompt["content"]["prompt"] == "which? "
    older = {"msg_id": "an-interrupted-prompt", "msg_type": "input_request"}
    kc.stdin_channel.send(kc.session.msg("input_reply", {"value": "stale"}, parent=older))
    kc.stdin_channel.send(kc.session.msg("input_reply", {"value": "right"}, parent=prompt))
    assert get_reply(kc, msg_id, timeout=30)["content"]["status"] == "ok"
    iopub = collect_iopub_until_idle(kc, msg_id)
    [result] = [m for m in iopub if m["msg_type"] == "execute_result"]
    assert result["content"]["data"]["text/plain"] == "'right'"


@relaykernel_only
def test_a_signal_that_lands_on_another_thread_still_interrupts_input(kernel):
    """Python runs handlers in the main thread once it leaves its system call; a
    SIGINT taken by another thread (or just before the wait began) must still
    wake input()'s wait instead of leaving it blocked for good."""
    kc = kernel.kc
    code = ("import signal, threading, time\n"
            "def poke():\n"
            "    time.sleep(0.3)\n"
            "    signal.pthread_kill(threading.get_ident(), signal.SIGINT)\n"
            "threading.Thread(target=poke).start()\n"
            "input('never answered? ')")
    msg_id = kc.execute(code, allow_stdin=True)
    assert kc.get_stdin_msg(timeout=30)["content"]["prompt"] == "never answered? "
    reply = get_reply(kc, msg_id, timeout=15)  # no interrupt_request: nothing replaces the worker
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    collect_iopub_until_idle(kc, msg_id)
    reply, _ = execute(kc, "'still here'")
    assert reply["content"]["status"] == "ok"
