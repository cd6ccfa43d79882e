"""DataLoader workers leave the signals that stop a run to the main process.

A batch scheduler stops a job by signalling every one of its processes: Slurm signals the whole job step, a
process-group kill (`kill -TERM -PGID`, torchrun's shutdown of a training process) reaches the DataLoader workers too.
PyTorch's workers die of SIGTERM, the main process's SIGCHLD handler then raises "DataLoader worker ... is killed by
signal" wherever it is, and the preemption checkpoint (`vlsft.checkpoints.PreemptionCallback`) is never written.

`WorkersLeaveSignalsToMain` (a `worker_init_fn`, set on every DataLoader the trainer builds) makes each worker:
- ignore SIGINT (a Ctrl-C at the terminal reaches the whole foreground group; the main process decides what it means);
- ignore a SIGTERM sent by anyone but the main process, and end at once on one the main process sends: the DataLoader
  ends a worker that does not shut down in time with SIGTERM (`Process.terminate`), and so does `multiprocessing` at
  interpreter exit, which would otherwise wait forever for a stuck worker. The sender is read with `sigwaitinfo` on
  a thread of the worker; where it does not exist (macOS), the worker ignores every SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading


class WorkersLeaveSignalsToMain:
    """A picklable `worker_init_fn`: the worker leaves SIGINT and outside SIGTERMs to the main process (this module's
    docstring), then runs the `worker_init_fn` it wraps (`Trainer`'s seeding), if any."""

    def __init__(self, worker_init_fn=None):
        self.worker_init_fn = worker_init_fn
        self.main_pid = os.getpid()  # built where the DataLoader is: in the main process

    def __call__(self, worker_id: int) -> None:
        leave_stop_signals_to(self.main_pid)
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


def leave_stop_signals_to(main_pid: int) -> None:
    """In a worker process: ignore SIGINT, and SIGTERM unless `main_pid` sends it (then exit as SIGTERM would)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    # Blocked here, and so in every thread started after: a SIGTERM stays pending until the waiting thread takes it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from, args=(main_pid,), name="vlsft-worker-sigterm", daemon=True).start()


def _exit_on_sigterm_from(main_pid: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == main_pid:
            os._exit(128 + signal.SIGTERM)


def leave_stop_signals_to_main(dataloader) -> None:
    """Make the workers of `dataloader` (a `torch.utils.data.DataLoader`, or accelerate's prepared wrapper of one)
    leave the stop signals to this process. Idempotent; does nothing without workers."""
    # accelerate's `DataLoaderShard` is an adapter: its workers are those of the DataLoader it wraps.
    loader = getattr(dataloader, "base_dataloader", dataloader)
    if getattr(loader, "num_workers", 0) > 0 and not isinstance(loader.worker_init_fn, WorkersLeaveSignalsToMain):
        loader.worker_init_fn = WorkersLeaveSignalsToMain(loader.worker_init_fn)
