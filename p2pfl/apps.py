"""App recommendation, the field's classic on-device task, as a built-in plug-in task.

Owns: a seeded, offline generator of synthetic app-usage data and the task built on it:
predict the *next app a user opens* (single-label, `N_APPS` = 20 classes) from the context of
the session and the user's usage history. Single-label keeps `data.Dataset`, `LocalTrainer`
(cross-entropy) and its top-1 accuracy unchanged.

Must not touch: torch training loops, sockets, aggregation. Run it with
`--task p2pfl.apps:app_task` (the `training.load_task` plug-in rule).

Generative model (all from `numpy.random.default_rng(seed)`):
- 20 apps in 6 categories; each app has an hour-of-day affinity (news in the morning, games at
  night, ...) and a device affinity (phone / tablet / watch).
- `N_GROUPS` = 10 user groups ("personas"); each prefers its own subset of 4 apps and has its
  own activity hours and device mix. A user draws a group, a device and personal preferences
  (the group's plus per-user noise).
- Each user has a usage history (an hour-of-day histogram, open counts per category) and a few
  sessions; a session has an hour, the previously opened app, and the label: the next app,
  drawn from softmax(user preference + hour affinity + device affinity + transition(last app)).

Features (62, standardised with the training statistics): hour histogram of the user's past
usage (24), current hour as sin/cos (2) and 4-hour bucket one-hot (6), device one-hot (3),
log1p opens per category (6), log1p total opens (1), last-app one-hot (20).

Per-node preference skew: the dataset's labels are the next app, so the existing Dirichlet
partition (`--partition dirichlet --alpha 0.3`) already gives each node a skewed app mix. For
skew by *users* (each node's users come from a few personas), the dataset also carries the
group of every row (`AppDataset.groups_train`) and `partition_by_group` splits on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from p2pfl import models
from p2pfl.data import Dataset, partition

N_APPS = 20
N_GROUPS = 10
APPS_PER_GROUP = 4
N_USERS = 2000
SESSIONS_PER_USER = 5
TEST_FRACTION = 0.2
HIDDEN = (64, 64)

CATEGORIES = ("social", "games", "productivity", "news", "music", "fitness")
# app index -> category index (4 social, 4 games, 4 productivity, 2 news, 3 music, 3 fitness)
APP_CATEGORY = np.array([0] * 4 + [1] * 4 + [2] * 4 + [3] * 2 + [4] * 3 + [5] * 3, dtype=np.int64)
DEVICES = ("phone", "tablet", "watch")
# peak hours of each category's usage (a sum of bumps on the 24-hour circle)
_CATEGORY_PEAKS = {0: (12.5, 21.0), 1: (20.5, 23.0), 2: (10.0, 15.0), 3: (7.5, 18.0), 4: (8.0, 17.5), 5: (6.5, 18.5)}
_DEVICE_BIAS = np.array(  # category x device: log-affinity
    [[0.5, 0.0, -0.5], [0.0, 1.0, -2.0], [0.0, 0.5, -1.0], [0.3, 0.3, 0.0], [0.2, -0.5, 1.0], [0.0, -1.0, 1.5]]
)
FEATURES = 24 + 2 + 6 + 3 + len(CATEGORIES) + 1 + N_APPS
TEMPERATURE = 0.7  # < 1 sharpens the label distribution: a learnable but noisy task


@dataclass
class AppDataset(Dataset):
    """`Dataset` plus the user group (persona) of every row, for group-skewed partitions."""

    groups_train: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    groups_test: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _hour_bumps(peaks: tuple[float, ...], width: float = 2.0) -> np.ndarray:
    h = np.arange(24, dtype=np.float64)
    out = np.zeros(24)
    for p in peaks:
        d = np.minimum(np.abs(h - p), 24 - np.abs(h - p))
        out += np.exp(-0.5 * (d / width) ** 2)
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sample_rows(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One categorical draw per row of `logits` (Gumbel-max)."""
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1).astype(np.int64)


