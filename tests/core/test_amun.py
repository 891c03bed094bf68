import torch

from unlearn.methods import TensorSet
from unlearn.methods.amun import adversarial_set, choose_eps_init, pgd_l2
from unlearn.models import build_model
from unlearn.training import SGDRecipe, train_model


def _model_and_data(tiny_images):
    images, labels = tiny_images
    x, y = torch.tensor(images), torch.tensor(labels)
    model = train_model(build_model("small_cnn", 1, 4), x, y, SGDRecipe(4, 32, 0.05),
                        device="cpu", seed=0)
    return model, x, y


def test_pgd_stays_in_the_l2_ball_and_the_pixel_range(tiny_images):
    model, x, y = _model_and_data(tiny_images)
    eps = torch.full((16,), 0.5)
    x_adv, _ = pgd_l2(model, x[:16], y[:16], eps, steps=20)
    norms = (x_adv - x[:16]).flatten(1).norm(dim=1)
    assert (norms <= 0.5 + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_doubling_search_flips_every_label_with_the_adversarial_prediction(tiny_images):
    model, x, y = _model_and_data(tiny_images)
    x_adv, y_adv, eps_used = adversarial_set(model, TensorSet(x[:40], y[:40]), eps_init=0.05,
                                             pgd_steps=20, max_doublings=10, device="cpu")
    correct = model(x[:40]).argmax(1) == y[:40]
    assert (y_adv[correct] != y[:40][correct]).all()  # every correctly classified sample flipped
    assert torch.equal(y_adv, model(x_adv).argmax(1))
    # eps used lies on the doubling grid and bounds the perturbation
    grid = 0.05 * 2.0 ** torch.arange(11)
    assert all(torch.isclose(e, grid).any() for e in eps_used[correct])
    assert ((x_adv - x[:40]).flatten(1).norm(dim=1) <= eps_used + 1e-5).all()


def test_eps_init_covers_the_requested_share_of_probes(tiny_images):
    model, x, y = _model_and_data(tiny_images)
    forget = TensorSet(x[:40], y[:40])
    eps = choose_eps_init(model, forget, probe_eps=0.01, probe_size=40, coverage=0.95,
                          pgd_steps=20, max_doublings=12, device="cpu", seed=0)
    _, _, used = adversarial_set(model, forget, eps_init=0.01, pgd_steps=20, max_doublings=12,
                                 device="cpu")
    assert (used <= eps + 1e-9).float().mean() >= 0.95
    smaller = eps / 2
    assert eps == 0.01 or (used <= smaller + 1e-9).float().mean() < 0.95  # and it is the smallest
