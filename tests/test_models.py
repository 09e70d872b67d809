import pytest
import torch

from deepgen.models.autoencoders import AutoencoderConfig, ConvAutoencoder, DenseAutoencoder


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 7, 9)])
def test_conv_autoencoder_restores_odd_and_even_image_sizes(shape):
    model = ConvAutoencoder(AutoencoderConfig(input_shape=shape, latent_dim=6, hidden=(8, 16)))
    x = torch.rand(5, int(torch.tensor(shape).prod()))
    assert model.encode(x).shape == (5, 6)  # the bottleneck
    r = model.reconstruct(x)
    assert r.shape == x.shape and r.min() >= 0 and r.max() <= 1  # sigmoid output


def test_dense_autoencoder_is_undercomplete_and_mirrored():
    model = DenseAutoencoder(AutoencoderConfig(input_shape=(64,), latent_dim=4, hidden=(32, 16)))
    widths = [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 16, 4]
    assert [m.out_features for m in model.decoder if isinstance(m, torch.nn.Linear)] == [16, 32, 64]


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_reconstruction_error_matches_the_definition(loss):
    torch.manual_seed(0)
    model = DenseAutoencoder(AutoencoderConfig(input_shape=(10,), latent_dim=3, loss=loss))
    x = torch.rand(4, 10)
    r = model.reconstruct(x)
    expected = (-(x * r.log() + (1 - x) * (1 - r).log())).mean(1) if loss == "bce" else (r - x).pow(2).mean(1)
    assert torch.allclose(model.reconstruction_error(x, model(x)), expected, atol=1e-5)


def test_training_lowers_reconstruction_error_of_structured_data():
    torch.manual_seed(0)
    basis = torch.rand(3, 32)
    x = torch.sigmoid(4 * (torch.rand(256, 3) @ basis - 0.75))  # rank-3 structure in 32 dims
    model = DenseAutoencoder(AutoencoderConfig(input_shape=(32,), latent_dim=3, hidden=(16,), loss="mse"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = model.loss(x).item()
    for _ in range(300):
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()
    assert model.loss(x).item() < 0.2 * start


def test_bce_loss_is_autocast_safe():
    model = DenseAutoencoder(AutoencoderConfig(input_shape=(16,), latent_dim=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(torch.rand(8, 16))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