def generate(seed: int = 0, n_users: int = N_USERS, sessions: int = SESSIONS_PER_USER) -> dict[str, np.ndarray]:
    """Raw synthetic data: features (float32, unscaled), next-app labels, group and user per row."""
    if n_users < 1 or sessions < 1:
        raise ValueError("n_users and sessions must be >= 1")
    rng = np.random.default_rng(seed)
    # world: app hour affinities, app device affinities, transitions, persona preferences
    hour_aff = np.stack([_hour_bumps(_CATEGORY_PEAKS[int(c)]) for c in APP_CATEGORY])  # (apps, 24)
    hour_aff = 1.5 * hour_aff + 0.3 * rng.standard_normal(hour_aff.shape)
    dev_aff = _DEVICE_BIAS[APP_CATEGORY] + 0.3 * rng.standard_normal((N_APPS, len(DEVICES)))
    trans = 0.4 * rng.standard_normal((N_APPS, N_APPS))
    trans[np.arange(N_APPS), np.arange(N_APPS)] += 0.8  # re-opening the same app is common
    same_cat = APP_CATEGORY[:, None] == APP_CATEGORY[None, :]
    trans += 0.4 * same_cat
    group_pref = np.full((N_GROUPS, N_APPS), -1.0) + 0.3 * rng.standard_normal((N_GROUPS, N_APPS))
    for g in range(N_GROUPS):
        group_pref[g, rng.choice(N_APPS, APPS_PER_GROUP, replace=False)] += 3.0
    group_peak = rng.uniform(0, 24, N_GROUPS)  # each persona's own activity hours
    group_hours = np.stack([_hour_bumps((p, (p + 10) % 24), width=3.0) + 0.2 for p in group_peak])
    group_hours /= group_hours.sum(axis=1, keepdims=True)
    group_device = rng.dirichlet(np.full(len(DEVICES), 2.0), N_GROUPS) * 0.5 + np.array([0.35, 0.1, 0.05])

    # users
    groups = rng.choice(N_GROUPS, n_users, p=rng.dirichlet(np.full(N_GROUPS, 5.0)))
    device = _sample_rows(rng, np.log(group_device[groups]))
    pref = group_pref[groups] + 0.7 * rng.standard_normal((n_users, N_APPS))
    user_hours = _softmax(np.log(group_hours[groups]) + 0.3 * rng.standard_normal((n_users, 24)))
    history = rng.integers(40, 300, n_users)
    hour_hist = rng.multinomial(history, user_hours).astype(np.float64)
    usage_p = _softmax(pref + dev_aff[:, device].T + user_hours @ hour_aff.T)  # over the user's hours
    cat_p = np.stack([usage_p[:, APP_CATEGORY == c].sum(axis=1) for c in range(len(CATEGORIES))], axis=1)
    cat_counts = rng.multinomial(history, cat_p / cat_p.sum(axis=1, keepdims=True)).astype(np.float64)

    # sessions
    user = np.repeat(np.arange(n_users), sessions)
    n = len(user)
    hour = _sample_rows(rng, np.log(user_hours[user]))
    last = _sample_rows(rng, np.log(usage_p[user]))
    logits = pref[user] + hour_aff[:, hour].T + dev_aff[:, device[user]].T + trans[last]
    label = _sample_rows(rng, logits / TEMPERATURE)

    x = np.zeros((n, FEATURES), dtype=np.float64)
    col = 0
    x[:, col : col + 24] = (hour_hist / hour_hist.sum(axis=1, keepdims=True))[user]
    col += 24
    angle = 2 * np.pi * hour / 24
    x[:, col], x[:, col + 1] = np.sin(angle), np.cos(angle)
    col += 2
    x[np.arange(n), col + hour // 4] = 1.0
    col += 6
    x[np.arange(n), col + device[user]] = 1.0
    col += len(DEVICES)
    x[:, col : col + len(CATEGORIES)] = np.log1p(cat_counts)[user]
    col += len(CATEGORIES)
    x[:, col] = np.log1p(history)[user]
    col += 1
    x[np.arange(n), col + last] = 1.0
    col += N_APPS
    assert col == FEATURES
    return {"x": x.astype(np.float32), "y": label, "group": groups[user].astype(np.int64), "user": user.astype(np.int64)}


def load_apps(seed: int = 0, n_users: int = N_USERS, sessions: int = SESSIONS_PER_USER,
              test_fraction: float = TEST_FRACTION) -> AppDataset:
    """The app dataset: split by *user* (test users are unseen), standardised with training stats."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    raw = generate(seed, n_users, sessions)
    rng = np.random.default_rng([seed, 1])
    test_users = rng.permutation(n_users)[: max(1, round(test_fraction * n_users))]
    is_test = np.isin(raw["user"], test_users)
    x_train, x_test = raw["x"][~is_test], raw["x"][is_test]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std < 1e-6] = 1.0
    return AppDataset(
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=raw["y"][~is_test],
        x_test=((x_test - mean) / std).astype(np.float32),
        y_test=raw["y"][is_test],
        num_classes=N_APPS,
        input_shape=(FEATURES,),
        name="apps",
        groups_train=raw["group"][~is_test],
        groups_test=raw["group"][is_test],
    )


def app_task(seed: int = 0):  # -> p2pfl.training.Task (imported lazily: training imports torch)
    """Next-app prediction with a 62-64-64-20 MLP; `--task p2pfl.apps:app_task`."""
    from p2pfl.training import Task

    ds = load_apps(seed)
    return Task("apps-mlp", lambda: models.mlp(FEATURES, N_APPS, HIDDEN), ds)


def partition_by_group(dataset: AppDataset, n_parts: int, alpha: float = 0.5, seed: int = 0,
                       min_size: int = 2) -> list[np.ndarray]:
    """Dirichlet split over user groups: each node's users come mostly from a few personas.

    Same contract as `data.partition` (sorted disjoint int64 index arrays of the training set).
    """
    return partition(dataset.groups_train, n_parts, "dirichlet", alpha, seed, min_size)


def majority_baseline(dataset: Dataset) -> float:
    """Test accuracy of always predicting the most frequent training label."""
    top = np.bincount(dataset.y_train, minlength=dataset.num_classes).argmax()
    return float(np.mean(dataset.y_test == top))
