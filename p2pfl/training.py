"""Tasks, local training, evaluation and flat parameter vectors.

Owns: resolving a task spec (`digits-mlp`, `digits-cnn`, `apps`, `mnist1d`, or a user plug-in
`package.module:function`) for a number of nodes (a task may size its dataset by it),
splitting a task's training set over nodes (`partition_task`), building the identical initial
model on every node, one node's local training round on its shard (optionally with FedProx's
proximal term), evaluation, and converting the model to/from a flat float32 vector (the only
thing aggregation ever sees).

Must not touch: sockets, messages, aggregation/averaging, thread settings
(the process launcher calls torch.set_num_threads).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from p2pfl import models
from p2pfl.data import Dataset, Shard, load_digits, load_mnist1d, partition

OPTIMIZERS = ("sgd", "adam")
EVAL_CHUNK = 4096


@dataclass
class Task:
    """What to learn: a dataset and a zero-argument model constructor.

    `initial_flat(seed)`: the model `init_model(task, seed)` builds, as a flat float32 vector that
    the callers in one process share (read-only), so that nodes agreeing on a reference model
    build it once, not once each.
    """

    name: str
    make_model: Callable[[], nn.Module]
    dataset: Dataset
    # seed -> read-only flat initial model; filled by `initial_flat`, never compared or printed
    _initial: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def initial_flat(self, seed: int) -> np.ndarray:
        """`initial_flat(self, seed)`."""
        return initial_flat(self, seed)


# A built-in task is built from (seed, nodes): `nodes` is how many nodes will split its training
# set (None: no particular count), so a dataset that grows with the network can size itself.
TaskFunction = Callable[[int, int | None], Task]


def _digits_mlp(seed: int, nodes: int | None) -> Task:
    ds = load_digits(seed=seed)
    return Task("digits-mlp", lambda: models.mlp(64, ds.num_classes), ds)


def _digits_cnn(seed: int, nodes: int | None) -> Task:
    ds = load_digits(seed=seed)
    return Task("digits-cnn", lambda: models.small_cnn(ds.num_classes), ds)


def _apps(seed: int, nodes: int | None) -> Task:
    from p2pfl import apps

    task = apps.app_task(seed)
    return Task("apps", task.make_model, task.dataset)


def _mnist1d(seed: int, nodes: int | None) -> Task:
    ds = load_mnist1d(seed=seed, nodes=nodes)
    return Task("mnist1d", lambda: models.mlp(ds.input_shape[0], ds.num_classes), ds)


BUILTIN_TASKS: dict[str, TaskFunction] = {
    "digits-mlp": _digits_mlp,
    "digits-cnn": _digits_cnn,
    "apps": _apps,  # next-app recommendation on synthetic per-user data (p2pfl/apps.py)
    "mnist1d": _mnist1d,  # 1-D digits generated for any node count (p2pfl/mnist1d.py)
}
DEFAULT_TASK = "digits-mlp"


def _plugin_function(spec: str) -> Callable[..., Any]:
    """Import the module of a plug-in spec and return its task function (nothing is built yet)."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"task {spec!r}: a plug-in spec must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself failing on import
        raise ValueError(f"task {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"task {spec!r}: module {module_name!r} has no callable {func_name!r}")
    return func


def _load_plugin(spec: str, seed: int, nodes: int | None) -> Task:
    func = _plugin_function(spec)
    func_name = spec.partition(":")[2]
    # A plug-in is called as function(seed=...); one that also takes `nodes` gets the node count.
    kwargs: dict[str, Any] = {"seed": seed}
    if _takes_nodes(func):
        kwargs["nodes"] = nodes
    try:
        task = func(**kwargs)
    except Exception as exc:
        called = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ValueError(f"task {spec!r}: {func_name}({called}) raised {exc!r}") from exc
    if not isinstance(task, Task):
        raise ValueError(
            f"task {spec!r}: {func_name}(seed=...) must return p2pfl.training.Task, "
            f"got {type(task).__name__}"
        )
    return task


def _takes_nodes(func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin or C function without a signature: seed only
        return False
    return "nodes" in params  # named, not **kwargs: a plug-in written before `nodes` never gets it


def check_task(spec: str) -> None:
    """Raise ValueError, naming the spec, unless it names a task that can be loaded.

    Cheap enough for a launcher to call before it starts anything: a plug-in's module is
    imported and its function looked up, but no dataset or model is built.
    """
    spec = _clean_spec(spec)
    if spec in BUILTIN_TASKS:
        return
    if ":" in spec:
        _plugin_function(spec)
        return
    raise _unknown_task(spec)


def _clean_spec(spec: str) -> str:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"task spec must be a non-empty string, got {spec!r}")
    return spec.strip()


def _unknown_task(spec: str) -> ValueError:
    return ValueError(f"unknown task {spec!r}: use one of {', '.join(BUILTIN_TASKS)} "
                      f"or a plug-in 'package.module:function'")


def load_task(spec: str = DEFAULT_TASK, seed: int = 0, nodes: int | None = None) -> Task:
    """Resolve a task spec: a built-in name or 'package.module:function(seed[, nodes]) -> Task'.

    `nodes`: how many nodes will split the training set (None: no particular count); a task whose
    data grows with the network (`mnist1d`) generates enough for them, the others ignore it.
    """
    spec = _clean_spec(spec)
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec](seed, nodes)
    if ":" in spec:
        return _load_plugin(spec, seed, nodes)
    raise _unknown_task(spec)


