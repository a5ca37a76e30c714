"""A comm_open whose data is deeply nested JSON reaches its target (issue 21).

Runs against ipykernel too (RELAYKERNEL_TEST_KERNEL=ipykernel), which delivers it.
"""

from __future__ import annotations

from tests.kernel.comm_helpers import PRELUDE, comm_info, comm_open, handled, new_comm_id
from tests.kernel.helpers import evaluate, execute_ok

#: deeper than the supervisor's copy of comm data could recurse; json itself parses ~1000
DEPTH = 600

DEPTH_TARGET = PRELUDE + """
depth = None
def _depth_target(comm, open_msg):
    global depth
    value, depth = open_msg['content']['data'], 0
    while isinstance(value, dict) and 'a' in value:
        value, depth = value['a'], depth + 1
comm_manager.register_target('depth', _depth_target)
"""


def test_a_comm_open_with_deeply_nested_data_is_delivered(kernel):
    kc = kernel.kc
    execute_ok(kc, DEPTH_TARGET)
    data: dict = {}
    for _ in range(DEPTH):
        data = {"a": data}
    comm_id = new_comm_id()
    handled(kc, comm_open(kc, comm_id, "depth", data=data))
    assert evaluate(kc, "depth") == str(DEPTH)
    assert comm_id in comm_info(kc)
