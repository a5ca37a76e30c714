"""IOPub is an XPUB socket that welcomes each subscription (JEP 65), as ipykernel 7 does.

A client that sees ``iopub_welcome`` knows its subscription is in place and can
send requests without losing their first outputs.  relaykernel answers every
subscription (XPUB_VERBOSE), also in the first moments after launch, while the
early responder owns the sockets and IPython is still importing.
"""

from __future__ import annotations

import time
from typing import Any

import zmq
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

from tests.kernel.helpers import (
    KERNEL_NAME,
    KernelHandle,
    _kernel_pid,
    evaluate,
    kernel_env,
    relaykernel_only,
    stop_kernel,
)


def _subscriber(km: KernelManager, topic: bytes) -> zmq.Socket:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(km._make_url("iopub"))
    return sub


def _own_session(km: KernelManager) -> Session:
    """A Session with the kernel's key but its own replay history: the client's
    iopub channel sees the same welcomes, and a shared Session would reject them
    there as duplicate signatures."""
    return Session(key=km.session.key, signature_scheme=km.session.signature_scheme)


def _welcome(sub: zmq.Socket, session: Session, topic: bytes,
             timeout: float = 30.0) -> tuple[list[bytes], dict[str, Any]]:
    """The iopub_welcome for ``topic`` on this socket, checked against the kernel's key."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not sub.poll(int(left * 1000)):
            break
        idents, frames = session.feed_identities(sub.recv_multipart())
        msg = session.deserialize(frames)  # raises if the signature is wrong
        if msg["msg_type"] == "iopub_welcome" and msg["content"] == {"subscription": topic.decode()}:
            return idents, msg
    raise AssertionError(f"no iopub_welcome for {topic!r} within {timeout}s")


def test_new_subscriptions_are_welcomed(kernel):
    km, kc = kernel.km, kernel.kc
    session = _own_session(km)
    sub = _subscriber(km, b"kernel.")
    try:
        idents, msg = _welcome(sub, session, b"kernel.")
        assert idents == [b"kernel."]  # published on the topic subscribed
        assert msg["parent_header"] == {}
    finally:
        sub.close()
    assert evaluate(kc, "1 + 1") == "2"  # the client's own subscription still works


@relaykernel_only
def test_every_subscriber_is_welcomed_not_only_a_topics_first(kernel):
    """The client subscribed to b'' already; a second b'' subscriber is welcomed too
    (ipykernel's plain XPUB reports only a topic's first subscription)."""
    sub = _subscriber(kernel.km, b"")
    try:
        idents, msg = _welcome(sub, _own_session(kernel.km), b"")
        assert idents == [] and msg["parent_header"] == {}
    finally:
        sub.close()


def test_subscription_right_after_launch_is_welcomed():
    """Connect the moment the kernel is launched, before it answers anything."""
    km = KernelManager(kernel_name=KERNEL_NAME)
    km.shutdown_wait_time = 5.0
    km.start_kernel(env=kernel_env())
    handle = KernelHandle(km=km, kc=km.client(), pid=_kernel_pid(km))
    sub = _subscriber(km, b"")
    try:
        _welcome(sub, _own_session(km), b"", timeout=60)
        handle.kc.start_channels()
        handle.kc.wait_for_ready(timeout=60)
        assert evaluate(handle.kc, "'ready'") == "'ready'"
    finally:
        sub.close()
        stop_kernel(handle)
