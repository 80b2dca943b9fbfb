import copy
import json
from pathlib import Path

import pytest
import torch

from nodule_bundle.network.losses import MultiTaskNoduleLoss
from nodule_bundle.network.networks import OUT_CHANNELS, RATINGS, MultiTaskNoduleNet, NoduleEncoder
from nodule_bundle.core.nodule import RATING_COLUMNS

METADATA = json.loads((Path(__file__).parents[2] / "configs" / "metadata.json").read_text())


def test_one_output_tensor_with_the_documented_channels():
    out_format = METADATA["network_data_format"]["outputs"]["pred"]
    in_format = METADATA["network_data_format"]["inputs"]["image"]
    net = MultiTaskNoduleNet().eval()
    out = net(torch.rand(3, in_format["num_channels"], *in_format["spatial_shape"]))
    assert out.shape == (3, OUT_CHANNELS) == (3, out_format["num_channels"])
    assert len(out_format["channel_def"]) == OUT_CHANNELS


def _targets(rows, ratings=None):
    """Loss targets from ``[malignancy, band, diameter, is-nodule]`` rows, the ratings unknown unless given."""
    nan = float("nan")
    return torch.tensor([[*row, *(ratings[i] if ratings and i in ratings else [nan] * len(RATING_COLUMNS))] for i, row in enumerate(rows)])


def test_loss_leaves_unknown_labels_out():
    nan = float("nan")
    ratings = {0: [2.0, 1.0, 6.0, 4.0, 4.5, 1.5, 3.0], 2: [nan, 1.0, nan, nan, nan, nan, 5.0]}
    target = _targets([[1, 2, 9.0, 1], [-1, 0, 4.0, 1], [0, -1, nan, -1], [-1, -1, nan, -1], [-1, -1, nan, 0]], ratings)
    pred = torch.randn(5, OUT_CHANNELS, requires_grad=True)
    MultiTaskNoduleLoss()(pred, target).backward()
    grad = pred.grad
    assert torch.all(grad[1, 0:2] == 0) and torch.all(grad[3, :] == 0)  # no malignancy label, nothing at all
    assert torch.all(grad[2, 2:9] == 0) and torch.any(grad[0, 0:2] != 0) and torch.any(grad[1, 6] != 0)
    assert torch.all(grad[4, 0:7] == 0) and torch.any(grad[4, 7:9] != 0)  # a vessel candidate: only the nodule head
    assert torch.all(grad[0, RATINGS] != 0) and torch.all(grad[1, RATINGS] == 0)  # rated / not rated
    assert [bool(g != 0) for g in grad[2, RATINGS]] == [False, True, False, False, False, False, True]  # two of seven rated
    assert MultiTaskNoduleLoss()(pred, target[3:4]).item() == 0.0
    with pytest.raises(ValueError, match="target must be"):
        MultiTaskNoduleLoss()(pred, target[:, :4])


