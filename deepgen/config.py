"""Typed pipeline specs.

A pipeline is a YAML file validated once, at the edge, into a `PipelineSpec`; everything below takes
these typed objects. Every model forbids unknown fields, so a typo is an error, not a silent default.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deepgen.errors import SpecError
from deepgen.files import absolute
from deepgen.tasks import registry


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _a_name(value: str) -> str:
    # these names become folders (runs, pretrained copies), MLflow names and search filters: no "/", no
    # "..", no quotes; a scheduled run appends -SLOT (17 characters) and a Ray Train run folder holds 255
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"{value!r} is not a name: letters, digits, '.', '_' and '-', starting with a letter "
                         "or digit, at most 128 characters")
    return value


Name = Annotated[str, AfterValidator(_a_name)]

# Upper bounds where a typo (an extra zero or three) would exhaust the machine before any error came
MAX_WIDTH = 16384  # a layer's width, channels, code size (bert-large: 1024 wide, 4096 feed-forward)
MAX_DEPTH = 256  # layers, heads, residual blocks
MAX_WORKERS = 512  # Ray Train workers, concurrent trials
MAX_BATCH = 65536  # rows per worker batch
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]


# --- data sources (a discriminated union on `kind`) ------------------------------------------------


class DigitsSource(Spec):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)."""

    kind: Literal["digits"] = "digits"


class IdxSource(Spec):
    """A directory in the MNIST layout: train-/t10k- images (idx3) and labels (idx1), optionally gzipped.

    The official t10k files become the test split; validation is carved out of the train files.
    """

    kind: Literal["idx"] = "idx"
    path: str = Field(description="directory holding train-images-idx3-ubyte[.gz] and friends")


class NpySource(Spec):
    """A `.npy` array of shape (N, D), (N, H, W) or (N, C, H, W), with optional labels (N,)."""

    kind: Literal["npy"] = "npy"
    path: str = Field(description=".npy file with the features")
    labels: str | None = Field(default=None, description=".npy file with one label per row")


class TableSource(Spec):
    """A CSV or Parquet table of numeric feature columns and an optional label column."""

    kind: Literal["table"] = "table"
    path: str = Field(description=".csv or .parquet file")
    label_column: str | None = Field(default=None, description="column holding the label, if any")
    feature_columns: list[str] | None = Field(
        default=None, description="feature columns; default: every numeric column but the label"
    )


class ShapesSource(Spec):
    """Synthetic images of filled shapes with their binary masks (segmentation), generated from a seed."""

    kind: Literal["shapes"] = "shapes"
    num_images: int = Field(default=600, ge=10, le=1_000_000, description="images to generate")
    size: int = Field(default=32, ge=8, le=1024, description="height and width in pixels")
    seed: int = Field(default=0, description="the same seed gives the same images and masks")


class ImageMaskSource(Spec):
    """A Parquet table of image/mask pairs (segmentation): each row holds a flattened image and mask."""

    kind: Literal["image_masks"] = "image_masks"
    path: str = Field(description=".parquet file (or folder of them)")
    image_shape: list[Annotated[int, Field(gt=0)]] = Field(
        min_length=3, max_length=3, description="(C, H, W) of one image; the mask is (1, H, W)")
    image_column: str = Field(default="image", description="list column of C*H*W pixel values")
    mask_column: str = Field(default="mask", description="list column of H*W values, nonzero = foreground")


class ImageTableSource(Spec):
    """A Parquet table of images and their labels: each row a flattened image (a list column) and a label."""

    kind: Literal["image_table"] = "image_table"
    path: str = Field(description=".parquet file (or folder of them)")
    image_shape: list[Annotated[int, Field(gt=0)]] = Field(
        min_length=3, max_length=3, description="(C, H, W) of one image")
    image_column: str = Field(default="image", description="list column of C*H*W pixel values (0..255 or 0..1)")
    label_column: str | None = Field(default="label", description="column of labels; null: unlabelled")


class TextFilesSource(Spec):
    """Plain UTF-8 text files: documents separated by blank lines, sentences split within them."""

    kind: Literal["text_files"] = "text_files"
    paths: list[str] = Field(min_length=1, description="text files, or folders whose *.txt files are read")
    sentence_split: Literal["auto", "lines", "regex"] = Field(
        default="auto", description="lines: one sentence per line; regex: split running text at . ! ?; "
        "auto: lines where every line of a document ends in . ! or ?, else regex")


class TextTableSource(Spec):
    """A CSV or Parquet table with a text column: each row is a document, or a part of one."""

    kind: Literal["text_table"] = "text_table"
    path: str = Field(description=".csv or .parquet file")
    text_column: str = Field(default="text", description="column of text, split into sentences per row")
    document_column: str | None = Field(
        default=None, description="rows sharing a value form one document, in row order; default: one row each")


class LabelledTextSource(Spec):
    """A CSV or Parquet table of texts and their class labels (strings or integers)."""

    kind: Literal["labelled_text"] = "labelled_text"
    path: str = Field(description=".csv or .parquet file")
    text_column: str = Field(default="text", description="column of text, one example per row")
    label_column: str = Field(default="label", description="column of class labels, strings or integers")


TEXT_SOURCES = ("text_files", "text_table", "labelled_text")

Source = Annotated[
    DigitsSource | IdxSource | NpySource | TableSource | ShapesSource | ImageMaskSource | ImageTableSource
    | TextFilesSource | TextTableSource | LabelledTextSource,
    Field(discriminator="kind"),
]


class TextSpec(Spec):
    """How text becomes model input: the tokenizer and the length of one encoded row."""

    max_len: int = Field(default=128, ge=8, le=8192, description="tokens per row, [CLS] and [SEP]s included")
    vocab_size: int = Field(default=8000, gt=5, le=1_000_000,
                            description="WordPiece vocabulary size when one is trained")
    min_frequency: int = Field(default=2, ge=1, description="fewest occurrences for a merge to enter the vocabulary")
    next_fraction: float = Field(
        default=0.5, gt=0, lt=1, description="NSP: share of pairs whose B is A's next sentence")
    tokenizer: str | None = Field(
        default=None,
        description="an existing tokenizer.json to use instead of training one (a fine-tuning pipeline "
                    "uses its pretrained model's automatically)")


