"""Plug-in tasks (`--task helpers.failing_tasks:NAME`) whose model construction fails inside a
simulate worker: the digits task, but the second model a worker process builds raises, or kills
the process outright, as a bug or the out-of-memory killer would. A worker builds one model per
node (the shared reference is built by the launcher, before it forks), so that is its second
node's."""

from __future__ import annotations

import os
import signal

from p2pfl.training import Task, load_task

_LOADER = os.getpid()  # the process that loaded the task (the launcher, which forks the workers)
_built = 0


def _failing(seed: int, fail) -> Task:
    task = load_task("digits-mlp", seed)
    make = task.make_model

    def make_model():
        global _built
        if os.getpid() != _LOADER:
            _built += 1
            if _built == 2:
                fail()
        return make()
    return Task("failing", make_model, task.dataset)


def _raise() -> None:
    raise ValueError("model refused: this node's model cannot be built")


def raises(seed: int) -> Task:
    return _failing(seed, _raise)


def killed(seed: int) -> Task:
    return _failing(seed, lambda: os.kill(os.getpid(), signal.SIGKILL))
