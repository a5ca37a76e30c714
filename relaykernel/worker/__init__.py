"""The worker: the subprocess that runs user code in an IPython shell.

Started by the supervisor with ``multiprocess`` (spawned, or forked from the
fork server) through :mod:`relaykernel.spawn`; talks to it only over the link
defined in :mod:`relaykernel.wire`.  Modules: ``main`` (process setup and the
serving loop), ``link`` (the PAIR socket: any thread sends under a lock, the
main thread receives), ``messages`` (signing), ``streams`` (stdout/stderr and
fd capture), ``shell`` (IPython hooks), ``kernel`` (request handlers and stdin).
"""
