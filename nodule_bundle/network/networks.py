"""Multi-task 3D CNN for nodule patches: one shared encoder, five heads, one output tensor.

Output ``[B, 16]`` (documented in ``configs/metadata.json``):

====== ==========================================================
0, 1   malignancy logits (benign, malignant)
2..5   Lung-RADS size band logits (<6, 6-<8, 8-<15, >=15 mm)
6      diameter in mm (regression)
7, 8   nodule logits (not a nodule, nodule): false-positive reduction
9..15  the readers' semantic ratings (regression on LIDC's scales, in
       :data:`~nodule_bundle.core.nodule.RATING_COLUMNS` order: subtlety, internal
       structure, calcification, sphericity, margin, lobulation, spiculation)
====== ==========================================================

A single tensor keeps ``verify_net_in_out``, TorchScript and ONNX export working; the post-transform
:class:`nodule_bundle.network.targets.NoduleHeadsd` gives the channels their names. The encoder is the
small :class:`NoduleEncoder` by default, or any backbone that maps a patch to a feature vector
(``configs/backbone_*.json``: MONAI's ResNet, DenseNet, ViT).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nodule_bundle.core.errors import require_yes_no
from nodule_bundle.core.nodule import RATING_COLUMNS

MALIGNANCY = slice(0, 2)
SIZE_BAND = slice(2, 6)
DIAMETER = slice(6, 7)
NODULE = slice(7, 9)
RATINGS = slice(9, 9 + len(RATING_COLUMNS))
OUT_CHANNELS = RATINGS.stop

#: Diameter head scale: the layer predicts (d - 10 mm) / 10 mm, so its initial outputs are plausible.
DIAMETER_OFFSET_MM, DIAMETER_SCALE_MM = 10.0, 10.0
#: Rating heads' offset: the layer predicts the rating minus 3, the middle of LIDC's scales.
RATING_OFFSET = 3.0


RELU = ("relu", {"inplace": True})  # on the output of the norm (and dropout) before it, which nothing else reads


class NoduleEncoder(nn.Module):
    """Classic 3D CNN encoder: per stage two 3x3x3 conv-BN-ReLU (MONAI ``Convolution``) then max-pool.

    The first stage uses a stride-2 convolution (cheap on CPU); global average pooling ends it.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64, 128), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, ch in enumerate(channels):
            layers += [
                Convolution(3, prev, ch, strides=2 if i == 0 else 1, kernel_size=3, norm="batch", act=RELU),
                Convolution(3, ch, ch, kernel_size=3, norm="batch", act=RELU, dropout=dropout),
            ]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool3d(2))
            prev = ch
        layers += [nn.AdaptiveAvgPool3d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.out_features = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class FirstOutput(nn.Module):
    """The first element of a module's tuple output (MONAI's ``ViT`` returns ``(x, hidden_states)``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)[0]


class Compiled(nn.Module):
    """``torch.compile(module)`` behind a forward that hands it plain tensors: TorchDynamo cannot
    trace MONAI's ``MetaTensor``. Parameters are ``module``'s own, so checkpoints of ``module`` are
    unchanged. Compiling costs tens of seconds per new input shape; it pays on a GPU, not on a CPU."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = torch.compile(module)

    def forward(self, x: torch.Tensor):
        return self.module(x.as_subclass(torch.Tensor))


def compiled(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` in :class:`Compiled` when ``enabled`` (the configs' ``compile`` option), else itself."""
    return Compiled(module) if require_yes_no(enabled, "compile") else module


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` (in eval mode) with each batch norm that directly follows a convolution in a MONAI
    ``Convolution`` block (the default encoder's) folded into that convolution's weights and bias
    (torch's ``fuse_conv_bn_eval``), in place; returned. The same outputs, up to float rounding.
    On CPU a batch norm is slow in ``channels_last_3d``, and max pooling in channels-first: folded and
    in ``channels_last_3d`` (inference.json), the default network runs 20 nodules' 8 flips in about
    0.25 s on 2 cores, against 0.40 s as trained. For inference only: the folded module has no batch
    norms left to train or to load a checkpoint into, so load the weights first, or fold a copy."""
    if module.training:
        raise ValueError("fold_batch_norm folds running statistics: call it on a module in eval mode")
    for block in list(module.modules()):
        adn = getattr(block, "adn", None) if isinstance(block, Convolution) else None
        norm = next(iter(adn.children()), None) if adn is not None else None  # ADN's first step follows the convolution
        if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            block.conv, adn.N = fuse_conv_bn_eval(block.conv, norm, transpose=block.is_transposed), nn.Identity()
    return module


class MultiTaskNoduleNet(nn.Module):
    """Shared encoder + fully connected heads for malignancy, size band, diameter, nodule-vs-not and
    the readers' semantic ratings (auxiliary targets: what radiologists see beyond size).

    Args:
        in_channels: input channels (1 for CT, 2 with the optional edge-map channel).
        channels: encoder widths per stage (the default :class:`NoduleEncoder`).
        hidden: width of the shared fully connected layer.
        dropout: dropout before the heads.
        frozen_encoder: fine-tuning at a site: the encoder's weights get no gradient and its batch-norm
            statistics stay those of the shipped model (the encoder stays in eval mode).
        backbone: another encoder, ``[B, C, X, Y, Z] -> [B, backbone_features]``, instead of the default.
        backbone_features: the width of ``backbone``'s output.
    """

    def __init__(
        self, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64, 128), hidden: int = 128, dropout: float = 0.2,
        frozen_encoder: bool = False, backbone: nn.Module | None = None, backbone_features: int | None = None,
    ):  # fmt: skip
        super().__init__()
        if (backbone is None) != (backbone_features is None):
            raise ValueError("a backbone needs its backbone_features (the width of its output), and only then")
        self.encoder = backbone if backbone is not None else NoduleEncoder(in_channels, channels)
        features = backbone_features if backbone_features is not None else self.encoder.out_features
        self.frozen_encoder = frozen_encoder
        self.diameter_scale_mm, self.diameter_offset_mm = DIAMETER_SCALE_MM, DIAMETER_OFFSET_MM  # attributes for TorchScript
        self.rating_offset = RATING_OFFSET
        #: rated nodules training has shown the rating heads (:class:`~nodule_bundle.evaluation.handlers.RatedNodulesCounter`),
        #: saved with the weights; while none, the heads answer NaN in eval mode: they have learned nothing
        self.register_buffer("rated_nodules_seen", torch.zeros(()))
        self.encoder.requires_grad_(not frozen_encoder)
        self.shared = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.malignancy = nn.Linear(hidden, MALIGNANCY.stop - MALIGNANCY.start)
        self.size_band = nn.Linear(hidden, SIZE_BAND.stop - SIZE_BAND.start)
        self.diameter = nn.Linear(hidden, 1)
        self.nodule = nn.Linear(hidden, NODULE.stop - NODULE.start)
        self.ratings = nn.Linear(hidden, RATINGS.stop - RATINGS.start)

    def train(self, mode: bool = True) -> "MultiTaskNoduleNet":
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.shared(self.encoder(x))
        diameter = self.diameter(h) * self.diameter_scale_mm + self.diameter_offset_mm
        ratings = self.ratings(h) + self.rating_offset
        if not self.training:
            ratings = torch.where(self.rated_nodules_seen > 0, ratings, torch.full_like(ratings, float("nan")))
        return torch.cat([self.malignancy(h), self.size_band(h), diameter, self.nodule(h), ratings], dim=1)

