"""complete / inspect / history / is_complete requests."""

from __future__ import annotations

from tests.kernel.helpers import execute_ok, get_reply


def test_complete_request(kernel):
    kc = kernel.kc
    execute_ok(kc, "my_unique_variable_abc = 1\nmy_unique_function_abc = lambda: 0")
    code = "x = my_unique_"
    reply = get_reply(kc, kc.complete(code, len(code)))
    c = reply["content"]
    assert c["status"] == "ok"
    assert set(c["matches"]) >= {"my_unique_variable_abc", "my_unique_function_abc"}
    assert c["cursor_start"] == len("x = ")
    assert c["cursor_end"] == len(code)
    types = c["metadata"]["_jupyter_types_experimental"]
    by_text = {t["text"]: t for t in types}
    assert {"my_unique_variable_abc", "my_unique_function_abc"} <= set(by_text)
    for t in types:
        assert t["start"] == c["cursor_start"] and t["end"] == c["cursor_end"]
    assert by_text["my_unique_function_abc"]["type"] == "function"

    # attribute completion in the middle of a line, cursor not at the end
    code = "import os\nos.pa + 1"
    cursor = code.index(" + ")
    reply = get_reply(kc, kc.complete(code, cursor))
    c = reply["content"]
    assert "path" in c["matches"]
    assert c["cursor_end"] == cursor
    assert c["cursor_start"] == code.index("pa")


def test_inspect_request_detail_levels(kernel):
    kc = kernel.kc
    execute_ok(
        kc,
        "def user_func(a, b=2):\n"
        "    'User docstring XYZ.'\n"
        "    secret_marker_line = a + b\n"
        "    return secret_marker_line\n",
    )
    r0 = get_reply(kc, kc.inspect("user_func", len("user_func"), detail_level=0))["content"]
    r1 = get_reply(kc, kc.inspect("user_func", len("user_func"), detail_level=1))["content"]
    for r in (r0, r1):
        assert r["status"] == "ok"
        assert r["found"] is True
        assert "text/plain" in r["data"]
        # ipykernel sends no HTML page unless enable_html_pager is set: tooltips show text
        assert "text/html" not in r["data"]
    assert "User docstring XYZ." in r0["data"]["text/plain"]
    assert "secret_marker_line" not in r0["data"]["text/plain"]
    assert "secret_marker_line" in r1["data"]["text/plain"]
    assert len(r1["data"]["text/plain"]) > len(r0["data"]["text/plain"])

    # cursor inside a call: inspects the callee
    code = "print(1, "
    r = get_reply(kc, kc.inspect(code, len(code)))["content"]
    assert r["found"] is True
    assert "print" in r["data"]["text/plain"]

    r = get_reply(kc, kc.inspect("no_such_name_qq", 5))["content"]
    assert r["status"] == "ok"
    assert r["found"] is False


def test_history_requests(kernel):
    kc = kernel.kc
    cells = ["alpha_hist = 1", "beta_hist = 2", "alpha_hist + beta_hist", "print('gamma_hist')"]
    for cell in cells:
        execute_ok(kc, cell)

    tail = get_reply(kc, kc.history(hist_access_type="tail", n=4, raw=True, output=False))
    hist = tail["content"]["history"]
    assert tail["content"]["status"] == "ok"
    assert [h[2] for h in hist] == cells
    line_numbers = [h[1] for h in hist]
    assert line_numbers == sorted(line_numbers)
    assert line_numbers[-1] - line_numbers[0] == 3

    # with output=True each entry is (session, line, (input, output)); the output
    # itself is only recorded if HistoryManager.db_log_output is on (off by default)
    tail_out = get_reply(kc, kc.history(hist_access_type="tail", n=4, raw=True, output=True))
    entries = tail_out["content"]["history"]
    assert [next(iter(e[2])) for e in entries] == cells
    assert all(len(e[2]) == 2 for e in entries)

    # range over the current session (session 0 means current)
    start = line_numbers[1]
    rng = get_reply(kc, kc.history(hist_access_type="range", session=0, start=start,
                                   stop=start + 2, raw=True, output=False))
    assert [h[2] for h in rng["content"]["history"]] == cells[1:3]

    # search (glob pattern)
    found = get_reply(kc, kc.history(hist_access_type="search", pattern="alpha_hist*",
                                     raw=True, output=False))
    codes = [h[2] for h in found["content"]["history"]]
    assert "alpha_hist = 1" in codes
    assert "alpha_hist + beta_hist" in codes
    assert "beta_hist = 2" not in codes

    found = get_reply(kc, kc.history(hist_access_type="search", pattern="*gamma_hist*",
                                     raw=True, output=False, n=1))
    assert [h[2] for h in found["content"]["history"]] == ["print('gamma_hist')"]


def test_is_complete_request(kernel):
    kc = kernel.kc

    def is_complete(code):
        return get_reply(kc, kc.is_complete(code))["content"]

    r = is_complete("x = 1")
    assert r["status"] == "complete"

    r = is_complete("def f(x):")
    assert r["status"] == "incomplete"
    assert r["indent"] == "    "

    r = is_complete("for i in range(3):\n    if i:")
    assert r["status"] == "incomplete"
    assert r["indent"] == "        "

    r = is_complete("x = (1,")
    assert r["status"] == "incomplete"
    assert "indent" in r

    r = is_complete("1 +* 2")
    assert r["status"] == "invalid"

    r = is_complete("import = 7q")
    assert r["status"] == "invalid"