def test_rating_heads_answer_only_once_trained_on_ratings():
    from types import SimpleNamespace

    from nodule_bundle.evaluation.handlers import RatedNodulesCounter

    net = MultiTaskNoduleNet(channels=(4, 8), hidden=8).eval()
    x = torch.rand(2, 1, 12, 12, 12)
    with torch.no_grad():
        assert torch.isnan(net(x)[:, RATINGS]).all() and torch.isfinite(net(x)[:, :RATINGS.start]).all()  # never trained on ratings
        counter, engine = RatedNodulesCounter(net), SimpleNamespace(state=SimpleNamespace())
        engine.state.output = {"label": _targets([[1, 2, 9.0, 1]] * 3, {1: [2.0] * len(RATING_COLUMNS)})}  # the trainer's batch
        counter._count(engine)
        assert net.rated_nodules_seen.item() == 1 and torch.isfinite(net(x)).all()
        engine.state.output = [{"label": row} for row in _targets([[1, 2, 9.0, 1]] * 3, {0: [2.0] * 7, 2: [3.0] * 7})]  # decollated
        counter._count(engine)
        assert net.rated_nodules_seen.item() == 3
        assert "rated_nodules_seen" in net.state_dict()  # saved with the weights


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    net, loss_fn = MultiTaskNoduleNet(channels=(8, 16), hidden=32), MultiTaskNoduleLoss()
    x = torch.rand(8, 1, 16, 16, 16)
    x[4:, :, 5:11, 5:11, 5:11] += 1.0  # a "nodule" in half of the batch
    target = _targets([[0, 0, 4.0, 0]] * 4 + [[1, 2, 12.0, 1]] * 4, {i: [1.0 + i / 2] * len(RATING_COLUMNS) for i in range(8)})
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_flip_averaging_is_the_mean_over_the_eight_flips():
    from nodule_bundle.network.inferers import FlipAveragingInferer

    torch.manual_seed(0)
    net = MultiTaskNoduleNet(channels=(4, 8), hidden=8).eval()
    net.rated_nodules_seen.fill_(1)  # rating heads that answer
    x = torch.rand(2, 1, 12, 12, 12)
    with torch.no_grad():
        out = FlipAveragingInferer()(x, net)
        flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
        expected = torch.stack([net(x.flip(d) if d else x) for d in flips]).mean(0)
        assert out.shape == (2, OUT_CHANNELS) and torch.allclose(out, expected, atol=1e-6)
        symmetric = torch.ones(1, 1, 12, 12, 12)
        assert torch.allclose(FlipAveragingInferer()(symmetric, net), net(symmetric), atol=1e-5)


@pytest.mark.parametrize("backbone", ["resnet", "densenet", "vit"])
def test_each_backbone_override_sits_behind_the_same_heads(backbone):
    from monai.bundle import ConfigParser

    from bundle_run import ROOT

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / f"backbone_{backbone}.json")])
    net = parser.get_parsed_content("network_def").eval()
    net.rated_nodules_seen.fill_(1)
    with torch.no_grad():
        out = net(torch.rand(2, 1, 40, 40, 40))
    assert out.shape == (2, OUT_CHANNELS) and torch.isfinite(out).all()
    assert type(net.encoder).__module__.startswith(("monai.networks.nets", "nodule_bundle.network.networks"))
    assert not isinstance(net.encoder, NoduleEncoder)


def test_compiling_is_off_unless_asked_and_refuses_text_for_a_flag():
    """``compile`` is False by default (the network itself); a text such as MONAI's command line makes
    of ``--compile false`` is refused instead of counting as true. Compiled inference: test_bundle."""
    from nodule_bundle.network.networks import compiled

    net = MultiTaskNoduleNet()
    assert compiled(net, False) is net
    with pytest.raises(ValueError, match="compile must be True or False, got 'false'"):
        compiled(net, "false")


def test_folding_batch_norm_keeps_the_outputs_and_leaves_no_norm_after_a_convolution():
    """fold_batch_norm on trained-looking statistics: the same outputs as the batch-normed network in
    eval mode, in channels_last_3d too; no batch norm left in the encoder; refused in training mode."""
    from nodule_bundle.network.networks import fold_batch_norm

    torch.manual_seed(0)
    net = MultiTaskNoduleNet(channels=(4, 8), hidden=8)
    net.rated_nodules_seen.fill_(1)
    for norm in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)):
        for values, (low, high) in zip((norm.running_mean, norm.running_var, norm.weight.data, norm.bias.data), ((-1, 1), (0.2, 3), (0.5, 2), (-1, 1))):
            values.uniform_(low, high)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(net)
    net.eval()
    x = torch.randn(3, 1, 16, 16, 16)
    with torch.no_grad():
        expected = net(x)
        folded = fold_batch_norm(copy.deepcopy(net).to(memory_format=torch.channels_last_3d))
        got = folded(x)
        dropped = copy.deepcopy(net)  # the norms removed, not folded: the statistics matter here
        for block in dropped.encoder.features:
            if hasattr(block, "adn"):
                block.adn.N = torch.nn.Identity()
        without_norms = dropped(x)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert folded.encoder.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(got, expected, atol=1e-4) and not torch.allclose(without_norms, expected, atol=1e-2)
