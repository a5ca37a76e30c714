"""``python -m relaykernel.launch``: relaykernel behind a gateway's kernel launcher protocol.

Enterprise Gateway 3.3 and gateway_provisioners 0.5 (DistributedProvisioner over SSH,
KubernetesProvisioner, DockerProvisioner) start a remote kernel through a *launcher*: a
process that picks the kernel's ports, sends the connection info back to the gateway
encrypted with the gateway's public key, and listens on a TCP socket of its own for
signal and shutdown requests.  This package is that launcher for relaykernel::

    gateway ──(argv: --kernel-id --port-range --response-address --public-key ...)──> launcher
    gateway <──(response address: base64 JSON {version 1, RSA-wrapped AES key, conn_info})──┘
    gateway ──(comm_port: JSON {"signum": N} | {"shutdown": 1})──> launcher ──signal──> supervisor
    gateway ══(the five Jupyter sockets, from conn_info)══> supervisor ─> worker

- ``protocol.py`` — the launcher protocol itself: arguments (and the environment
  variables a kernel image's entry reads them from), port range, connection info,
  the encrypted payload and its delivery.  Standard library plus pycryptodomex (the
  ``gateway`` extra), which is what the gateway decrypts with.
- ``process.py`` — the launcher process: starts ``python -m relaykernel -f FILE`` as
  its child (arguments it does not know go to the supervisor, e.g.
  ``--Supervisor.memory_limit=4``), serves the listener socket from its one thread,
  and ends when the supervisor ends.
- ``specs.py`` — ``python -m relaykernel.launch.specs``: kernelspecs for the
  gateway_provisioners provisioners, generated rather than hand-copied.

Nothing here imports IPython, zmq or the supervisor: the launcher only starts it.
"""
