"""The LightningModule: what its checkpoints hold, with and without torch.compile."""

from __future__ import annotations

import torch

from models.net_module import NetModule


def test_checkpoint_state_holds_each_weight_once_under_net() -> None:
    module = NetModule("ghost", num_classes=5)
    keys = list(module.state_dict())
    assert keys and all(key.startswith("net.") for key in keys)
    assert len(keys) == len(module.net.state_dict())


def test_compiled_module_saves_the_same_keys_and_loads_into_an_uncompiled_one() -> None:
    compiled = NetModule("ghost", num_classes=5, compile=True)  # compilation itself waits for the first forward
    plain = NetModule("ghost", num_classes=5)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(compiled.state_dict())
    images = torch.rand(2, 3, 32, 32)
    plain.eval()
    compiled.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(images), compiled.net(images))
