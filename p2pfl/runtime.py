"""How a process that trains nodes sets torch up, once, before it builds them.

Owns what is process-wide and about speed only, never about results: `lean_optimizers`. Must not
change what any computation returns (the pinned model hashes of tests/test_pinned_models.py hold
with and without it), touch sockets or know about nodes.
"""

from __future__ import annotations

import torch
import torch._compile
from torch import optim

_done = False


def lean_optimizers() -> None:
    """Let torch.optim's small methods (zero_grad, add_param_group, state_dict, load_state_dict)
    run without the `torch._dynamo.disable` wrapper torch puts around them.

    The wrapper only keeps torch.compile from tracing into those methods; outside a compiled
    region it calls the method unchanged, after ~0.1 ms of dynamo bookkeeping per call (measured:
    0.3 ms per node and round of a simulation, more than half of what a round should cost beyond
    training). p2pfl compiles nothing, so it marks each such method as already wrapped by itself:
    torch's wrapper then calls it directly (`torch._compile._disable_dynamo` caches the wrapped
    function under `__dynamo_disable` and calls that). A plug-in task that compiles its model is
    unaffected: this is about the optimizer's methods, which it does not call inside the model.
    """
    global _done
    if _done:
        return
    probe = torch._compile._disable_dynamo(lambda: None)  # every such wrapper shares this code object
    for attr in vars(optim.Optimizer).values():
        wrapped = getattr(attr, "__wrapped__", None)
        if getattr(attr, "__code__", None) is probe.__code__ and wrapped is not None:
            wrapped.__dynamo_disable = wrapped
    _done = True