def partition_task(task: Task, nodes: int, kind: str = "iid", alpha: float = 0.5, seed: int = 0,
                   shards_per_node: int = 2) -> list[np.ndarray]:
    """Split the task's training set over `nodes`: "iid", "dirichlet" (label skew), "personas", or one of
    `partitioners.PARTITIONERS` (pathological, shard, natural, size-skew).

    "personas" is the app task's per-node preference skew: a Dirichlet(alpha) split over user
    groups, so each node's users come mostly from a few personas (`apps.partition_by_group`).
    It needs a dataset that carries user groups (`apps.AppDataset`). "natural" needs a dataset
    with a group per row (`groups_train`: LEAF writers, a table's group column, the apps' personas).
    """
    if kind == "personas":
        from p2pfl import apps

        if not isinstance(task.dataset, apps.AppDataset):
            raise ValueError(f"partition 'personas' needs a dataset with user groups (task 'apps'), not {task.name}")
        return apps.partition_by_group(task.dataset, nodes, alpha, seed)
    if kind in ("iid", "dirichlet"):
        return partition(task.dataset.y_train, nodes, kind, alpha, seed)
    from p2pfl import partitioners

    return partitioners.partition(task.dataset.y_train, nodes, kind, alpha=alpha, shards_per_node=shards_per_node,
                                  groups=getattr(task.dataset, "groups_train", None), seed=seed)


def local_test_rows(task: Task, part: np.ndarray) -> np.ndarray | None:
    """The test rows of the writers/users whose training rows are `part` (a node's local test split), or None
    when the dataset has no groups in its test set or none of them is this node's."""
    groups_train = getattr(task.dataset, "groups_train", None)
    groups_test = getattr(task.dataset, "groups_test", None)
    if groups_train is None or groups_test is None or not len(groups_test):
        return None
    rows = np.flatnonzero(np.isin(groups_test, np.unique(groups_train[part])))
    return rows if len(rows) else None


def dataset_task(name: str, data_dir: str, model: str = "", augment: bool = False, **options: Any) -> Task:
    """A task on dataset `name` read from `data_dir` (`p2pfl.datasets`), with model `model` (`models.MODELS`;
    empty: the dataset's default) and optionally the baselines' augmentation.

    DatasetError (a ValueError) naming the file when the files are missing or malformed; ValueError
    when the model does not fit the data. options: label_column, group_column.
    """
    from p2pfl import datasets

    info = datasets.get(name)
    ds = datasets.load(name, data_dir, **options)
    chosen = model or info.model
    if chosen == "auto":
        chosen = models.auto_model(ds.input_shape)
    shape, classes = tuple(ds.input_shape), ds.num_classes
    with torch.random.fork_rng(devices=[]):  # a model that does not fit fails here, before any node starts
        models.build(chosen, shape, classes, augment)
    return Task(f"{name}-{chosen}" + ("+aug" if augment else ""),
                lambda: models.build(chosen, shape, classes, augment), ds)


