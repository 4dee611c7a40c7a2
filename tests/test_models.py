import pytest
import torch

from resnext_deploy.models import ARCHS, Bottleneck, count_parameters, create_model, get_arch

PAPER_PARAMS = {
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
}


@pytest.mark.parametrize("name,expected", PAPER_PARAMS.items())
def test_imagenet_parameter_counts_match_torchvision(name, expected):
    assert count_parameters(create_model(name)) == expected


@pytest.mark.parametrize("name,millions", [("resnext29_8x64d", 34.4), ("resnext29_16x64d", 68.1)])
def test_cifar_parameter_counts_match_the_paper(name, millions):
    assert count_parameters(create_model(name)) / 1e6 == pytest.approx(millions, abs=0.1)


def test_grouped_convolution_is_the_aggregated_transformation():
    model = create_model("resnext50_32x4d")
    block = model.layer1[0]
    assert isinstance(block, Bottleneck)
    assert block.conv2.groups == 32
    assert block.conv2.in_channels == 128  # cardinality 32 x bottleneck width 4
    assert model.layer4[0].conv2.in_channels == 1024  # width doubles per stage
    assert model.layer2[0].conv2.stride == (2, 2)


def test_torchvision_state_dict_key_names():
    keys = set(create_model("resnext50_32x4d").state_dict())
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv2.weight",
        "layer1.0.downsample.0.weight",
        "layer4.2.bn3.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    } <= keys


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_architecture_runs_at_a_small_size(name):
    spec = get_arch(name)
    model = create_model(name, num_classes=7)
    size = 32 if spec.stem == "cifar" else 64
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 7)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(KeyError, match="resnext50_32x4d"):
        get_arch("resnet18")


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("num_classes", [None, 7])
def test_parameter_count_from_the_registry_is_the_built_models(name, num_classes):
    """`archs` counts from the configuration alone; the count must be the network's (built on the meta device)."""
    with torch.device("meta"):
        model = create_model(name, num_classes)
    assert get_arch(name).parameter_count(num_classes) == count_parameters(model)
