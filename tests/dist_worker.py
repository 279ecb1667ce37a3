"""One process of tests/test_distributed.py: runs `bbt-jax` commands in order and records, through
Python's audit hooks, every file or folder it creates, replaces or removes under a root folder.

  python tests/dist_worker.py ROOT LOG '[["train", ...], ["sweep", ...]]'

LOG gets {"codes": [exit codes], "writes": [paths relative to ROOT]}. orbax's array data goes through
tensorstore (C++), which the hooks do not see; its metadata, and everything bbt-jax writes, they do.
"""

import json
import os
import sys

root, log, commands = os.path.realpath(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
writes: set[str] = set()
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _note(path) -> None:
    if isinstance(path, int):
        return
    path = os.path.realpath(os.fsdecode(path))
    if path.startswith(root + os.sep):
        writes.add(os.path.relpath(path, root))


def _hook(event: str, args) -> None:
    if event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and set(mode) & set("wax+")) or (mode is None and flags & WRITE_FLAGS):
            _note(path)
    elif event == "os.rename":
        _note(args[1])
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
        _note(args[0])


sys.addaudithook(_hook)
from bbt_jax import cli  # noqa: E402  (after the hook: nothing to see before)

codes = [cli.main(argv) for argv in commands]
with open(log, "w") as f:
    json.dump({"codes": codes, "writes": sorted(writes)}, f)
sys.exit(max(codes))