_INIT_LOCK = threading.Lock()
_FLAT_LOCK = threading.Lock()  # taken before _INIT_LOCK, never inside it
INITIAL_FLAT_SEEDS = 8  # seeds a task keeps initial vectors for (a node needs one: the reference)


def init_model(task: Task, seed: int) -> nn.Module:
    """The task's model initialised from `seed`, identical on every node; global RNG untouched.

    Layer constructors draw from torch's process-wide generator, so nodes that share a process
    (one thread each) take turns: otherwise their seeds interleave and "identical" models differ.
    """
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        _manual_seed(seed)
        return task.make_model()


def _manual_seed(seed: int) -> None:
    """`torch.manual_seed(seed)`, without its cost where torch has only the CPU generator to seed.

    torch.manual_seed also seeds (or, before they start, queues a seed for, formatting a stack
    trace each time: ~0.2-0.5 ms) the CUDA, MPS, XPU, MTIA and custom-device generators. A torch
    built with none of them draws only from the CPU generator, so seeding that alone gives the
    same numbers; any other torch (or one whose probes are missing) gets torch.manual_seed.
    """
    if _cpu_generator_only():
        torch.default_generator.manual_seed(int(seed))
    else:
        torch.manual_seed(seed)


def _cpu_generator_only() -> bool:
    """True when torch.manual_seed would seed the CPU generator and nothing else (a CPU-only torch)."""
    try:
        return not (
            torch.cuda._is_compiled()
            or torch.backends.mps.is_built()
            or torch.xpu._is_compiled()
            or torch.mtia.is_available()
            or hasattr(torch, torch._C._get_privateuse1_backend_name())
        )
    except Exception:  # noqa: BLE001  # a torch without these probes: seed everything, as before
        return False


def model_flat(model: nn.Module) -> np.ndarray:
    """A model's parameters (model.parameters() order) as a new float32 1-D array: `LocalTrainer.get_flat`."""
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).to(torch.float32) for p in model.parameters()])
    return flat.numpy().copy()


def initial_flat(task: Task, seed: int) -> np.ndarray:
    """`model_flat(init_model(task, seed))`, built once per (task, seed) and shared: read-only.

    Every caller in the process gets the same array (`flags.writeable` is False: writing to it
    raises), so nodes that measure against one reference model hold one copy of it between them.
    Arithmetic on it (`reference + delta`) makes new arrays as ever; copy it to change it.
    The task keeps the vectors of its last INITIAL_FLAT_SEEDS seeds.
    """
    seed = int(seed)
    with _FLAT_LOCK:
        cache = getattr(task, "_initial", None)
        if cache is None:  # a Task made without __init__ (copy.copy of an old one, __new__)
            cache = task._initial = {}
        flat = cache.get(seed)
        if flat is None:
            flat = model_flat(init_model(task, seed))
            while len(cache) >= INITIAL_FLAT_SEEDS:
                cache.pop(next(iter(cache)))
            cache[seed] = flat
        flat.flags.writeable = False  # again on every call: a copied task (pickle) may bring a writable one
        return flat


