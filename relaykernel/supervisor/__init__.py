"""The supervisor: the process the frontend launches.

It owns the five Jupyter sockets, HMAC signing and verification, the shell
queue and the registry of open comms.  It never imports IPython and never runs
user code: that happens in a worker subprocess it starts, supervises and
replaces when it dies.

::

    frontend                      supervisor (this package)                worker
    --------                      -------------------------                ------
    shell   ROUTER --verify--> ShellQueue --one at a time--REQUEST--> PAIR  IPython
    control ROUTER --verify--> control handlers (interrupt, shutdown)  |
    stdin   ROUTER <--------------------------------------STDIN------- |
    iopub   PUB    <-- status, replies' outputs <--IOPUB/COMM/DONE---- |
    hb      REP    echo thread (heartbeat.py)                          |
                   WorkerProcess: sentinel -> recovery (one reply per request)
"""
