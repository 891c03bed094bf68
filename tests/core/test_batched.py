"""Batched training of K models equals K sequential train_model runs."""

import numpy as np
import pytest
import torch

from unlearn.batched import train_models_batched
from unlearn.models import build_model
from unlearn.training import SGDRecipe, predict_logits, seed_everything, train_model

N, CLASSES = 64, 4
SEEDS = [11, 12, 13]
RECIPES = {
    "plain-cosine": SGDRecipe(epochs=2, batch_size=16, lr=0.05),
    "augment-step": SGDRecipe(epochs=2, batch_size=16, lr=0.05, augment=True, schedule="step", step_every=1),
}


def factory():
    return build_model("small_cnn", 1, CLASSES)


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(N, 1, 8, 8, generator=generator)  # (N, 1, 8, 8)
    labels = torch.randint(0, CLASSES, (N,), generator=generator)  # (N,)
    rng = np.random.default_rng(0)
    # 40 per model: not a multiple of the batch size, so batches of unequal size (14+13+13) are exercised too.
    members = [rng.permutation(N)[:40] for _ in SEEDS]
    return images, labels, members


def sequential(data, recipe, seeds=SEEDS):
    images, labels, members = data
    models = []
    for seed, index in zip(seeds, members, strict=True):
        seed_everything(seed)  # as retrain / the train stage seed before building the model
        model = factory()
        models.append(train_model(model, images[index], labels[index], recipe, device="cpu", seed=seed).cpu())
    return models


@pytest.fixture(scope="module", params=sorted(RECIPES))
def trained(request, data):
    recipe = RECIPES[request.param]
    images, labels, members = data
    batched = train_models_batched(factory, images, labels, members, recipe, seeds=SEEDS, device="cpu")
    return recipe, sequential(data, recipe), batched


def assert_same_models(expected, actual, atol=1e-5):
    assert len(expected) == len(actual)
    for reference, model in zip(expected, actual, strict=True):
        want, got = reference.state_dict(), model.state_dict()
        assert want.keys() == got.keys()
        for name in want:
            if want[name].is_floating_point():
                torch.testing.assert_close(got[name], want[name], atol=atol, rtol=0, msg=name)
            else:  # num_batches_tracked
                assert torch.equal(got[name], want[name]), name


def test_batched_equals_sequential_train_model(trained, data):
    _, expected, batched = trained
    assert_same_models(expected, batched)
    images = data[0]
    for reference, model in zip(expected, batched, strict=True):
        want = predict_logits(reference, images, device="cpu")
        got = predict_logits(model, images, device="cpu")
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_batchnorm_running_statistics_are_per_model(trained):
    _, _, batched = trained
    means = [model.features[0][1].running_mean for model in batched]
    assert all(int(model.features[0][1].num_batches_tracked) == 2 * 3 for model in batched)  # 2 epochs x 3 steps
    assert not torch.allclose(means[0], torch.zeros_like(means[0]))  # updated away from the init
    assert not torch.allclose(means[0], means[1])  # each model saw its own batches


def test_result_modules_are_plain_cpu_eval_models(trained):
    _, _, batched = trained
    for model in batched:
        assert not model.training
        assert all(t.device.type == "cpu" for t in model.state_dict().values())
        fresh = factory()
        fresh.load_state_dict(model.state_dict())  # strict: same architecture, same keys


def test_result_modules_are_independent(data):
    recipe = RECIPES["plain-cosine"]
    images, labels, members = data
    models = train_models_batched(factory, images, labels, members[:2], recipe, seeds=SEEDS[:2], device="cpu")
    before = {name: t.clone() for name, t in models[1].state_dict().items()}
    with torch.no_grad():
        for tensor in models[0].state_dict().values():
            tensor.add_(1)
    assert all(torch.equal(models[1].state_dict()[name], t) for name, t in before.items())


def test_chunked_equals_unchunked(trained, data):
    recipe, _, batched = trained
    images, labels, members = data
    chunked = train_models_batched(factory, images, labels, members, recipe, seeds=SEEDS, device="cpu", chunk_size=2)
    assert_same_models(batched, chunked)


