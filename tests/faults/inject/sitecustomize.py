"""Fault injection for tests/faults: loaded by every Python process (vaebench and its pool workers)
whose PYTHONPATH holds this folder. VAEBENCH_KILL names where the whole command is SIGKILLed:

    replace:<file-name prefix>:before|after:<n>   around the n-th os.replace onto such a file
                                                  (before: the temp file is written, not yet renamed)
    unlink:part:<n>                               after the n-th metric part removed by compaction

The kill is of the process group (the command and its workers), as a power cut or `kill -9 -PGID` is.
"""

import os

_spec = os.environ.get("VAEBENCH_KILL")
if _spec:
    import pathlib
    import signal

    _kind, *_args = _spec.split(":")
    _count = [0]

    def _die() -> None:
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def _tick(n: int) -> None:
        _count[0] += 1
        if _count[0] == n:
            _die()

    if _kind == "replace":
        _prefix, _when, _n = _args[0], _args[1], int(_args[2])
        _replace = os.replace

        def replace(src, dst, *a, **k):
            hit = os.path.basename(os.fspath(dst)).startswith(_prefix)
            if hit and _when == "before":
                _tick(_n)
            out = _replace(src, dst, *a, **k)
            if hit and _when == "after":
                _tick(_n)
            return out

        os.replace = replace
    elif _kind == "unlink":
        _n = int(_args[1])
        _unlink = pathlib.Path.unlink

        def unlink(self, *a, **k):
            out = _unlink(self, *a, **k)
            if self.parent.name == "metrics" and self.name.startswith("part-"):
                _tick(_n)
            return out

        pathlib.Path.unlink = unlink