class DataSpec(Spec):
    source: Source
    output: str | None = Field(
        default=None, description="where the prepared Parquet dataset goes; default RUNS_DIR/data/NAME"
    )
    val_fraction: float = Field(default=0.15, gt=0, lt=1, description="share of training rows for validation")
    test_fraction: float = Field(
        default=0.15, gt=0, lt=1, description="share of rows for test, where the source has no test split"
    )
    seed: int = Field(default=0, description="seed of the split")
    text: TextSpec | None = Field(default=None, description="text sources: tokenizer and row length")
    resize: int | None = Field(
        default=None, ge=4, description="images: resize to this square side (bilinear), e.g. 32 or 64 for GANs")
    engine: Literal["auto", "memory", "ray_data"] = Field(default="auto", description=(
        "how prepare runs: memory (one process reads the whole source: fastest for small data), ray_data "
        "(table, npy, idx and image_table sources: streamed by Ray Data in two passes, many Parquet files per "
        "split, for sources larger than memory; rows are split by a hash of their values; no data.resize), auto: "
        "ray_data for such sources of 256 MiB and more"))

    def with_absolute_paths(self) -> DataSpec:
        """Source paths resolved against the current directory, for a Ray task that runs elsewhere."""
        src = self.source
        updates = {f: str(absolute(getattr(src, f))) for f in ("path", "labels") if getattr(src, f, None)}
        if getattr(src, "paths", None):
            updates["paths"] = [str(absolute(p)) for p in src.paths]
        data = {"source": src.model_copy(update=updates)}
        if self.text is not None and self.text.tokenizer:
            data["text"] = self.text.model_copy(update={"tokenizer": str(absolute(self.text.tokenizer))})
        return self.model_copy(update=data)

    @property
    def is_text(self) -> bool:
        return self.source.kind in TEXT_SOURCES

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> DataSpec:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


# --- models (a discriminated union on `kind`) ------------------------------------------------------


AutoencoderLoss = Literal["auto", "bce", "mse"]
LOSS_HELP = ("reconstruction loss: bce (sigmoid + binary cross-entropy) for binary inputs, mse for grey levels "
             "and table values; auto: bce when every prepared training value is 0 or 1, else mse (decided at "
             "prepare time from the data, recorded in the run as resolved_loss)")


def resolve_score(score: str, shape: list[int], kind: str = "dense_autoencoder") -> str:
    """`anomaly.score: auto` -> the score that won benchmarks/anomaly.py for rows of this shape: the
    smoothed error for images (C, H, W); for table rows a VAE's own -ELBO, and `combined` for the other
    autoencoders."""
    if score != "auto":
        return score
    if len(shape) == 3:
        return "smoothed"
    return "reconstruction" if kind == "vae" else "combined"


def resolve_input_range(input_range: str, shape: list[int]) -> str:
    """`anomaly.input_range: auto` -> normal for table rows, prepared for images (benchmarks/anomaly.py)."""
    if input_range != "auto":
        return input_range
    return "prepared" if len(shape) == 3 else "normal"


def resolve_loss(loss: str | None, binary_features: bool) -> str:
    """`auto` (or unset) -> bce for binary inputs, mse otherwise; an explicit choice stays."""
    if loss in (None, "auto"):
        return "bce" if binary_features else "mse"
    return loss


class DenseAutoencoderSpec(Spec):
    """Undercomplete MLP autoencoder: h = f(x) through `hidden` to `latent_dim`, r = g(h) mirrored."""

    kind: Literal["dense_autoencoder"] = "dense_autoencoder"
    hidden: list[Width] = Field(default=[64], description="encoder widths before the code")
    latent_dim: int = Field(default=8, gt=0, le=MAX_WIDTH, description="size of the bottleneck code h")
    loss: AutoencoderLoss = Field(default="auto", description=LOSS_HELP)


class ConvAutoencoderSpec(Spec):
    """Undercomplete convolutional autoencoder: strided convs down, transposed convs up."""

    kind: Literal["conv_autoencoder"] = "conv_autoencoder"
    channels: list[Width] = Field(default=[16, 32], description="channels per stride-2 stage")
    latent_dim: int = Field(default=16, gt=0, le=MAX_WIDTH, description="size of the bottleneck code h")
    loss: AutoencoderLoss = Field(default="auto", description=LOSS_HELP)


# Autoencoder variants (Goodfellow et al., Deep Learning, ch. 14; Kingma & Welling 2014). Each reuses the
# dense or conv stack above as its encoder and decoder; the fields the undercomplete specs share keep their
# meaning, so `--set model.kind=vae` works on a pipeline written for dense_autoencoder.


class AutoencoderBackboneSpec(Spec):
    """The encoder and decoder stack shared by the autoencoder variants."""

    architecture: Literal["dense", "conv"] = Field(
        default="dense", description="dense: MLP on flattened rows; conv: strided convs on image rows (C, H, W)"
    )
    hidden: list[Width] = Field(default=[64], description="dense: encoder widths before the code")
    channels: list[Width] = Field(default=[16, 32],
                                                        description="conv: channels per stride-2 stage")
    latent_dim: int = Field(default=16, gt=0, le=MAX_WIDTH, description="size of the code h")
    loss: AutoencoderLoss = Field(default="auto", description=LOSS_HELP)


class OvercompleteAutoencoderSpec(AutoencoderBackboneSpec):
    """Overcomplete autoencoder: a code wider than the input, kept from learning to copy x by dropout on the
    code units and weight decay."""

    kind: Literal["overcomplete_autoencoder"] = "overcomplete_autoencoder"
    hidden: list[Width] = Field(
        default=[], description="dense: encoder widths before the code, none narrower than the input"
    )
    latent_dim: int | None = Field(
        default=None, gt=0, description="code width, above the number of input features; default: twice that"
    )
    dropout: float = Field(default=0.5, ge=0, lt=1, description="probability of zeroing each code unit in training")
    weight_decay: float = Field(
        default=1e-2, ge=0, description="AdamW weight decay; the larger of this and train.weight_decay applies"
    )


class SparseAutoencoderSpec(AutoencoderBackboneSpec):
    """Sparse autoencoder: a sigmoid code with a penalty on its activity, loss = recon + weight * Omega(h)."""

    kind: Literal["sparse_autoencoder"] = "sparse_autoencoder"
    latent_dim: int = Field(default=32, gt=0, le=MAX_WIDTH, description="size of the code h")
    penalty: Literal["kl", "l1"] = Field(
        default="kl", description="kl: sum_j KL(rho || mean activation of unit j); l1: sum_j |h_j| per row"
    )
    rho: float = Field(default=0.05, gt=0, lt=1, description="kl: target mean activation of each code unit")
    beta: float = Field(default=1.0, ge=0, description="kl: weight of the KL sparsity penalty")
    l1_weight: float = Field(default=1e-3, ge=0, description="l1: weight of the L1 activity penalty")


