"""The worker: the subprocess that runs user code in an IPython shell.

Started by the supervisor with ``multiprocess`` (spawn); talks to it only over
the link defined in :mod:`relaykernel.wire`.  Modules: ``entry`` (config and
spawn target, importable without IPython), ``main`` (process setup and the
request loop), ``link`` (IO thread owning the PAIR socket), ``messages``
(signing), ``streams`` (stdout/stderr and fd capture), ``shell`` (IPython
hooks), ``kernel`` (request handlers and stdin).
"""