@dataclass
class TrainConfig:
    """Local optimisation settings. `local_steps`, when set, overrides `local_epochs`.

    `momentum` applies to SGD only (Adam uses its default betas). `prox_mu` > 0 adds FedProx's
    proximal term mu/2 ||w - w_start||^2 (w_start: the model at the start of the round) to
    every step's objective; 0 runs exactly the plain code path.
    """

    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    local_epochs: int = 1
    local_steps: int | None = None
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr >= 0:  # 0 = no local learning: pure averaging studies
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if self.local_steps is not None and self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1 or None, got {self.local_steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.prox_mu >= 0:
            raise ValueError(f"prox_mu must be >= 0, got {self.prox_mu}")


def _make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def _as_tensor(a: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(dtype)
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


class LocalTrainer:
    """One node's model, optimizer and shard. Optimizer state persists across rounds.

    `seed` drives only the mini-batch shuffling (a private torch.Generator).
    """

    def __init__(self, model: nn.Module, shard: Shard, config: TrainConfig, seed: int) -> None:
        if len(shard) == 0:
            raise ValueError("LocalTrainer needs a non-empty shard")
        self.model = model
        self.config = config
        self.x = _as_tensor(shard.x, torch.float32)
        self.y = _as_tensor(shard.y, torch.int64)
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = _make_optimizer(model.parameters(), config)
        self.generator = torch.Generator().manual_seed(seed)
        self.rounds = 0
        self._params = [p for p in model.parameters()]
        self._sizes = [p.numel() for p in self._params]

    @property
    def num_params(self) -> int:
        return sum(self._sizes)

    def _batches(self) -> Iterator[torch.Tensor]:
        """Index tensors of the mini-batches for one round (epochs, or exactly local_steps)."""
        n, bs = len(self.y), self.config.batch_size
        steps = self.config.local_steps
        if steps is None:
            for _ in range(self.config.local_epochs):
                perm = torch.randperm(n, generator=self.generator)
                for i in range(0, n, bs):
                    yield perm[i : i + bs]
            return
        done = 0
        while done < steps:
            perm = torch.randperm(n, generator=self.generator)
            for i in range(0, n, bs):
                if done == steps:
                    return
                yield perm[i : i + bs]
                done += 1

    def train(self) -> float:
        """Run one round of local training; return the mean per-sample training loss.

        The loss reported is the data loss only (without FedProx's proximal term).
        """
        self.model.train()
        total, count = 0.0, 0
        mu = self.config.prox_mu
        anchor = [p.detach().clone() for p in self._params] if mu > 0 else None
        for idx in self._batches():
            xb, yb = self.x[idx], self.y[idx]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(xb), yb)
            if anchor is None:
                loss.backward()
            else:
                (loss + 0.5 * mu * self._proximal(anchor)).backward()
            self.optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        self.rounds += 1
        return total / count

    def _proximal(self, anchor: list[torch.Tensor]) -> torch.Tensor:
        """||w - anchor||^2 over all parameters (FedProx)."""
        return torch.stack([((p - a) ** 2).sum() for p, a in zip(self._params, anchor)]).sum()

    @torch.no_grad()
    def evaluate(
        self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
    ) -> tuple[float, float]:
        """(mean cross-entropy loss, accuracy) of the current model on (x, y)."""
        xt, yt = _as_tensor(x, torch.float32), _as_tensor(y, torch.int64)
        if len(xt) != len(yt) or len(yt) == 0:
            raise ValueError(f"evaluate needs matching non-empty x and y, got {len(xt)} and {len(yt)}")
        was_training = self.model.training
        self.model.eval()
        loss_sum, correct = 0.0, 0
        try:
            for i in range(0, len(yt), EVAL_CHUNK):
                logits = self.model(xt[i : i + EVAL_CHUNK])
                yb = yt[i : i + EVAL_CHUNK]
                loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
                correct += int((logits.argmax(dim=1) == yb).sum())
        finally:
            self.model.train(was_training)
        return loss_sum / len(yt), correct / len(yt)

    def get_flat(self) -> np.ndarray:
        """All parameters (model.parameters() order) as a new float32 1-D array."""
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).to(torch.float32) for p in self._params])
        return flat.numpy().copy()

    def set_flat(self, vec: np.ndarray) -> None:
        """Load a flat float32 vector (as from `get_flat`) into the parameters."""
        if not isinstance(vec, np.ndarray):
            raise ValueError(f"set_flat expects a numpy array, got {type(vec).__name__}")
        if vec.dtype != np.float32:
            raise ValueError(f"set_flat expects dtype float32, got {vec.dtype}")
        if vec.ndim != 1 or vec.shape[0] != self.num_params:
            raise ValueError(
                f"set_flat expects a 1-D vector of length {self.num_params}, got shape {vec.shape}"
            )
        src = torch.from_numpy(np.ascontiguousarray(vec))
        offset = 0
        with torch.no_grad():
            for p, size in zip(self._params, self._sizes):
                p.copy_(src[offset : offset + size].view_as(p))
                offset += size

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and shuffling state as tensors and plain Python values."""
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "rounds": self.rounds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        missing = {"model", "optimizer", "generator", "rounds"} - set(state)
        if missing:
            raise ValueError(f"trainer state is missing {sorted(missing)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.rounds = int(state["rounds"])
