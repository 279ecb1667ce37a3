"""Several processes, one run: JAX's own multi-controller runtime (`jax.distributed`).

Every process runs the same program (SPMD, one per host, or several on one machine).
`initialize` joins them: from `--coordinator HOST:PORT --num-processes N --process-id I`
(or BBT_COORDINATOR / BBT_NUM_PROCESSES / BBT_PROCESS_ID), or with `--distributed` from the
cluster itself (JAX's own detection: SLURM, Open MPI, Cloud TPU, ...). After it, `jax.devices()`
lists every process's devices and `mesh()` spans them: search.py shards the population
over it, sweep.py the cells of a vmapped seed group. One process (N = 1, or no flags) runs
exactly as without this module: `mesh()` is None.

Who writes (README, "Multi-process / multi-host"): process 0 (`is_main`) writes a single
run's files; in a sweep the process that computes a cell writes that cell's files; orbax
checkpoints are saved by all processes together (checkpoint.py).

The entry point (cli.py) calls `initialize`; the library only asks `mesh()` / `process_index()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import numpy as np

from bbt_jax.errors import UserError

# Our environment variables, read only where a flag is not given (the entry point passes os.environ).
ENV = {"coordinator": "BBT_COORDINATOR", "num_processes": "BBT_NUM_PROCESSES", "process_id": "BBT_PROCESS_ID"}
AXIS = "devices"  # the one axis of the global mesh


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins: an explicit coordinator (all three set) or the cluster's own (`auto`)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False


def _int(value, flag: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise UserError(f"{flag} {value}: expected an integer") from None


def parse(coordinator: str | None = None, num_processes=None, process_id=None, *, auto: bool = False,
          environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch from flags (first) and `environ`'s BBT_* variables; None: one process, as always.

    One-line UserErrors name the flag (or variable) at fault: a coordinator that is not HOST:PORT, N < 1,
    an id outside [0, N), some but not all of the three, or the three together with `auto`."""
    environ = environ or {}
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    where = {}
    for name, value in given.items():
        where[name] = "--" + name.replace("_", "-")
        if value is None and environ.get(ENV[name], "") != "":
            given[name], where[name] = environ[ENV[name]], ENV[name]
    coordinator, num, pid = given["coordinator"], given["num_processes"], given["process_id"]
    if auto:
        if any(v is not None for v in given.values()):
            set_ = next(k for k, v in given.items() if v is not None)
            raise UserError(f"--distributed: the cluster sets the processes; drop {where[set_]}")
        return Launch(auto=True)
    if all(v is None for v in given.values()):
        return None
    if num is not None:
        num = _int(num, where["num_processes"])
        if num < 1:
            raise UserError(f"{where['num_processes']} {num}: must be >= 1")
    if pid is not None:
        pid = _int(pid, where["process_id"])
    if num == 1 and pid in (None, 0):  # one process: nothing to join
        return None
    missing = [where[k] for k, v in (("coordinator", coordinator), ("num_processes", num), ("process_id", pid))
               if v is None]
    if missing:
        raise UserError(f"{missing[0]}: needed with {', '.join(where[k] for k, v in given.items() if v is not None)} "
                        "(give --coordinator HOST:PORT, --num-processes N and --process-id I, or --distributed)")
    if not 0 <= pid < num:
        raise UserError(f"{where['process_id']} {pid}: must be in [0, {num}) (--num-processes {num})")
    host, sep, port = str(coordinator).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{where['coordinator']} {coordinator}: expected HOST:PORT (e.g. host0:1234), "
                        "the address of process 0")
    return Launch(f"{host}:{port}", num, pid)


def initialize(launch: Launch | None) -> None:
    """Join the processes of `launch` (None: nothing to do). Must run before any other JAX work.

    CPU processes talk through gloo (`jax_cpu_collectives_implementation`, jax's default since 0.4.3x; set
    here where unset); GPUs and TPUs through their own collectives."""
    if launch is None:
        return
    if jax.distributed.is_initialized():  # e.g. train then sweep in one process: joined once
        return
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if launch.auto:
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(launch.coordinator, launch.num_processes, launch.process_id)
    except ValueError as e:  # jax's own detection found no cluster
        what = "--distributed" if launch.auto else f"--coordinator {launch.coordinator}"
        raise UserError(f"{what}: cannot join the processes ({str(e).splitlines()[0]}); pass --coordinator "
                        "HOST:PORT, --num-processes N and --process-id I") from None


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main() -> bool:
    """Process 0: writes a single run's files and the sweep's report, and prints the progress."""
    return jax.process_index() == 0


def mesh() -> jax.sharding.Mesh | None:
    """A 1-axis mesh over every process's devices (None in a single process: run as always)."""
    if jax.process_count() == 1:
        return None
    return jax.sharding.Mesh(np.asarray(jax.devices()), (AXIS,))


def replicated(m: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Every device holds the whole value: outputs every process can pull (`jax.device_get`)."""
    return jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec())


def block_owners(n: int, m: jax.sharding.Mesh | None) -> list[int]:
    """The process that computes each of n items sharded in contiguous blocks over the mesh's axis (as a
    NamedSharding lays out a leading axis); all 0 without a mesh."""
    if m is None:
        return [0] * n
    devices = list(m.devices.flat)
    block = -(-n // len(devices))
    return [devices[i // block].process_index for i in range(n)]


def barrier(name: str) -> None:
    """Wait for every process (a no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
