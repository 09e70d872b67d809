"""The Vision Transformer and the masked autoencoder: shapes, masking, the loss, and that they learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepgen.models.vit import (
    MAEConfig,
    MaskedAutoencoderViT,
    PatchEmbedding,
    ViTClassifier,
    ViTClassifierConfig,
    ViTConfig,
    patchify,
    random_masking,
    sinusoidal_positions_2d,
    unpatchify,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Small models step 10-20x faster on one thread than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape, p, patches", [((1, 8, 8), 2, 16), ((1, 8, 8), 4, 4), ((3, 16, 12), 4, 12)])
def test_patch_embedding_gives_one_token_per_patch(shape, p, patches):
    config = ViTConfig(input_shape=shape, patch_size=p, hidden=16, heads=2)
    assert config.num_patches == patches
    tokens = PatchEmbedding(config)(torch.rand(5, *shape))
    assert tokens.shape == (5, patches, 16)


def test_patch_token_is_a_linear_map_of_its_own_pixels_only():
    config = ViTConfig(input_shape=(1, 8, 8), patch_size=4, hidden=8, heads=2)
    embed = PatchEmbedding(config)
    x = torch.rand(1, 1, 8, 8)
    y = x.clone()
    y[0, 0, 4:, :4] += 1  # patch 2 in raster order (second row, first column)
    changed = (embed(x) - embed(y)).abs().sum(-1)[0]  # (N,)
    assert changed[2] > 0 and torch.count_nonzero(changed) == 1


def test_a_conv_stem_keeps_the_patch_grid_and_lets_a_token_see_across_its_border():
    config = ViTConfig(input_shape=(1, 8, 8), patch_size=4, hidden=8, heads=2, stem="conv", stem_channels=4)
    embed = PatchEmbedding(config).eval()  # batch norm's running statistics: each image on its own
    x = torch.rand(1, 1, 8, 8)
    y = x.clone()
    y[0, 0, 3, 0] += 1  # patch 0's last row, next to patch 2 (rows 4-7, columns 0-3)
    changed = (embed(x) - embed(y)).abs().sum(-1)[0]  # (N,)
    assert embed(x).shape == (1, 4, 8)
    assert changed[0] > 0 and changed[2] > 0  # two 3 x 3 convs reach 2 pixels across the border
    assert changed[3] == 0  # but not to the far corner


def test_patchify_is_raster_order_and_unpatchify_inverts_it():
    images = torch.rand(3, 2, 8, 12)
    patches = patchify(images, 4)  # (3, 6, 32)
    assert patches.shape == (3, 6, 32)
    # patch 4: grid row 1, column 1 -> pixels [4:8, 4:8], laid out (row, col, channel)
    assert torch.equal(patches[0, 4], images[0, :, 4:8, 4:8].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(patches, 4, (2, 8, 12)), images)


def test_side_that_is_not_a_multiple_of_the_patch_is_refused():
    with pytest.raises(ValueError, match="patch_size"):
        ViTConfig(input_shape=(1, 8, 8), patch_size=3)


def test_sinusoidal_2d_positions_are_distinct():
    table = sinusoidal_positions_2d((4, 4), 16)
    assert table.shape == (16, 16)
    assert len({tuple(r.round(decimals=5).tolist()) for r in table}) == 16


@pytest.mark.parametrize("pool, position, stem", [("cls", "learned", "patch"), ("mean", "sinusoidal", "patch"),
                                                  ("mean", "learned", "conv")])
def test_vit_overfits_a_tiny_set(pool, position, stem):
    torch.manual_seed(0)
    x = torch.rand(16, 64)  # 16 random 8x8 images, 4 classes
    y = torch.arange(16) % 4
    model = ViTClassifier(ViTClassifierConfig(input_shape=(1, 8, 8), patch_size=2, hidden=32, layers=2, heads=4,
                                              pool=pool, position=position, stem=stem, stem_channels=8,
                                              num_classes=4))
    assert model(x).shape == (16, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(x).argmax(1) == y).all()
    assert loss.item() < 0.05


def test_flops_estimate_grows_with_tokens():
    small = ViTClassifier(ViTClassifierConfig(input_shape=(1, 8, 8), patch_size=4, hidden=32, heads=2))
    fine = ViTClassifier(ViTClassifierConfig(input_shape=(1, 8, 8), patch_size=2, hidden=32, heads=2))
    assert 0 < small.estimate_flops_per_image() < fine.estimate_flops_per_image()
    stem = ViTClassifier(ViTClassifierConfig(input_shape=(1, 8, 8), patch_size=2, hidden=32, heads=2, stem="conv",
                                             stem_channels=8))
    # two 3 x 3 convs of 8 channels at each of the 64 pixels: 6 * 64 * (1*8*9 + 8*8*9) more, and a wider patch map
    extra = 6 * 64 * (8 * 9 + 8 * 8 * 9) + 6 * (8 - 1) * 4 * 32 * 16
    assert stem.estimate_flops_per_image() == fine.estimate_flops_per_image() + extra


def test_the_spec_stem_reaches_the_model():
    from deepgen.config import ViTClassifierSpec
    from deepgen.tasks.vit import vit_config

    spec = ViTClassifierSpec(stem="conv", stem_channels=8)
    config = vit_config(ViTClassifierConfig, spec, [1, 8, 8], num_classes=3)
    assert (config.stem, config.stem_channels) == ("conv", 8)
    assert ViTClassifier(config).vit.patch_embed.stem is not None
    assert ViTClassifierSpec().stem == "patch"


# --- masked autoencoder ----------------------------------------------------------------------------


def _mae(**kw) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    base = dict(input_shape=(1, 8, 8), patch_size=2, hidden=32, layers=1, heads=2, decoder_hidden=16,
                decoder_layers=1, decoder_heads=2)
    return MaskedAutoencoderViT(MAEConfig(**(base | kw)))


@pytest.mark.parametrize("ratio, n, visible", [(0.75, 16, 4), (0.5, 16, 8), (0.9, 64, 6)])
def test_masking_keeps_exactly_the_requested_ratio(ratio, n, visible):
    config = MAEConfig(input_shape=(1, 2 * int(n ** 0.5), 2 * int(n ** 0.5)), patch_size=2, hidden=8, heads=2,
                       decoder_hidden=8, decoder_heads=2, mask_ratio=ratio)
    assert config.num_patches == n and config.num_visible == visible
    ids_keep, ids_restore, mask = random_masking(n, 32, visible, torch.Generator().manual_seed(0))
    assert ids_keep.shape == (32, visible)
    assert (mask.sum(1) == n - visible).all()  # every image: exactly N - V masked
    # the kept ids are exactly the unmasked positions, each once
    for k, m in zip(ids_keep, mask):
        assert sorted(k.tolist()) == torch.nonzero(m == 0).flatten().tolist()
    # different images get different masks
    assert len({tuple(m.tolist()) for m in mask}) > 1


def test_decoder_sees_the_encoded_patches_at_their_own_positions():
    model = _mae(mask_ratio=0.75).eval()
    x = torch.rand(2, 64)
    masking = random_masking(16, 2, 4, torch.Generator().manual_seed(1))
    ids_keep, ids_restore, mask = masking
    latent = model.forward_encoder(x.view(2, 1, 8, 8), ids_keep)  # (B, 1 + V, C): [CLS] first
    assert latent.shape == (2, 5, 32)
    seen = {}
    blocks, model.decoder_blocks = model.decoder_blocks, torch.nn.ModuleList()  # look at the decoder's input

    def capture(module, args):
        seen["x"] = args[0]

    handle = model.decoder_norm.register_forward_pre_hook(capture)
    model.forward_decoder(latent, ids_restore)
    handle.remove()
    model.decoder_blocks = blocks
    dec_in = seen["x"][:, 1:] - model.decoder_pos_embed  # (B, N, C_dec), positions taken off again
    embedded = model.decoder_embed(latent[:, 1:])  # (B, V, C_dec)
    for b in range(2):
        for j, patch in enumerate(ids_keep[b]):  # visible patch j of the shuffled order sits at its own index
            assert torch.allclose(dec_in[b, patch], embedded[b, j], atol=1e-6)
        for patch in torch.nonzero(mask[b]).flatten():  # every masked index holds the mask token
            assert torch.allclose(dec_in[b, patch], model.mask_token[0, 0], atol=1e-6)


def test_loss_ignores_visible_patches():
    model = _mae()
    x = torch.rand(3, 64)
    out = model(x, random_masking(16, 3, 4, torch.Generator().manual_seed(2)))
    visible = (out.mask == 0)[..., None]
    changed = out._replace(pred=torch.where(visible, out.pred + 100.0, out.pred))  # ruin only visible predictions
    assert torch.equal(model.objective(out)["loss"], model.objective(changed)["loss"])
    # masked patches predicted exactly, visible ones wrong: no loss at all
    exact = out._replace(pred=torch.where(visible, out.pred + 100.0, out.target))
    assert model.objective(exact)["loss"].item() == 0.0
    assert model.objective(out)["loss"].item() > 0.0


def test_anomaly_score_uses_fixed_masks_and_learns_the_normal_data():
    model = _mae(eval_masks=3)
    torch.manual_seed(0)
    normal = torch.zeros(64, 1, 8, 8)
    normal[:, :, :, 3:5] = 1.0  # a vertical bar
    normal = (normal + 0.05 * torch.rand_like(normal)).view(64, -1)
    odd = torch.zeros(8, 1, 8, 8)
    odd[:, :, 3:5, :] = 1.0  # a horizontal bar
    odd = odd.view(8, -1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.objective(model(normal))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    s = model.anomaly_score(normal)
    # the same image scores the same alone and in a batch: the masks are fixed, not per batch
    assert torch.allclose(model.anomaly_score(normal[:1]), s[:1], atol=1e-6)
    assert model.anomaly_score(odd).min() > s.max()
    assert model.reconstruct(normal[:2]).shape == (2, 64)


def test_mae_config_needs_a_visible_and_a_masked_patch():
    with pytest.raises(ValueError, match="visible"):
        MAEConfig(input_shape=(1, 8, 8), patch_size=4, mask_ratio=0.9)
    with pytest.raises(ValueError, match="eval_mask_ratio"):
        MAEConfig(input_shape=(1, 8, 8), patch_size=2, eval_mask_ratio=0.99)  # 16 patches: none visible


@pytest.mark.parametrize("eval_ratio, hidden", [(None, 12), (0.25, 4), (0.0625, 1)])
def test_scoring_masks_hide_the_eval_ratio_while_training_keeps_mask_ratio(eval_ratio, hidden):
    from deepgen.config import MAESpec
    from deepgen.tasks.vit import vit_config

    model = _mae(mask_ratio=0.75, eval_mask_ratio=eval_ratio, eval_masks=5)
    _, _, mask = model.fixed_masks()
    assert mask.shape == (5, 16) and (mask.sum(1) == hidden).all()
    assert (model(torch.rand(2, 64)).mask.sum(1) == 12).all()  # training masks: mask_ratio
    spec = MAESpec(patch_size=2, eval_mask_ratio=eval_ratio)  # the pipeline field reaches the model
    assert vit_config(MAEConfig, spec, [1, 8, 8]).eval_mask_ratio == eval_ratio


def test_random_shift_moves_whole_images_by_at_most_the_limit():
    from deepgen.models.vit import random_shift

    images = torch.zeros(64, 1, 8, 8)
    images[:, 0, 3, 4] = 1.0  # one lit pixel
    moved = random_shift(images, 1, torch.Generator().manual_seed(0))
    where = torch.nonzero(moved[:, 0] == 1.0)  # (B, 3): image, row, column
    assert len(where) == 64 and moved.sum() == 64  # the pixel survives, nothing else appears
    assert (where[:, 1] - 3).abs().max() == 1 and (where[:, 2] - 4).abs().max() == 1
    assert len({(int(r), int(c)) for _, r, c in where}) > 4  # shifts differ between images
    assert torch.equal(random_shift(images, 0), images)


def test_an_image_parquet_source_prepares_labelled_images_for_the_vit(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers import bar_images

    from deepgen.config import PipelineSpec
    from deepgen.data.prepare import prepare_dataset
    from deepgen.tasks import build_task

    x, y = bar_images(120, seed=0)
    pq.write_table(pa.table({"pixels": [r.tolist() for r in x.reshape(120, -1)], "label": y}), tmp_path / "i.parquet")
    spec = PipelineSpec.validate_dict({
        "name": "img", "registry": {"model_name": "img"}, "tracking": {"runs_dir": str(tmp_path / "runs")},
        "data": {"source": {"kind": "image_table", "path": str(tmp_path / "i.parquet"), "image_shape": [1, 8, 8],
                            "image_column": "pixels"}},
        "model": {"kind": "vit_classifier", "patch_size": 4, "hidden": 8, "heads": 2, "layers": 1}})
    manifest, _ = prepare_dataset(spec.data, spec.data_dir, log=lambda m: None)
    assert manifest.shape == [1, 8, 8] and manifest.label_type == "int"
    task = build_task(spec, manifest)
    assert task.num_classes == 2 and task.config.num_patches == 4
    # unlabelled images cannot train a classifier: one line naming what is missing
    from deepgen.errors import DataError

    unlabelled = spec.model_copy(update={"data": spec.data.model_copy(update={
        "source": spec.data.source.model_copy(update={"label_column": None}), "output": str(tmp_path / "u")})})
    manifest, _ = prepare_dataset(unlabelled.data, unlabelled.data_dir, log=lambda m: None)
    with pytest.raises(DataError, match="integer labels"):
        build_task(unlabelled, manifest)
