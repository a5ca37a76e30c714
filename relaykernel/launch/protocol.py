"""The gateway kernel launcher protocol (Enterprise Gateway 3.3, gateway_provisioners 0.5).

Runs in the launcher process, before the kernel starts.  What the gateway expects:

- arguments ``--kernel-id``, ``--port-range LOW..HIGH`` (``0..0``: any port),
  ``--response-address IP:PORT``, ``--public-key`` (the base64 DER body of the
  gateway's RSA public key, PEM armour stripped) and ``--transport-encryption``;
  ``--spark-context-initialization-mode``, ``--cluster-type`` and ``--kernel-class-name``
  are accepted and ignored (relaykernel is its own kernel class and starts no Spark).
  A container's entry gets them from ``KERNEL_ID``, ``PORT_RANGE``, ``RESPONSE_ADDRESS``,
  ``PUBLIC_KEY`` and ``TRANSPORT_ENCRYPTION`` instead (the gateway's DockerProvisioner
  and KubernetesProvisioner set those in the container), so each falls back to them.
- the connection info: five kernel ports plus the listener's ``comm_port`` in the port
  range, a fresh key, plus ``pid``, ``pgid`` and ``kernel_id``;
- delivered to the response address as base64 of the JSON
  ``{"version": 1, "key": b64(RSA-PKCS1v1.5(aes_key)), "conn_info": b64(AES-ECB(json, PKCS7))}``,
  the connection closed to end it (the gateway reads until EOF).

A malformed argument raises :class:`LaunchError` before anything starts.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

#: The payload layout the gateway's ResponseManager decodes (its "version 1").
PAYLOAD_VERSION = 1

#: Tries per port before a port range counts as full.
PORT_TRIES = 200

#: Where a container's entry finds each argument when its command line lacks it
#: (the first name is gateway_provisioners', the second Enterprise Gateway's older one).
ENV_FALLBACKS: dict[str, tuple[str, ...]] = {
    "kernel_id": ("KERNEL_ID",),
    "port_range": ("PORT_RANGE", "EG_PORT_RANGE"),
    "response_address": ("RESPONSE_ADDRESS", "EG_RESPONSE_ADDRESS"),
    "public_key": ("PUBLIC_KEY", "EG_PUBLIC_KEY"),
    "transport_encryption": ("TRANSPORT_ENCRYPTION",),
}

KERNEL_PORTS = ("shell_port", "iopub_port", "stdin_port", "hb_port", "control_port")


class LaunchError(Exception):
    """The launch cannot go on; the message says why, for the gateway's kernel log."""


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int

    @classmethod
    def parse(cls, text: str | None) -> PortRange:
        """``LOW..HIGH``; empty, ``0..0`` or an unfilled ``{port_range}`` means any free port."""
        if not text or _is_placeholder(text):
            return cls(0, 0)
        parts = text.split("..")
        try:
            low, high = (int(p) for p in parts)
        except ValueError:
            raise LaunchError(f"--port-range {text!r}: expected LOW..HIGH, e.g. 40000..41000") from None
        if (low, high) == (0, 0):
            return cls(0, 0)
        if not 0 < low <= high <= 65535:
            raise LaunchError(f"--port-range {text!r}: need 0 < LOW <= HIGH <= 65535")
        if high - low + 1 < len(KERNEL_PORTS) + 1:
            raise LaunchError(f"--port-range {text!r}: fewer ports than the kernel's six")
        return cls(low, high)

    def candidate(self) -> int:
        return 0 if self.high == 0 else random.randint(self.low, self.high)  # spreads ports, not a secret


def _is_placeholder(value: str) -> bool:
    """An argument the gateway left as ``{name}`` (an older gateway that does not fill it)."""
    return value.startswith("{") and value.endswith("}")


