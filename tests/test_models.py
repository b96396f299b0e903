"""Models by name (p2pfl/models.py): shapes, the documented parameter counts, GroupNorm, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pfl import config, models

# The parameter counts docs/datasets.md states (10 classes; char-lstm: LEAF's 80 characters).
DOCUMENTED = {"mlp": ((64,), 10, 8_970), "cnn28": ((1, 28, 28), 10, 406_922), "cnn32": ((3, 32, 32), 10, 579_402),
              "resnet8": ((3, 32, 32), 10, 78_042), "resnet20": ((3, 32, 32), 10, 272_474),
              "char-lstm": ((80,), 80, 819_920)}


def test_config_names_the_registered_models() -> None:
    assert config.MODELS == tuple(models.MODELS)


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_shapes_and_documented_parameter_counts(name: str) -> None:
    shape, classes, count = DOCUMENTED[name]
    torch.manual_seed(0)
    model = models.build(name, shape, classes)
    assert models.parameter_count(model) == count
    x = torch.randint(0, classes, (3, *shape)).float() if name == "char-lstm" else torch.randn(3, *shape)
    assert model(x).shape == (3, classes)
    if len(shape) == 3:  # image models also take flat rows
        assert model(x.reshape(3, -1)).shape == (3, classes)


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202  # as every node runs (simulate sets one thread per process): no oversubscription
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["cnn28", "cnn32", "resnet8", "char-lstm"])
def test_a_few_steps_learn_a_learnable_batch(name: str) -> None:
    """Twenty Adam steps on 16 samples whose label is a function of the input halve the loss."""
    shape, classes, _ = DOCUMENTED[name]
    torch.manual_seed(1)
    model = models.build(name, shape, classes)
    y = torch.arange(16) % 4
    if name == "char-lstm":
        x = torch.randint(0, classes, (16, *shape)).float()
        x[:, -1] = y.float()  # the next character is the last one: an LSTM learns that at once
    else:
        x = 2 * torch.randn(4, *shape)[y] + 0.5 * torch.randn(16, *shape)  # a prototype per label, plus noise
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_resnets_use_groupnorm_never_batchnorm() -> None:
    """Averaging mixes parameters only: BatchNorm's running statistics (buffers) would stay each node's own."""
    for name in ("resnet8", "resnet20"):
        model = models.build(name, (3, 32, 32), 10)
        kinds = {type(m) for m in model.modules()}
        assert torch.nn.GroupNorm in kinds and not any(issubclass(k, torch.nn.modules.batchnorm._BatchNorm) for k in kinds)
        assert not list(model.buffers())


def test_augment_crops_and_flips_in_training_only() -> None:
    torch.manual_seed(2)
    aug = models.Augment(pad=4)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32) + 1
    aug.eval()
    assert torch.equal(aug(x), x)
    aug.train()
    outs = [aug(x) for _ in range(20)]
    assert any(not torch.equal(o, x) for o in outs)
    for out in outs:  # every output is x shifted by at most 4 pixels (zeros come in), maybe mirrored
        for i in range(2):
            o = out[i]
            found = False
            for flip in (False, True):
                src = x[i].flip(2) if flip else x[i]
                padded = torch.nn.functional.pad(src, (4, 4, 4, 4))
                for dy in range(9):
                    for dx in range(9):
                        if torch.equal(padded[:, dy:dy + 32, dx:dx + 32], o):
                            found = True
            assert found


def test_augment_stream_is_seeded_by_the_model_seed() -> None:
    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        model = models.build("cnn32", (3, 32, 32), 10, augment=True)
        model.train()
        return model[1](torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))

    assert torch.equal(draw(5), draw(5)) and not torch.equal(draw(5), draw(6))


def test_augment_refuses_rows_that_are_not_images() -> None:
    with pytest.raises(ValueError, match="augment crops and flips images"):
        models.build("mlp", (12,), 4, augment=True)
    with pytest.raises(ValueError, match="model cnn32 needs square images"):
        models.build("cnn32", (12,), 4)


def test_eval_sample_rows_are_fixed_seeded_and_sorted() -> None:
    from p2pfl.node import eval_rows

    a, b = eval_rows(10_000, 2000, 3), eval_rows(10_000, 2000, 3)
    assert a is not None and b is not None and np.array_equal(a, b) and len(np.unique(a)) == 2000
    assert np.array_equal(a, np.sort(a)) and a.max() < 10_000
    assert not np.array_equal(a, eval_rows(10_000, 2000, 4))
    assert eval_rows(360, 2000, 0) is None and eval_rows(10_000, 0, 0) is None  # the whole test set