class DenoisingAutoencoderSpec(AutoencoderBackboneSpec):
    """Denoising autoencoder: reconstructs the clean x from a corrupted copy, corrupted in training only."""

    kind: Literal["denoising_autoencoder"] = "denoising_autoencoder"
    noise: Literal["mask", "gaussian"] = Field(
        default="mask", description="mask: zero a random fraction of input units; gaussian: add N(0, noise_std^2)"
    )
    mask_fraction: float = Field(default=0.5, ge=0, lt=1, description="mask: share of input units zeroed")
    noise_std: float = Field(default=0.2, gt=0, description="gaussian: standard deviation of the added noise")


class VAESpec(AutoencoderBackboneSpec):
    """Variational autoencoder: Gaussian q(h|x), N(0, I) prior, trained on the negative ELBO."""

    kind: Literal["vae"] = "vae"
    decoder: Literal["bernoulli", "gaussian"] | None = Field(
        default=None, description="p(x|h); default: from loss (bce = bernoulli, mse = gaussian, auto: the data's)"
    )
    loss: AutoencoderLoss | None = Field(
        default=None, description="another name for the decoder: bce = bernoulli, mse = gaussian; auto or unset: "
                                  "bernoulli for binary inputs, gaussian otherwise")
    score: Literal["elbo", "reconstruction"] = Field(
        default="elbo", description="the model's own score: -ELBO, or the reconstruction NLL -log p(x|h) alone"
    )

    def likelihood(self, binary_features: bool) -> str:
        if self.decoder:
            return self.decoder
        return "gaussian" if resolve_loss(self.loss, binary_features) == "mse" else "bernoulli"

    @model_validator(mode="after")
    def _decoder_agrees_with_loss(self) -> VAESpec:
        if self.decoder and self.loss not in (None, "auto") and \
                self.decoder != ("gaussian" if self.loss == "mse" else "bernoulli"):
            raise ValueError(f"decoder {self.decoder} contradicts loss {self.loss} "
                             "(bce is the bernoulli NLL, mse the gaussian's); give one of them")
        return self


class UNetSpec(Spec):
    """UNet for binary segmentation: encoder-decoder with skip connections (needs images with masks)."""

    kind: Literal["unet"] = "unet"
    base_channels: Width = Field(default=16, description="channels at full resolution, doubled per level")
    depth: int = Field(default=3, ge=1, le=6, description="number of 2x downsamplings")


MOVED_TO_TRAIN = ("warmup_fraction", "lr_decay", "grad_accum_steps", "clip_grad_norm")


class BertSpec(Spec):
    """A BERT-style encoder (Devlin et al. 2019) and how it is optimised; small by default.
    bert-base is hidden 768, layers 12, heads 12, intermediate 3072."""

    hidden: int = Field(default=128, gt=0, le=MAX_WIDTH, description="model width (a multiple of heads)")
    layers: int = Field(default=2, gt=0, le=MAX_DEPTH, description="encoder layers")
    heads: int = Field(default=2, gt=0, le=MAX_DEPTH, description="attention heads per layer")
    intermediate: int = Field(default=512, gt=0, le=MAX_WIDTH, description="feed-forward width")
    dropout: float = Field(default=0.1, ge=0, lt=1)
    attention_dropout: float = Field(default=0.1, ge=0, lt=1)
    position: Literal["learned", "sinusoidal"] = Field(default="learned", description="position embeddings")

    @model_validator(mode="before")
    @classmethod
    def _optimisation_is_in_train(cls, data):
        moved = [k for k in MOVED_TO_TRAIN if isinstance(data, dict) and k in data]
        if moved:
            raise ValueError(f"{moved[0]} is a train field now (every family shares it): write "
                             f"train.{moved[0]} instead of model.{moved[0]}")
        return data

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> BertSpec:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class BertPretrainSpec(BertSpec):
    """Pretraining with masked-LM and next-sentence prediction on sentence pairs."""

    kind: Literal["bert_pretrain"] = "bert_pretrain"
    mask_rate: float = Field(default=0.15, gt=0, lt=1, description="share of tokens to predict (80/10/10)")


class DomainAdaptiveSpec(Spec):
    """Masked-LM on the fine-tuning set's own training texts before the classifier trains (task-adaptive
    pretraining, Gururangan et al. 2020, "Don't Stop Pretraining"); labels are not read."""

    epochs: int = Field(default=3, gt=0, description="passes of masked-LM over the training texts")
    lr: float = Field(default=5e-4, gt=0, description="peak learning rate (6% linear warmup, then linear decay)")
    batch_size: int = Field(default=64, gt=0, le=MAX_BATCH, description="texts per update")
    mask_rate: float = Field(default=0.15, gt=0, lt=1, description="share of tokens to predict (80/10/10)")


class BertClassifierSpec(BertSpec):
    """Sequence classification on [CLS], from a pretrained encoder (transfer) or from scratch."""

    kind: Literal["bert_classifier"] = "bert_classifier"
    pretrained: str | None = Field(
        default=None,
        description="NAME@ALIAS or NAME/VERSION of a registered bert_pretrain model, its exported folder, or "
                    "a local Hugging Face BERT folder (config.json, model.safetensors, vocab.txt); its encoder "
                    "sizes and tokenizer replace the ones here. null: random initialisation")
    classifier_dropout: float = Field(default=0.1, ge=0, lt=1)
    pooling: Literal["cls", "mean"] = Field(default="cls", description=(
        "the vector the classifier reads: cls, BERT's pooled [CLS] (tanh of a linear map of its last-layer "
        "state, trained by NSP); mean, the last layer averaged over the real tokens"))
    domain_adaptive: DomainAdaptiveSpec | None = Field(
        default=None, description="continue masked-LM pretraining on the training texts first; null: do not")
    layer_lr_decay: float = Field(default=1.0, gt=0, le=1, description=(
        "layer-wise learning-rate decay d: the pooler and classifier learn at train.lr, the top encoder layer "
        "at d times it, each layer below at d times the one above, the embeddings lowest; 1: one rate for all"))
    freeze_embeddings: bool = Field(default=False, description=(
        "keep the encoder's embeddings (token, position and segment tables, their LayerNorm) as pretraining "
        "left them: words the training texts lack keep their place beside the words they have"))
    class_weight: Literal["auto", "balanced", "none"] = Field(
        default="auto", description="balanced: weight each class's loss by rows / (classes * its rows); "
        "auto: balanced when the largest training class has over 1.5 times the rows of the smallest")

    @model_validator(mode="after")
    def _frozen_embeddings_need_pretraining(self):
        if self.freeze_embeddings and self.pretrained is None:
            raise ValueError("freeze_embeddings keeps pretrained embeddings, but model.pretrained is null: a random "
                             "table would stay random; set model.pretrained or leave freeze_embeddings false")
        return self


# --- GANs ---