def from_env(name: str, given: str | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    if given is not None:
        return given
    for var in ENV_FALLBACKS.get(name, ()):
        if environ.get(var):
            return environ[var]
    return None


def parse_response_address(text: str | None) -> tuple[str, int]:
    if not text or _is_placeholder(text):
        raise LaunchError("no --response-address (nor RESPONSE_ADDRESS): nowhere to send the connection info")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise LaunchError(f"--response-address {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def transport_encryption(value: str | None) -> str | None:
    """``auto`` or ``required`` when the gateway asks for CurveZMQ keys, else None."""
    policy = (value or "").strip().lower()
    if not policy or policy == "disabled" or _is_placeholder(policy):
        return None
    if policy not in ("auto", "required"):
        raise LaunchError(f"--transport-encryption {value!r}: expected auto, required or disabled")
    return policy


class PublicKey:
    """The gateway's RSA public key, checked when the launcher starts (not when it answers)."""

    def __init__(self, text: str | None):
        if not text or _is_placeholder(text):
            raise LaunchError("no --public-key (nor PUBLIC_KEY): cannot encrypt the connection info")
        crypto = _crypto()
        try:
            der = base64.b64decode(text.strip(), validate=True)
            self._key = crypto.RSA.import_key(der)
        except (ValueError, IndexError, TypeError) as exc:
            raise LaunchError(f"--public-key is not a base64 RSA public key ({exc or type(exc).__name__})") from None
        if self._key.has_private():
            raise LaunchError("--public-key holds a private key: pass the gateway's public key only")
        if self._key.size_in_bytes() < 16 + 11:  # PKCS#1 v1.5 wraps the 16-byte AES key
            raise LaunchError(f"--public-key is too short ({self._key.size_in_bits()} bits)")

    def seal(self, connection_info: dict[str, Any]) -> bytes:
        """The payload the gateway's ResponseManager decrypts."""
        crypto = _crypto()
        aes_key = crypto.get_random_bytes(16)
        body = crypto.AES.new(aes_key, crypto.AES.MODE_ECB).encrypt(
            crypto.pad(json.dumps(connection_info).encode(), 16))
        wrapped = crypto.PKCS1_v1_5.new(self._key).encrypt(aes_key)
        payload = {"version": PAYLOAD_VERSION, "key": base64.b64encode(wrapped).decode(),
                   "conn_info": base64.b64encode(body).decode()}
        return base64.b64encode(json.dumps(payload).encode())


class _Crypto:
    """pycryptodomex, imported when first needed, with a message that says which extra to install."""

    def __init__(self) -> None:
        try:
            from Cryptodome.Cipher import AES, PKCS1_v1_5
            from Cryptodome.PublicKey import RSA
            from Cryptodome.Random import get_random_bytes
            from Cryptodome.Util.Padding import pad
        except ImportError as exc:
            raise LaunchError(f"the gateway launcher needs pycryptodomex: pip install 'relaykernel[gateway]' "
                              f"({exc})") from None
        self.AES, self.PKCS1_v1_5, self.RSA = AES, PKCS1_v1_5, RSA
        self.get_random_bytes, self.pad = get_random_bytes, pad


@functools.cache
def _crypto() -> _Crypto:
    return _Crypto()


def bind_in_range(ip: str, ports: PortRange) -> socket.socket:
    """A TCP socket bound to a free port of the range (closed or listened on by the caller)."""
    last: OSError | None = None
    for _ in range(PORT_TRIES if ports.high else 1):
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((ip, ports.candidate()))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise LaunchError(f"no free port on {ip} in {ports.low}..{ports.high} after {PORT_TRIES} tries ({last})")


def kernel_ports(ip: str, ports: PortRange) -> dict[str, int]:
    """Five distinct free ports (held together while chosen, then released for the kernel to bind)."""
    held = [bind_in_range(ip, ports) for _ in KERNEL_PORTS]
    try:
        return {name: sock.getsockname()[1] for name, sock in zip(KERNEL_PORTS, held)}
    finally:
        for sock in held:
            sock.close()


def write_connection_file(path: str, ip: str, ports: dict[str, int], kernel_name: str,
                          curve: tuple[bytes, bytes] | None) -> dict[str, Any]:
    """Write the kernel's 0600 connection file, with a fresh key; return its content."""
    info: dict[str, Any] = {**ports, "ip": ip, "key": str(uuid.uuid4()), "transport": "tcp",
                            "signature_scheme": "hmac-sha256", "kernel_name": kernel_name}
    if curve is not None:
        info["curve_publickey"], info["curve_secretkey"] = (k.decode("ascii") for k in curve)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=1)
    return info


def curve_keypair(policy: str | None) -> tuple[bytes, bytes] | None:
    """CurveZMQ keys when the gateway asked for them; 'auto' goes without when libzmq cannot."""
    if policy is None:
        return None
    import zmq  # only here: the launcher needs zmq for nothing else

    if zmq.has("curve"):
        public, secret = zmq.curve_keypair()
        return public, secret
    if policy == "required":
        raise LaunchError("--transport-encryption required, but this libzmq has no CurveZMQ")
    return None


def deliver(address: tuple[str, int], payload: bytes, timeout: float) -> None:
    """Send the payload to the gateway's response address; retry refusals until ``timeout``.

    Raises LaunchError naming the address when it cannot be reached in time."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(address, timeout=max(0.1, min(left, 5.0))) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)  # the gateway reads until EOF
            return
        except OSError as exc:
            if time.monotonic() + 0.2 >= deadline:
                raise LaunchError(f"cannot send the connection info to the response address "
                                  f"{address[0]}:{address[1]} within {timeout:g} s: {exc}") from None
            time.sleep(0.2)  # the gateway may not listen yet: retry until the deadline
