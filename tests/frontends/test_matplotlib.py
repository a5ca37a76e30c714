"""matplotlib in a kernel: the inline backend by default, %matplotlib inline, figures closed."""

from __future__ import annotations

import base64

import pytest

from tests.kernel.helpers import KernelHandle, evaluate, execute_ok, of_type

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pngs(iopub):
    return [m for m in of_type(iopub, "display_data") if "image/png" in m["content"]["data"]]


def _assert_png(msg):
    data = msg["content"]["data"]
    raw = base64.b64decode(data["image/png"])
    assert raw.startswith(PNG_MAGIC)
    assert "text/plain" in data  # the Figure repr goes along with the image


def test_inline_backend_is_the_default(kernel: KernelHandle):
    kc = kernel.kc
    assert evaluate(kc, "__import__('os').environ.get('MPLBACKEND')") == \
        "'module://matplotlib_inline.backend_inline'"
    _, iopub = execute_ok(kc, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])", timeout=60)
    [png] = _pngs(iopub)
    _assert_png(png)
    # the plot's return value (a list of Line2D) is the execute_result
    [result] = of_type(iopub, "execute_result")
    assert "Line2D" in result["content"]["data"]["text/plain"]
    assert "inline" in evaluate(kc, "__import__('matplotlib').get_backend()")
    # figures shown at the end of a cell are closed
    assert evaluate(kc, "plt.get_fignums()") == "[]"


def test_matplotlib_inline_magic(kernel: KernelHandle):
    kc = kernel.kc
    _, iopub = execute_ok(kc, "%matplotlib inline", timeout=60)
    assert not of_type(iopub, "error")
    _, iopub = execute_ok(
        kc,
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\n"
        "ax.bar(['a', 'b'], [3, 4])\n"
        "None",
        timeout=60,
    )
    [png] = _pngs(iopub)
    _assert_png(png)
    _, iopub = execute_ok(kc, "n = plt.get_fignums()\nprint(n)")
    assert "".join(m["content"]["text"] for m in of_type(iopub, "stream")) == "[]\n"


def test_plt_show_and_two_figures(kernel: KernelHandle):
    """plt.show() mid-cell displays at once; two figures give two images; all closed after."""
    kc = kernel.kc
    _, iopub = execute_ok(
        kc,
        "import matplotlib.pyplot as plt\n"
        "plt.figure(); plt.plot([1, 2])\n"
        "plt.show()\n"
        "print('between')\n"
        "plt.figure(); plt.plot([2, 1])\n"
        "plt.figure(); plt.plot([3, 3])\n",
        timeout=60,
    )
    kinds = [m["msg_type"] for m in iopub if m["msg_type"] in ("display_data", "stream")]
    # first image, then the print, then the two remaining figures
    assert kinds == ["display_data", "stream", "display_data", "display_data"], kinds
    for png in _pngs(iopub):
        _assert_png(png)
    assert evaluate(kc, "plt.get_fignums()") == "[]"
