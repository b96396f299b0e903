"""A plug-in task (`--task helpers.slow_task:slow`) whose training steps take at least 20 ms each:
the digits MLP with a pause in every training forward pass. It gives a live test rounds that last
a known minimum on any machine, so a watcher of the run (the dashboard) sees it go round by round
however fast or idle the machine is. Evaluation is not slowed."""

from __future__ import annotations

import time

from torch import nn

from p2pfl.training import Task, load_task

STEP_S = 0.02


class _Paused(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):  # noqa: ANN001, ANN201 - torch's own signature
        if self.training:
            time.sleep(STEP_S)
        return self.inner(x)


def slow(seed: int) -> Task:
    task = load_task("digits-mlp", seed)
    make = task.make_model
    return Task("slow-digits", lambda: _Paused(make()), task.dataset)