class AdversarialSpec(Spec):
    """What every GAN variant shares: the losses, the two Adam optimizers and the failure rule."""

    loss: Literal["non_saturating", "minimax", "hinge"] = Field(
        default="non_saturating",
        description="the adversarial objective. non_saturating: D minimises BCE(D(x), 1) + BCE(D(G(z)), 0), "
                    "G minimises -log D(G(z)); minimax: G minimises log(1 - D(G(z))) instead; hinge: D "
                    "minimises E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))], G minimises -E[D(G(z))] on the "
                    "logits (SN-GAN, BigGAN)")
    lr_g: float = Field(default=2e-4, gt=0, description="generator Adam learning rate (train.lr is not used)")
    lr_d: float = Field(default=2e-4, gt=0, description="discriminator Adam learning rate")
    betas: tuple[float, float] = Field(default=(0.5, 0.999), description="Adam betas of both optimizers (DCGAN: 0.5)")
    d_steps: int = Field(default=1, ge=1, description="discriminator updates per generator update")
    collapse_d_loss: float = Field(
        default=1e-4, ge=0, description="D loss below this means D wins completely; 0 turns the check off")
    collapse_patience: int = Field(
        default=10, ge=1, description="consecutive steps below collapse_d_loss before training stops")


R1_GAMMA = ("R1 penalty (Mescheder et al. 2018; StyleGAN): D's loss adds r1_gamma / 2 * E||grad_x D(x)||^2 on real "
            "x, so D stays flat around the data and cannot sharpen its edge by memorising a small training set. "
            "Costs a second backward pass through D. lapgan: each level's D at its real band. 1 took the "
            "validation Frechet distance of the cGAN and DCGAN down on digits and MNIST-5k (benchmarks/README.md, "
            "GANs, eleventh session; lapgan: twelfth). Default: 0 (off) for gan, 1 for dcgan, cgan and lapgan")
R1_EVERY = ("R1 on every this many D updates only, weighted this many times (StyleGAN2's lazy regularisation): "
            "the same pull on D for a fraction of the cost. Default: 1 for gan, 4 for dcgan, cgan and lapgan")


class ImageGanSpec(AdversarialSpec):
    """What the noise-to-image GANs (gan, dcgan, cgan, lapgan) add: the stabilisers of D and G."""

    spectral_norm: bool = Field(default=False, description=(
        "D's conv and linear weights divided by their largest singular value (Miyato et al. 2018), batch norm "
        "dropped from D: D stays 1-Lipschitz per layer, so it cannot outrun G; pairs with loss hinge"))
    ema_decay: float = Field(default=0.0, ge=0, lt=1, description=(
        "an exponential moving average of G's weights, theta_ema <- beta theta_ema + (1 - beta) theta after "
        "every G update (beta = min(ema_decay, (1 + t) / (10 + t))), is what evaluation, `deepgen sample` and "
        "export use (Karras et al. 2018, BigGAN); 0: G's own weights"))
    diff_augment: list[Literal["color", "translation", "cutout"]] = Field(default=[], description=(
        "DiffAugment (Zhao et al. 2020): these random, differentiable transforms, in this order, of every batch D "
        "sees while training, real and generated alike, so that D cannot memorise a small training set; G is "
        "judged and sampled untransformed. color: brightness, saturation, contrast; translation: shifts of up "
        "to 1/8 of each side; cutout: a square of half each side blanked. Not for lapgan (its D sees Laplacian "
        "bands). []: off, the default: at the shipped pipelines' 800-2,650 updates it did not help on digits or "
        "MNIST-5k (benchmarks/README.md, GANs, tenth session); it is meant for long runs on small data"))
    r1_gamma: float = Field(default=0.0, ge=0, description=R1_GAMMA)
    r1_every: int = Field(default=1, ge=1, description=R1_EVERY)
    mode_seeking: float = Field(default=0.0, ge=0, description=(
        "mode seeking (MSGAN, Mao et al. 2019): G's loss adds this weight / (mean |G(z1) - G(z2)| / mean |z1 - "
        "z2|) over pairs of its batch (for cgan, pairs of one label), so G cannot draw one image per label "
        "whatever z is. Not for lapgan. 0: off"))
    watch_every: int = Field(default=5, ge=0, description=(
        "every this many epochs (and the last), the Frechet distance of the sampling G on the validation split "
        "(up to 500 images, in the judge's features) is logged as val_frechet_distance; the fixed-noise sample "
        "grid is logged every epoch. 0: neither"))


class GanSpec(ImageGanSpec):
    """Goodfellow et al. 2014: MLP generator and discriminator on flattened images."""

    kind: Literal["gan"] = "gan"
    nz: int = Field(default=100, gt=0, le=MAX_WIDTH, description="size of the noise z")
    hidden: list[Width] = Field(
        default=[256, 512], min_length=1, description="generator widths from z up; the discriminator's reversed")


CONV_LR = ("Adam learning rate, {who}. Default 5e-4 for dcgan and lapgan, 2e-4 (DCGAN's) for gan and cgan: with "
           "R1 holding D flat, 5e-4 lowered the validation Frechet distance of DCGAN (digits and MNIST-5k) and "
           "LAPGAN by a fifth to a third at the shipped update counts on every seed, and not the cGAN's "
           "(benchmarks/README.md, GANs, thirteenth session)")


def _conv_lr(default: float, who: str):
    return Field(default=default, gt=0, description=CONV_LR.format(who=who))


class ConvGanSpec(ImageGanSpec):
    """The measured defaults of the conv GANs (dcgan, cgan, lapgan): R1 on every 4th D update, and G and D at
    5e-4 (the cGAN at 2e-4)."""

    r1_gamma: float = Field(default=1.0, ge=0, description=R1_GAMMA)
    r1_every: int = Field(default=4, ge=1, description=R1_EVERY)
    lr_g: float = _conv_lr(5e-4, "generator (train.lr is not used)")
    lr_d: float = _conv_lr(5e-4, "discriminator")


class DCGANSpec(ConvGanSpec):
    """Radford et al. 2016: strided conv generator and discriminator; square images of side 8, 16, 32, 64..."""

    kind: Literal["dcgan"] = "dcgan"
    nz: int = Field(default=100, gt=0, le=MAX_WIDTH, description="size of the noise z")
    ngf: int = Field(default=64, gt=0, le=MAX_WIDTH, description="generator channels at its last hidden stage")
    ndf: int = Field(default=64, gt=0, le=MAX_WIDTH, description="discriminator channels at its first stage")


