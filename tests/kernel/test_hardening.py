"""Hardening (issue 21): what a careless user or a large state must not break.

relaykernel only: each test is about the supervisor/worker split (state kept
across worker deaths, the private directory, what the provisioner kills).
"""

from __future__ import annotations

import pytest

from tests.kernel import crash_helpers
from tests.kernel.comm_helpers import comm_msg, comms_of, handled
from tests.kernel.crash_helpers import install_spec
from tests.kernel.helpers import evaluate, execute, execute_ok, relaykernel_only

pytestmark = relaykernel_only

#: the fixture that starts kernels and checks, at teardown, that none left a process behind
relay = crash_helpers.relay

#: 30 sliders and a 70,000-character text: their states add up to well over the
#: link's 64 KiB packing limit, which once made the whole ADOPT undecodable
MANY_WIDGETS = ("import ipywidgets\n"
                "sliders = [ipywidgets.IntSlider(value=i, max=1000) for i in range(30)]\n"
                "text = ipywidgets.Textarea(value='t' * 70_000)\n")
WIDGET_VALUES = ("repr((sorted(w.value for w in __import__('ipywidgets').Widget.widgets.values()\n"
                 "        if isinstance(w, __import__('ipywidgets').IntSlider)),\n"
                 " [len(w.value) for w in __import__('ipywidgets').Widget.widgets.values()\n"
                 "  if isinstance(w, __import__('ipywidgets').Textarea)]))")


def test_widgets_whose_state_passes_64_kib_survive_a_crash_and_a_restart(relay):
    pytest.importorskip("ipywidgets", minversion="8")
    h = relay.start(install_spec("relaykernel-provisioned"))
    kc = h.kc
    _, iopub = execute_ok(kc, MANY_WIDGETS)
    first = next(m["content"]["comm_id"] for m in comms_of(iopub, "comm_open")
                 if m["content"]["data"]["state"].get("_model_name") == "IntSliderModel"
                 and m["content"]["data"]["state"]["value"] == 0)
    handled(kc, comm_msg(kc, first, {"method": "update", "state": {"value": 500}, "buffer_paths": []}))
    expected = repr(repr((sorted([*range(1, 30), 500]), [70_000])))
    assert evaluate(kc, WIDGET_VALUES) == expected
    relay.track(h)

    reply, _ = execute(kc, "import os; os._exit(1)")
    assert reply["content"]["ename"] == "WorkerDied", reply["content"]
    assert evaluate(kc, WIDGET_VALUES) == expected
    relay.track(h)

    h.km.restart_kernel()
    kc.wait_for_ready(timeout=30)
    assert evaluate(kc, WIDGET_VALUES) == expected
    # and the adopted widgets are live: the frontend moves one, the kernel sees it
    handled(kc, comm_msg(kc, first, {"method": "update", "state": {"value": 7}, "buffer_paths": []}))
    assert evaluate(kc, WIDGET_VALUES) == repr(repr((sorted([*range(1, 30), 7]), [70_000])))
    relay.track(h)
