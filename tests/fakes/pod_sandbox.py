"""A pod's network namespace, emulated for one process: `python pod_sandbox.py <pod-ip> <argv>`.

In a pod, a server binding 0.0.0.0:8080 listens on the pod's own IP, and every pod
can use port 8080. On the test machine each pod gets its own loopback address
(127.x.y.z) instead: a bind to the wildcard address becomes a bind to that
address. Nothing else changes; then `<argv>` runs as `python <argv>` would
(`-m module ...` or `script ...`), from the working directory.
"""

import os
import runpy
import socket
import sys

_WILDCARDS = ("", "0.0.0.0")


def _bind_to(pod_ip: str) -> None:
    original = socket.socket.bind

    def bind(self: socket.socket, address: object) -> None:
        if self.family == socket.AF_INET and isinstance(address, tuple):
            host, *rest = address
            if host in _WILDCARDS:
                address = (pod_ip, *rest)
        original(self, address)  # type: ignore[arg-type]

    socket.socket.bind = bind  # type: ignore[method-assign]


def main() -> None:
    pod_ip, *argv = sys.argv[1:]
    _bind_to(pod_ip)
    sys.path[0] = os.getcwd()  # as `python -m` puts the working directory first
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