class CGANSpec(ConvGanSpec):
    """Mirza & Osindero 2014: G and D both see a label embedding; needs integer labels 0..num_classes-1."""

    kind: Literal["cgan"] = "cgan"
    lr_g: float = _conv_lr(2e-4, "generator (train.lr is not used)")
    lr_d: float = _conv_lr(2e-4, "discriminator")
    architecture: Literal["dcgan", "mlp"] = Field(default="dcgan", description="the conditioned networks")
    num_classes: int = Field(gt=1, description="labels are 0..num_classes-1")
    embed_dim: int = Field(default=16, gt=0, le=MAX_WIDTH, description="size of the label embedding")
    conditioning: Literal["concat", "projection", "acgan"] = Field(default="concat", description=(
        "how D sees the label (dcgan architecture). concat: the label embedding as constant maps beside the "
        "image; projection: D(x, y) = psi(phi(x)) + <e(y), phi(x)> (Miyato & Koyama 2018); acgan: D's "
        "adversarial logit sees no label and a class head on its features learns the labels of real images, "
        "while G also minimises that head's cross-entropy on G(z, y) (AC-GAN, Odena et al. 2017; weighted by "
        "aux_weight). G always takes the embedding appended to z"))
    aux_weight: float = Field(default=1.0, ge=0, description=(
        "conditioning acgan: weight of the class term -log C(y | x) in D's loss (real x) and G's (x = G(z, y))"))
    aux_generated: Literal["real_only", "label", "extra_class"] = Field(default="extra_class", description=(
        "conditioning acgan: what D's class head learns from G's samples G(z, y). extra_class: a (K+1)-th class "
        "'generated' (Salimans et al. 2016), so an image off the data cannot score as any label; label: their "
        "asked label y (Odena et al. 2017); real_only: nothing (it learns on real images only, and G learns to "
        "satisfy it with images that are not digits: benchmarks/README.md)"))
    nz: int = Field(default=100, gt=0, le=MAX_WIDTH)
    ngf: int = Field(default=64, gt=0, le=MAX_WIDTH, description="dcgan: generator channels")
    ndf: int = Field(default=64, gt=0, le=MAX_WIDTH, description="dcgan: discriminator channels")
    hidden: list[Width] = Field(default=[256, 512], min_length=1, description="mlp: widths")

    @model_validator(mode="after")
    def _mlp_concatenates(self):
        if self.architecture == "mlp" and self.conditioning != "concat":
            raise ValueError(f"conditioning {self.conditioning} needs architecture dcgan (the mlp concatenates)")
        return self


class LapGANSpec(ConvGanSpec):
    """Denton et al. 2015: a Laplacian pyramid of GANs; image sides divisible by 2^(levels-1)."""

    kind: Literal["lapgan"] = "lapgan"
    levels: int = Field(default=3, ge=2, le=6, description="pyramid levels, the coarsest generated from noise")
    nz: int = Field(default=100, gt=0, le=MAX_WIDTH, description="noise of the coarsest level")
    hidden: list[Width] = Field(default=[256, 512], min_length=1,
                                                      description="coarsest level's MLP widths")
    ngf: int = Field(default=64, gt=0, le=MAX_WIDTH, description="finer levels' generator channels")
    ndf: int = Field(default=64, gt=0, le=MAX_WIDTH, description="finer levels' discriminator channels")

    @model_validator(mode="after")
    def _no_diff_augment(self):
        for field, value, off in (("diff_augment", self.diff_augment, "[]"), ("mode_seeking", self.mode_seeking, "0")):
            if value:
                raise ValueError(f"{field} is not for lapgan: its discriminators see Laplacian bands and their "
                                 f"low-pass conditions, not images; leave it {off}")
        return self


class SRGANSpec(AdversarialSpec):
    """Ledig et al. 2017: x2 or x4 super-resolution of the dataset's images from their bicubic downsampling."""

    kind: Literal["srgan"] = "srgan"
    scale: Literal[2, 4] = Field(default=4, description="upscaling factor")
    channels: int = Field(default=64, gt=0, le=MAX_WIDTH, description="generator channels")
    num_blocks: int = Field(default=16, gt=0, le=MAX_DEPTH, description="generator residual blocks")
    ndf: int = Field(default=64, gt=0, le=MAX_WIDTH, description="discriminator channels at its first stage")
    feature_weight: float = Field(default=0.1, ge=0, description="weight of the feature (perceptual) content loss")
    adversarial_weight: float = Field(default=1e-3, ge=0, description="weight of G's adversarial loss")
    warmup_steps: int = Field(default=200, ge=0, description=(
        "steps of the MSE-only phase (SRResNet), in which the content network learns its features; "
        "D and the feature/adversarial losses start after it"))
    feature_width: Width = Field(default=32, description="width of the content network (FeatureClassifier)")
    lr_features: float = Field(default=1e-3, gt=0, description="content network's Adam learning rate")
    bicubic_skip: bool = Field(
        default=True, description="G adds a learned residual to bicubic upsampling (false: the paper's G alone)")


# --- attention on images ---


class ViTSpec(Spec):
    """A Vision Transformer (Dosovitskiy et al. 2021) over P x P patches; small by default (ViT-B/16 is
    hidden 768, layers 12, heads 12, mlp_ratio 4, patch 16 on 224 x 224)."""

    patch_size: int = Field(default=2, gt=0, le=MAX_WIDTH,
                            description="P: the image side (after data.resize) must be a multiple of it")
    hidden: int = Field(default=64, gt=0, le=MAX_WIDTH, description="model width (a multiple of heads)")
    layers: int = Field(default=4, gt=0, le=MAX_DEPTH, description="pre-norm encoder blocks")
    heads: int = Field(default=4, gt=0, le=MAX_DEPTH, description="attention heads per block")
    mlp_ratio: float = Field(default=2.0, gt=0, le=64, description="feed-forward width over model width")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="on embeddings and residual branches")
    attention_dropout: float = Field(default=0.0, ge=0, lt=1)
    pool: Literal["cls", "mean"] = Field(
        default="cls", description="the image's representation: a [CLS] token's final state, or the mean patch")
    position: Literal["learned", "sinusoidal"] = Field(
        default="learned", description="2-D patch positions: a learned table, or fixed sines per axis")

    @model_validator(mode="after")
    def _heads_divide_hidden(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class ViTClassifierSpec(ViTSpec):
    """Image classification with a ViT: a linear head on the pooled representation, cross-entropy; needs
    integer labels. Judged by accuracy and macro F1 on test."""

    kind: Literal["vit_classifier"] = "vit_classifier"
    classifier_dropout: float = Field(default=0.0, ge=0, lt=1, description="before the head")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="of the cross-entropy targets")
    augment_shift: int = Field(default=0, ge=0, le=64, description=(
        "training images moved by up to this many pixels in x and y (0: none); a ViT has no conv's built-in "
        "translation equivariance and learns it from data"))
    stem: Literal["patch", "conv"] = Field(default="patch", description=(
        "patch: each token a linear map of its P x P pixels; conv: two 3 x 3 convs (stride 1) first, the "
        "early convolutions of Xiao et al. 2021"))
    stem_channels: int = Field(default=32, gt=0, le=MAX_WIDTH, description="the conv stem's width")