def test_deterministic_on_cpu(trained, data):
    recipe, _, batched = trained
    images, labels, members = data
    again = train_models_batched(factory, images, labels, members, recipe, seeds=SEEDS, device="cpu")
    for first, second in zip(batched, again, strict=True):
        for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_unequal_subset_lengths_are_rejected(data):
    images, labels, members = data
    uneven = [members[0], members[1][:30], members[2]]
    with pytest.raises(ValueError, match="equal length"):
        train_models_batched(factory, images, labels, uneven, RECIPES["plain-cosine"], seeds=SEEDS, device="cpu")


def test_seed_count_must_match_model_count(data):
    images, labels, members = data
    with pytest.raises(ValueError, match="seeds"):
        train_models_batched(factory, images, labels, members, RECIPES["plain-cosine"], seeds=SEEDS[:2], device="cpu")


@pytest.mark.parametrize("bad", [[], "out-of-range", "chunk"])
def test_other_invalid_arguments_are_rejected(data, bad):
    images, labels, members = data
    kwargs = {"seeds": SEEDS, "device": "cpu"}
    if bad == "out-of-range":
        members = [members[0], members[1], np.full(40, N)]
    elif bad == "chunk":
        kwargs["chunk_size"] = 0
    else:
        members, kwargs["seeds"] = [], []
    with pytest.raises(ValueError):
        train_models_batched(factory, images, labels, members, RECIPES["plain-cosine"], **kwargs)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_cuda_path_sends_each_epoch_in_one_copy_and_matches(name, data, cuda_branches_on_cpu, monkeypatch):
    """On CUDA an epoch's rows and augmentation draws go over in one copy (they were 1-4 blocking copies per
    step); the copy is the only change, so the models are the CPU path's exactly."""
    from unlearn import accel

    recipe = RECIPES[name]
    images, labels, members = data
    copies = []
    real_split = accel.split_to_device

    def counting(parts, device):
        copies.append(len(parts))
        return real_split(parts, device)

    monkeypatch.setattr(accel, "split_to_device", counting)
    fast = train_models_batched(factory, images, labels, members, recipe, seeds=SEEDS, device="cpu")
    monkeypatch.setattr(accel, "is_cuda", lambda device: False)
    plain = train_models_batched(factory, images, labels, members, recipe, seeds=SEEDS, device="cpu")
    assert len(copies) == 2 * recipe.epochs  # one per epoch per run
    assert_same_models(plain, fast, atol=0)


class AutocastRecorder(torch.nn.Module):
    """A small model that notes, on every forward, whether autocast was on around it (its flag is
    visible inside vmap even where autocast does not rewrite the operations)."""

    seen: list[bool] = []

    def __init__(self):
        super().__init__()
        self.net = factory()

    def forward(self, x):
        AutocastRecorder.seen.append(torch.is_autocast_enabled("cpu"))
        return self.net(x)


def test_mixed_precision_wraps_the_vmapped_forward_in_autocast_on_the_cuda_path(data, cuda_branches_on_cpu_bf16):
    images, labels, members = data
    recipe = RECIPES["plain-cosine"]
    for mixed in (True, False):
        AutocastRecorder.seen = []
        train_models_batched(AutocastRecorder, images, labels, members, recipe, seeds=SEEDS, device="cpu",
                             mixed_precision=mixed)
        assert AutocastRecorder.seen and set(AutocastRecorder.seen) == {mixed}


def test_mixed_precision_is_a_no_op_on_the_cpu(trained, data):
    recipe, _, batched = trained
    images, labels, members = data
    mixed = train_models_batched(factory, images, labels, members, recipe, seeds=SEEDS, device="cpu",
                                 mixed_precision=True)
    assert_same_models(batched, mixed, atol=0)


def test_vmapped_forward_dtype_probe(data, cuda_branches_on_cpu_bf16):
    """The probe runs the vmapped forward under train_model's autocast and reports the dtype it computes in,
    leaving the global RNG as it found it (it builds throwaway models). On the CPU, autocast does not reach
    operations inside vmap, so the answer there is float32 although autocast was on."""
    from unlearn.batched import vmapped_forward_dtype

    images, _, _ = data
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert factory()(images[:2]).dtype == torch.bfloat16  # the same autocast outside vmap does apply
    state = torch.random.get_rng_state()
    AutocastRecorder.seen = []
    assert vmapped_forward_dtype(AutocastRecorder, images, "cpu") == torch.float32
    assert AutocastRecorder.seen == [True]
    assert torch.equal(torch.random.get_rng_state(), state)
