"""The AC-GAN conditioning of the conditional GAN (conditioning: acgan): where its class term sends gradients,
that a tiny one learns to draw the label it is asked for, and its spec fields."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from test_gans import batch_of, blob_images, make_task

from deepgen.models import gans
from deepgen.tasks.gan import CGANSpec, generate

torch.set_num_threads(1)


def tiny_acgan(**fields) -> CGANSpec:
    return CGANSpec(num_classes=2, nz=8, ngf=8, ndf=8, embed_dim=4, conditioning="acgan", **fields)


def grads(module) -> dict[str, bool]:
    """parameter name -> whether a backward left a non-zero gradient on it"""
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters()}


def test_the_acgan_discriminator_sees_the_label_only_through_its_class_head():
    cfg = gans.DCGANConfig((1, 16, 16), nz=8, ngf=4, ndf=4, num_classes=3, embed_dim=4, auxiliary=True)
    D = gans.DCGANDiscriminator(cfg).eval()
    x = torch.randn(5, 1, 16, 16)
    logits, classes = D(x, None, classes=True)
    assert logits.shape == (5,) and classes.shape == (5, 3)
    # the adversarial logit takes no label: the same for any y, and the image enters without label maps
    assert torch.equal(D(x, torch.zeros(5, dtype=torch.long)), D(x, torch.full((5,), 2)))
    assert D.net[0].in_channels == 1 and D.embed is None
    with pytest.raises(ValueError, match="class head"):
        gans.DCGANDiscriminator(gans.DCGANConfig((1, 16, 16), num_classes=3, ngf=4, ndf=4))(x, None, classes=True)


def test_the_class_term_trains_only_the_class_head_and_the_shared_features_not_the_adversarial_output():
    D = gans.DCGANDiscriminator(gans.DCGANConfig((1, 16, 16), nz=8, ngf=4, ndf=4, num_classes=2, auxiliary=True))
    x, y = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 0, 1, 0, 1])
    logits, classes = D(x, None, classes=True)
    gans.auxiliary_loss(classes, y).backward()
    g = grads(D)
    psi = f"net.{len(D.net) - 1}.weight"  # the adversarial output conv
    assert not g[psi] and g["classifier.weight"] and g["net.0.weight"]
    D.zero_grad(set_to_none=True)
    logits, classes = D(x, None, classes=True)
    gans.discriminator_loss(logits, -logits).backward()
    g = grads(D)
    assert g[psi] and not g["classifier.weight"] and not g["classifier.bias"]


def test_an_acgan_step_adds_the_class_terms_to_both_losses():
    task = make_task(tiny_acgan())
    models = task.build_models()
    out = task.train_step(models, task.build_optimizers(models), batch_of(16))
    task.guard.flush()
    assert {"d_aux_loss", "g_aux_loss"} <= set(out) and all(torch.isfinite(v) for v in out.values())
    adversarial = out["d_loss"] - out["d_aux_loss"]  # aux_weight 1: D's loss is the BCE pair plus the class term
    assert out["d_aux_loss"].item() > 0 and 0 < adversarial.item() < 5


def test_with_aux_weight_zero_the_class_head_never_learns():
    task = make_task(tiny_acgan(aux_weight=0.0))
    models = task.build_models()
    head = [p.detach().clone() for p in models["discriminator"].classifier.parameters()]
    opts = task.build_optimizers(models)
    for seed in range(3):
        task.train_step(models, opts, batch_of(16, seed=seed))
    assert all(torch.equal(a, b) for a, b in zip(head, models["discriminator"].classifier.parameters()))


def test_a_tiny_acgan_learns_to_draw_the_label_it_is_asked_for():
    """Labels: 0 = a blob in the top half, 1 = in the bottom half. After a few hundred steps a sample
    asked for label 0 has its mass above the middle, one asked for 1 below it.

    The AC-GAN mechanism alone, without the default R1: on this 16x16 toy with an 8-channel D, R1 (gamma 1)
    slowed the label down (0.51 and 1.0 after 250 steps for seeds 0 and 1; 0.50-0.89 after 500), where on
    digits and MNIST-5k the default reads 0.98-1.0 per label (benchmarks/README.md, eleventh session)."""
    torch.manual_seed(0)
    task = make_task(tiny_acgan(r1_gamma=0.0))
    models = task.build_models()
    opts = task.build_optimizers(models)
    rows, labels = blob_images(512, seed=1)
    for _ in range(250):
        i = torch.randint(0, len(rows), (32,))
        task.train_step(models, opts, {"features": torch.tensor(rows)[i], "label": torch.tensor(labels)[i]})
    asked = torch.tensor([0, 1]).repeat_interleave(100)
    images = generate(task.sampler(models), len(asked), asked, seed=0)[:, 0]  # (200, 16, 16) in [0, 1]
    top, bottom = images[:, :8].sum((1, 2)), images[:, 8:].sum((1, 2))
    drawn = (bottom > top).long()  # the label a sample's blob position says
    assert (drawn == asked).float().mean().item() >= 0.9


def test_acgan_fields_validate():
    assert CGANSpec(num_classes=3, conditioning="acgan").aux_weight == 1.0
    with pytest.raises(ValidationError, match="aux_weight"):
        tiny_acgan(aux_weight=-1)
    with pytest.raises(ValidationError, match="needs architecture dcgan"):
        CGANSpec(num_classes=3, architecture="mlp", conditioning="acgan")
    with pytest.raises(ValidationError, match="conditioning"):
        CGANSpec(num_classes=3, conditioning="labels")
    with pytest.raises(ValidationError, match="aux_generated"):
        tiny_acgan(aux_generated="fake")


def test_the_generated_class_term_targets_the_asked_label_or_the_extra_generated_class():
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])  # K = 3 labels and "generated"
    assert gans.generated_class_loss(logits, y, "real_only") is None
    assert torch.allclose(gans.generated_class_loss(logits, y, "label"), F.cross_entropy(logits, y))
    assert torch.allclose(gans.generated_class_loss(logits, y, "extra_class"),
                          F.cross_entropy(logits, torch.full((6,), 3)))


@pytest.mark.parametrize("mode, outputs", [("real_only", 2), ("label", 2), ("extra_class", 3)])
def test_the_class_head_has_a_generated_output_only_with_extra_class(mode, outputs):
    models = make_task(tiny_acgan(aux_generated=mode)).build_models()
    assert models["discriminator"].classifier.out_features == outputs


def test_an_extra_class_head_learns_to_call_the_samples_generated_and_the_data_by_label():
    """With aux_generated extra_class, D's head is trained on G's samples as class K: after some steps
    it gives G's samples most of their probability on "generated", and real images little."""
    torch.manual_seed(0)
    task = make_task(tiny_acgan(aux_generated="extra_class"))
    models = task.build_models()
    opts = task.build_optimizers(models)
    rows, labels = blob_images(256, seed=1)
    for _ in range(40):
        i = torch.randint(0, len(rows), (32,))
        task.train_step(models, opts, {"features": torch.tensor(rows)[i], "label": torch.tensor(labels)[i]})
    D = models["discriminator"].eval()
    asked = torch.tensor([0, 1]).repeat_interleave(50)
    fake = generate(task.sampler(models), len(asked), asked, seed=0) * 2 - 1
    real = torch.tensor(rows[:100]).view(100, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        p_fake = D(fake, None, classes=True)[1].softmax(1)[:, 2].mean().item()
        p_real = D(real, None, classes=True)[1].softmax(1)[:, 2].mean().item()
    assert p_fake > 0.5 > p_real
