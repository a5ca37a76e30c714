"""IPython.display's rich objects, display ids and pandas in a kernel."""

from __future__ import annotations

import base64
import json

import pytest

from tests.kernel.helpers import KernelHandle, execute_ok, of_type

# 1x1 transparent PNG
PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA"
           "60e6kgAAAABJRU5ErkJggg==")
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><circle r="4" cx="5" cy="5"/></svg>'

CASES = [
    ("HTML('<b>bold</b>')", "text/html", "<b>bold</b>"),
    ("Markdown('# Title')", "text/markdown", "# Title"),
    ("Latex(r'$\\alpha^2$')", "text/latex", "$\\alpha^2$"),
    ("JSON({'a': [1, 2]})", "application/json", {"a": [1, 2]}),
    (f"SVG({SVG!r})", "image/svg+xml", None),
    (f"Image(data=__import__('base64').b64decode({PNG_B64!r}), format='png')", "image/png", PNG_B64),
    ("Javascript('console.log(1)')", "application/javascript", "console.log(1)"),
]


@pytest.mark.parametrize("expr,mimetype,expected", CASES, ids=[c[1] for c in CASES])
def test_display_mimetypes(kernel: KernelHandle, expr, mimetype, expected):
    _, iopub = execute_ok(
        kernel.kc,
        "from IPython.display import display, HTML, Markdown, Latex, JSON, SVG, Image, Javascript\n"
        f"display({expr})",
    )
    [msg] = of_type(iopub, "display_data")
    data = msg["content"]["data"]
    assert mimetype in data, data.keys()
    assert "text/plain" in data
    if mimetype == "image/svg+xml":
        assert "<svg" in data[mimetype] and "circle" in data[mimetype]
    elif mimetype == "image/png":
        assert base64.b64decode(data[mimetype]) == base64.b64decode(expected)
    else:
        assert data[mimetype] == expected
    # json-able all the way through
    json.dumps(msg["content"])
    assert not of_type(iopub, "execute_result")


def test_rich_execute_result(kernel: KernelHandle):
    _, iopub = execute_ok(kernel.kc, "from IPython.display import HTML\nHTML('<p>res</p>')")
    [res] = of_type(iopub, "execute_result")
    assert res["content"]["data"]["text/html"] == "<p>res</p>"


def test_display_id_and_update_display(kernel: KernelHandle):
    kc = kernel.kc
    _, iopub = execute_ok(
        kc,
        "from IPython.display import display, update_display, HTML\n"
        "display(HTML('<i>v1</i>'), display_id='x')",
    )
    [first] = of_type(iopub, "display_data")
    assert first["content"]["transient"] == {"display_id": "x"}
    assert first["content"]["data"]["text/html"] == "<i>v1</i>"

    _, iopub = execute_ok(kc, "update_display(HTML('<i>v2</i>'), display_id='x')")
    assert not of_type(iopub, "display_data")
    [upd] = of_type(iopub, "update_display_data")
    assert upd["content"]["transient"] == {"display_id": "x"}
    assert upd["content"]["data"]["text/html"] == "<i>v2</i>"

    # the handle API (display_id=True) in one cell
    _, iopub = execute_ok(kc, "h = display('a', display_id=True)\nh.update('b')")
    [d] = of_type(iopub, "display_data")
    [u] = of_type(iopub, "update_display_data")
    did = d["content"]["transient"]["display_id"]
    assert did and u["content"]["transient"]["display_id"] == did
    assert u["content"]["data"]["text/plain"] == "'b'"


def test_pandas_dataframe_html(kernel: KernelHandle):
    pytest.importorskip("pandas")
    _, iopub = execute_ok(
        kernel.kc,
        "import pandas as pd\npd.DataFrame({'col_a': [1, 2], 'col_b': ['x', 'y']})",
        timeout=60,
    )
    [res] = of_type(iopub, "execute_result")
    data = res["content"]["data"]
    assert "<table" in data["text/html"] and "col_a" in data["text/html"]
    assert "col_b" in data["text/plain"]
