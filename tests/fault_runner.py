"""Runs programs of codaar in this process, one after the other, and reports how each ended: for the
faults a test must not meet in its own process (a write through a memory map on a full disk is a
SIGBUS that kills the process; too many open files would break pytest itself).

    python -m tests.fault_runner SPEC.json RESULT.json

SPEC: {"cases": [{"program": "train" | "encode" | "evaluate" | "data" | "ablate", "argv": [...],
"signal": null or ["module:attribute", N, signum], "signals": a list of such triples}], "free_files": null
or N}. With free_files, each
program runs with the open-file limit (RLIMIT_NOFILE) set to the files open before it plus N. With a
signal, the process sends itself `signum` at the N-th call of the attribute (then makes the call).
RESULT: [{"status", "stdout", "stderr", "traceback", "handlers_restored"}] per case.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import resource
import signal
import sys
import traceback

MAINS = {"train": "codaar.train.__main__", "encode": "codaar.encode.__main__", "evaluate": "codaar.evaluate.__main__",
         "data": "codaar.data.__main__", "ablate": "codaar.ablate"}
# What the programs import on first use, imported before the open-file limit is lowered: this runner
# measures what the programs do with too many open files, not Python's import machinery.
LAZY = ("codaar.data.official_import", "codaar.data.text", "codaar.data.extract.run", "codaar.data.extract.features",
        "codaar.data.extract.media", "codaar.data.extract.workdir", "codaar.data.extract.weights", "codaar.evaluate",
        "codaar.train.config", "tqdm", "av")


@contextlib.contextmanager
def signal_at(target: str | None, count: int, signum: int):
    """While the block runs, the `count`-th call of `target` ("module:attribute.path") first sends
    `signum` to this process."""
    if target is None:
        yield
        return
    module, _, path = target.partition(":")
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original, calls = getattr(owner, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == count:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)
    try:
        yield
    finally:
        setattr(owner, name, original)


def run(program: str, argv: list[str], free_files: int | None, interrupts: list[list]) -> dict:
    main = importlib.import_module(MAINS[program]).main
    out, err = io.StringIO(), io.StringIO()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    status, trace = 0, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.ExitStack() as signals:
        for interrupt in interrupts:
            signals.enter_context(signal_at(*interrupt))
        try:
            if free_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) - 1 + free_files, hard))
            returned = main(argv)
            status = returned if isinstance(returned, int) else 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            status, trace = None, traceback.format_exc()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    restored = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue(), "traceback": trace,
            "handlers_restored": restored}


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    for module in LAZY + tuple(MAINS.values()):
        importlib.import_module(module)
    results = [run(case["program"], case["argv"], spec.get("free_files"),
                   ([case["signal"]] if case.get("signal") else []) + case.get("signals", []))
               for case in spec["cases"]]
    with open(sys.argv[2], "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