class MAESpec(ViTSpec):
    """Masked autoencoder (He et al. 2021) as an anomaly detector: the ViT encoder sees the visible patches,
    a light decoder predicts the masked ones, the loss counts masked patches only; an image's score is its
    masked-patch error averaged over `eval_masks` fixed masks."""

    kind: Literal["mae"] = "mae"
    mask_ratio: float = Field(default=0.75, gt=0, lt=1, description="share of patches masked (MAE: 0.75)")
    decoder_hidden: int = Field(default=32, gt=0, le=MAX_WIDTH, description="the decoder's width")
    decoder_layers: int = Field(default=1, gt=0, le=MAX_DEPTH, description="the decoder's blocks")
    decoder_heads: int = Field(default=2, gt=0, le=MAX_DEPTH, description="the decoder's attention heads")
    norm_pix_loss: bool = Field(
        default=False, description="targets normalised by each patch's mean and std (MAE's option)")
    eval_masks: int = Field(default=8, gt=0, le=1024, description="K fixed masks an image's score averages over")
    eval_mask_ratio: float | None = Field(
        default=None, gt=0, lt=1, description="share of patches each scoring mask hides; null: mask_ratio")
    mask_seed: int = Field(default=0, ge=0, description="draws the K fixed masks (the same for every image)")

    @model_validator(mode="after")
    def _decoder_heads_divide_width(self):
        if self.decoder_hidden % self.decoder_heads:
            raise ValueError(f"decoder_hidden ({self.decoder_hidden}) must be a multiple of decoder_heads "
                             f"({self.decoder_heads})")
        return self


AUTOENCODER_KINDS = ("dense_autoencoder", "conv_autoencoder", "overcomplete_autoencoder", "sparse_autoencoder",
                     "denoising_autoencoder", "vae")
GAN_KINDS = ("gan", "dcgan", "cgan", "lapgan", "srgan")
DETECTOR_KINDS = registry.DETECTOR_KINDS  # anomaly detectors: normal/anomalous labels, thresholds

ModelSpec = Annotated[
    DenseAutoencoderSpec | ConvAutoencoderSpec | OvercompleteAutoencoderSpec | SparseAutoencoderSpec
    | DenoisingAutoencoderSpec | VAESpec | UNetSpec
    | BertPretrainSpec | BertClassifierSpec
    | GanSpec | DCGANSpec | CGANSpec | LapGANSpec | SRGANSpec
    | ViTClassifierSpec | MAESpec,
    Field(discriminator="kind"),
]


# --- training and scaling --------------------------------------------------------------------------


class TrainSpec(Spec):
    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=64, gt=0, le=MAX_BATCH, description="per worker")
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on GPU, fp32 on CPU"
    )
    seed: int = 0
    run_name: Name | None = Field(
        default=None, description="Ray Train run name; the same name resumes. Default: NAME-SPECHASH"
    )
    checkpoints_to_keep: int = Field(default=2, gt=0)
    max_failures: int = Field(
        default=0, ge=-1,
        description="worker-group restarts from the last checkpoint after a worker dies (-1: unlimited)",
    )
    cache_shards: bool = Field(
        default=True, description=("keep each worker's data shard in memory after the first epoch; false: each "
                                   "worker streams its share of the split's Parquet files every epoch (bounded "
                                   "memory; row-group order and a local buffer shuffled per epoch, read ahead)")
    )
    # How fast the step runs, not what it computes (deepgen.train.accel); left out of spec_hash.
    compile: Literal["off", "default", "max-autotune"] = Field(default="off", description=(
        "torch.compile each model once per worker: off, default, or max-autotune (inductor autotunes its "
        "kernels: a longer first epoch). YAML's bare off/on read as off/default"))
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field(default="inductor", description=(
        "torch.compile's backend: inductor generates the fast kernels; aot_eager and eager only trace the "
        "model (no speed-up: for debugging a compile failure, and for the CPU tests)"))

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        return {False: "off", True: "default"}.get(value, value) if isinstance(value, bool) else value
    # The optimisation every family gets from the one loop (deepgen.train.optim). A GAN's two players keep
    # their own peak rates (model.lr_g, model.lr_d) and follow the warmup and decay, by G's update count;
    # they take no accumulation or clipping.
    warmup_fraction: float = Field(default=0.0, ge=0, lt=1, description="share of updates with a linear warmup")
    lr_decay: Literal["constant", "linear", "cosine"] = Field(
        default="constant", description="the learning rate after the warmup: constant, or decayed to 0 at the end")
    clip_grad_norm: float | None = Field(default=None, gt=0, description="max gradient norm; null: no clipping")
    grad_accum_steps: int = Field(default=1, gt=0, description="batches per optimizer update")
    # Which epoch is kept, and when to stop. The monitored metric is a validation metric of the normal rows
    # only (anomalies in the validation split never choose a model).
    monitor: str | None = Field(default=None, description=(
        "validation metric that picks the epoch to evaluate and register and drives early stopping; default: "
        "the family's (val_loss; GANs: val_frechet_distance, measured every model.watch_every epochs; SRGAN: "
        "none, the last epoch)"))
    monitor_mode: Literal["min", "max"] = Field(default="min", description="min for losses, max for accuracies")
    keep: Literal["best", "last"] = Field(
        default="best", description="register the best epoch by `monitor`, or the last one")
    patience: int | None = Field(default=None, gt=0, description=(
        "early stopping: stop after this many epochs without a better `monitor` value; null: run every epoch"))


class ScalingSpec(Spec):
    num_workers: int = Field(default=2, gt=0, le=MAX_WORKERS, description="Ray Train workers")
    use_gpu: bool = Field(default=False, description="one GPU per worker")
    cpus_per_worker: float = Field(default=1.0, gt=0, le=MAX_DEPTH)


# --- anomaly detection -----------------------------------------------------------------------------


class FprThreshold(Spec):
    """Threshold at the (1 - target_fpr) quantile of validation scores of normal rows."""

    method: Literal["fpr"] = "fpr"
    target_fpr: float = Field(default=0.05, gt=0, lt=1)


class PercentileThreshold(Spec):
    """Threshold at a percentile of validation scores of normal rows."""

    method: Literal["percentile"] = "percentile"
    percentile: float = Field(default=95.0, gt=0, lt=100)


