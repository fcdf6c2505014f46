"""Run a job on ``world`` gloo ranks in spawned processes, for the DDP and FSDP2 tests.

A distributed test must fail, never hang: a rank that waits forever on a peer (a collective only one
rank entered, a peer that died in gloo's teardown) would otherwise hold CI until its time limit. So
every rank arms ``faulthandler`` to print its stack and exit after ``timeout`` seconds, the process
group gets the same timeout, and the parent gives up (and kills the ranks) a little later.
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import socket
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = 300  # s per spawn; the slowest job here takes ~20 s on a 2-core machine


def _run(rank, world, port, job, out_dir, timeout):
    faulthandler.dump_traceback_later(timeout, exit=True)  # a hung rank prints where it is, then exits
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout))
    try:
        result = job(rank, out_dir)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # past this no rank talks to another
    except BaseException:
        dist.destroy_process_group()
        raise  # mp.spawn reports it
    # Leave at once, without gloo's teardown: under load its threads racing the interpreter's exit once
    # aborted a rank ("terminate called without an active exception") after its job had passed, and a
    # teardown that waits on a peer is how a passed test could hang.
    os._exit(0)


def spawn(job, tmp_path, world: int = 2, timeout: float = TIMEOUT) -> list:
    """``job(rank, out_dir)`` on every rank; returns the ranks' results in rank order."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(_run, args=(world, port, job, str(tmp_path), timeout), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout + 60
    while not ctx.join(timeout=5):  # raises as soon as a rank fails, after stopping the others
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"{world} spawned ranks did not finish in {timeout + 60:.0f} s")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