class F1Threshold(Spec):
    """Threshold that maximises F1 of `score > threshold` on the labelled validation split (normal and
    anomalous rows). A validation split without anomalies falls back to `fpr` at its default, with a warning."""

    method: Literal["f1"] = "f1"


class PotThreshold(Spec):
    """Peaks over threshold (Siffer et al. 2017, "SPOT"): a generalised Pareto distribution fitted to the
    validation scores of normal rows above an initial quantile t; the threshold is the score that a normal
    row exceeds with probability `risk`, extrapolated from that tail beyond the observed scores."""

    method: Literal["pot"] = "pot"
    risk: float = Field(default=1e-3, gt=0, lt=1,
                        description="q: probability that a normal score exceeds the threshold")
    initial_quantile: float = Field(default=0.9, gt=0, lt=1, description=(
        "quantile of normal scores giving t, above which excesses are fitted; SPOT uses 0.98 on long "
        "series, 0.9 keeps enough excesses on validation splits of a few hundred rows"))

    @model_validator(mode="after")
    def _risk_lies_beyond_initial_threshold(self) -> PotThreshold:
        if self.risk >= 1 - self.initial_quantile:
            raise ValueError("risk must be below 1 - initial_quantile: the threshold extrapolates beyond t")
        return self


ThresholdSpec = Annotated[FprThreshold | PercentileThreshold | F1Threshold | PotThreshold,
                          Field(discriminator="method")]


class AnomalySpec(Spec):
    normal_labels: list[int | str] | None = Field(
        default=None, description="labels of normal rows; the model trains on these only"
    )
    anomalous_labels: list[int | str] | None = Field(
        default=None, description="alternatively, labels of anomalous rows; every other label is normal"
    )
    threshold: ThresholdSpec = Field(default_factory=FprThreshold)
    score: Literal["auto", "reconstruction", "smoothed", "standardized", "latent", "combined"] = Field(
        default="auto", description=(
            "autoencoders: auto (what won benchmarks/anomaly.py: smoothed for images; for tables a VAE's "
            "-ELBO, combined for the other autoencoders), "
            "reconstruction (the model's own error, a VAE's -ELBO), smoothed (images: the "
            "squared residual after a Gaussian blur of side/28 px), standardized (per-feature "
            "errors over their normal-row scale), latent (Mahalanobis distance of the code to the normal "
            "codes) or combined (standardised log error + log latent distance); see deepgen/scoring.py"))

    input_range: Literal["auto", "normal", "prepared"] = Field(default="auto", description=(
        "what an autoencoder sees as [0, 1], per feature: normal: the normal training rows' min-max range (a "
        "value beyond every normal row's then cannot be rebuilt by the sigmoid decoder, and scores high); "
        "prepared: the prepared data's scale (images: pixel / 255 or the source's maximum; tables: min-max "
        "over every training row); auto: normal for tables, prepared for images (benchmarks/anomaly.py)"))

    @model_validator(mode="after")
    def _one_way_to_say_normal(self) -> AnomalySpec:
        if self.normal_labels is not None and self.anomalous_labels is not None:
            raise ValueError("give normal_labels or anomalous_labels, not both")
        return self


# --- tracking and registry -------------------------------------------------------------------------


class RegistrySpec(Spec):
    model_name: Name = Field(description="registered model name in MLflow")
    gate_metric: str = Field(default="roc_auc", description="test metric that decides the champion")
    greater_is_better: bool = True


class TrackingSpec(Spec):
    runs_dir: str = Field(
        default="deepgen-runs",
        description="local folder for the SQLite MLflow store, Ray run state and prepared data",
    )
    experiment: str | None = Field(default=None, description="MLflow experiment; default: the pipeline name")
    storage_path: str | None = Field(
        default=None, description="Ray Train storage (checkpoints); default RUNS_DIR/ray"
    )
    figures_every: int = Field(default=5, ge=0, description=(
        "every this many epochs (and the last), the pictures that show training progress are logged to the "
        "run with the epoch as their step: an image autoencoder's reconstructions of the same validation "
        "images (a GAN's sample grid follows model.watch_every). 0: none while training"))


# --- hyperparameter search (Ray Tune) --------------------------------------------------------------


class _Range(Spec):
    @model_validator(mode="after")
    def _low_below_high(self):
        if not self.low < self.high:
            raise ValueError(f"{self.type}: low ({self.low}) must be below high ({self.high})")
        return self


class Uniform(_Range):
    type: Literal["uniform"] = "uniform"
    low: float
    high: float


class LogUniform(_Range):
    type: Literal["loguniform"] = "loguniform"
    low: float = Field(gt=0)
    high: float = Field(gt=0)


class Choice(Spec):
    type: Literal["choice"] = "choice"
    values: list[Any] = Field(min_length=1)


class RandInt(_Range):
    type: Literal["randint"] = "randint"
    low: int
    high: int = Field(description="exclusive")


class Grid(Spec):
    """Every value is tried (times num_samples), as in `tune.grid_search`."""

    type: Literal["grid"] = "grid"
    values: list[Any] = Field(min_length=1)


Domain = Annotated[Uniform | LogUniform | Choice | RandInt | Grid, Field(discriminator="type")]


class AshaSpec(Spec):
    """Asynchronous successive halving: stop trials whose metric trails at each rung."""

    grace_period: int = Field(default=1, gt=0, description="epochs before a trial can be stopped")
    reduction_factor: float = Field(default=2, gt=1)


SEARCHABLE_SECTIONS = ("model", "train", "anomaly")


class TuneSpec(Spec):
    search_space: dict[str, Domain] = Field(
        min_length=1, description="dotted spec field -> domain, e.g. train.lr: {type: loguniform, ...}")
    num_samples: int = Field(default=4, gt=0, description="samples of the space (per grid point)")
    max_concurrent_trials: int = Field(default=2, gt=0, le=MAX_WORKERS)
    metric: str = Field(default="val_loss", description="a metric the family reports each epoch")
    mode: Literal["min", "max"] = "min"
    scheduler: AshaSpec | None = Field(default_factory=AshaSpec, description="null: every trial runs to the end")
    search_alg: Literal["random", "optuna"] = Field(
        default="random", description="optuna needs `pip install optuna`")
    seed: int = 0

    @field_validator("search_space")
    @classmethod
    def _searchable(cls, space: dict[str, Domain]) -> dict[str, Domain]:
        # every trial trains on the one dataset prepared before the sweep, with the sweep's resources
        for path in space:
            if path.split(".", 1)[0] not in SEARCHABLE_SECTIONS:
                raise ValueError(f"{path}: a sweep can search {', '.join(f'{s}.*' for s in SEARCHABLE_SECTIONS)} "
                                 "fields only (its trials share one prepared dataset); run one pipeline per "
                                 "data setting instead")
        return space

    @model_validator(mode="after")
    def _grid_needs_random_search(self) -> TuneSpec:
        grids = [path for path, domain in self.search_space.items() if isinstance(domain, Grid)]
        if grids and self.search_alg != "random":
            raise ValueError(f"search_space.{grids[0]}: a grid is searched by search_alg random only (Ray Tune's "
                             f"{self.search_alg} search takes no grid); use type: choice instead")
        return self


class PipelineSpec(Spec):
    name: Name = Field(description="the pipeline's name: of its runs, data folder and MLflow experiment")
    data: DataSpec
    model: ModelSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    anomaly: AnomalySpec = Field(default_factory=AnomalySpec)
    registry: RegistrySpec
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    tune: TuneSpec | None = Field(default=None, description="a Ray Tune sweep for `deepgen tune`")

    @model_validator(mode="after")
    def _model_fits_data(self) -> PipelineSpec:
        kind, source = self.model.kind, self.data.source.kind
        wants = registry.family(kind).sources
        if wants and source not in wants:
            raise ValueError(f"model.kind {kind} needs data.source.kind {' or '.join(wants)}, not {source}")
        if not wants and self.data.is_text:
            raise ValueError(f"data.source.kind {source} is text; model.kind {kind} reads images or tables "
                             "(text goes with bert_pretrain or bert_classifier)")
        labelled = self.anomaly.normal_labels is not None or self.anomaly.anomalous_labels is not None
        if labelled and kind not in DETECTOR_KINDS:
            raise ValueError(f"anomaly: normal/anomalous labels only apply to anomaly detectors, not {kind}")
        return self

    # -- derived paths and names -- #

    @property
    def runs_dir(self) -> Path:
        return absolute(self.tracking.runs_dir)

    @property
    def data_dir(self) -> Path:
        """`data.output`, else RUNS_DIR/data/NAME-HASH, HASH from the data section: variants of a pipeline
        with other data settings (`--set data.seed=1`) prepare into their own folders, so neither
        overwrites the splits (or tokenizer) that the other's runs and resumes read."""
        if self.data.output:
            return absolute(self.data.output)
        data = json.dumps(self.data.model_dump(mode="json", exclude={"output"}), sort_keys=True)
        return self.runs_dir / "data" / f"{self.name}-{hashlib.sha256(data.encode()).hexdigest()[:8]}"

    @property
    def storage_path(self) -> str:
        return self.tracking.storage_path or str(self.runs_dir / "ray")

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def with_absolute_paths(self) -> PipelineSpec:
        """The spec with every path absolute: Ray runs workers and trials in folders of their own, where a
        relative `deepgen-runs/` would name another (empty) folder. Names and hashes stay the same."""
        tracking = self.tracking.model_copy(update={"runs_dir": str(self.runs_dir), "storage_path": self.storage_path})
        data = self.data.with_absolute_paths().model_copy(update={"output": str(self.data_dir)})
        return self.model_copy(update={"data": data, "tracking": tracking}).with_run_name(self.run_name)

    def with_run_name(self, run_name: str | None) -> PipelineSpec:
        """The spec with `train.run_name` set: pinned (its own NAME-SPECHASH, a trial's or a schedule slot's
        name), or None for NAME-SPECHASH of whatever the spec becomes."""
        return self.model_copy(update={"train": self.train.model_copy(update={"run_name": run_name})})

    def spec_hash(self) -> str:
        """Hash of everything that shapes the trained model (not where it is stored or registered)."""
        relevant = self.model_dump(mode="json", include={"data", "model", "train", "anomaly"})
        for operational in ("run_name", "checkpoints_to_keep", "cache_shards", "max_failures", "compile",
                            "compile_backend"):
            relevant["train"].pop(operational, None)
        relevant["data"].pop("output", None)
        if relevant["data"].get("engine") == "auto":  # the default leaves hashes from before the field as they were
            relevant["data"].pop("engine")
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]

    def refuse_other_spec(self, what: str, spec_hash: str | None, error: type[Exception] = SpecError) -> None:
        """Refuse to resume or reuse the work of this run name done under another spec (`spec_hash`; None:
        recorded before deepgen recorded it): a changed model under the same explicit `train.run_name` would
        otherwise resume a checkpoint of the same shape or report the old version as this one."""
        if spec_hash and spec_hash != self.spec_hash():
            raise error(f"train.run_name {self.run_name}: {what} from spec {spec_hash}, this spec is "
                        f"{self.spec_hash()}; start a new run with --set train.run_name=NEW_NAME "
                        "(or leave run_name unset: NAME-SPECHASH)")

    @property
    def run_name(self) -> str:
        return self.train.run_name or f"{self.name}-{self.spec_hash()}"

    # -- loading -- #

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] = ()) -> PipelineSpec:
        """Read and validate a pipeline file; `overrides` are `dotted.field=value` strings."""
        path = Path(path)
        try:
            raw = load_yaml(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"{path}: no such pipeline file") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise SpecError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: expected a mapping of pipeline fields at the top level")
        for item in overrides:
            apply_override(raw, item, source=str(path))
        return cls.validate_dict(raw, source=str(path))

    @classmethod
    def validate_dict(cls, raw: dict[str, Any], source: str = "<spec>") -> PipelineSpec:
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise SpecError(f"{source}: {format_validation_error(e)}") from None


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: `*a` repeats the anchored node, so a few lines of nested aliases expand to
    billions of entries (the "billion laughs") before the spec is validated. Pipelines need none."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"aliases (*{event.anchor}) are not allowed",
                                              event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def apply_override(raw: dict[str, Any], item: str, source: str = "--set") -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as a YAML scalar (`3`, `true`, `[1, 2]`)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"{source}: --set {item!r}: expected dotted.field=value")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"{source}: --set {key}: {part} is not a section")
        node = child
    try:
        node[parts[-1]] = load_yaml(value)
    except yaml.YAMLError:
        raise SpecError(f"{source}: --set {key}: cannot parse value {value!r}") from None


def format_validation_error(e: ValidationError) -> str:
    """The first error as `field.path: message`; discriminator tags are dropped from the path."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    message = err["msg"].removeprefix("Value error, ")
    return f"{'.'.join(loc) or '<root>'}: {message}{more}"


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the chosen union member in the location: data.source.idx.path -> data.source.path
    return isinstance(part, str) and part in _UNION_TAGS


def _union_tags(*unions: Any) -> set[str]:
    members = [m for u in unions for m in get_args(get_args(u)[0])]
    return {m.model_fields[f].default for m in members for f in ("kind", "method", "type") if f in m.model_fields}


_UNION_TAGS = _union_tags(Source, ModelSpec, ThresholdSpec, Domain)
