"""LF-DNN against the test-only oracle ``mmsa==2.2.1``: same weights, equal eval outputs."""

from __future__ import annotations

import pytest
import torch

MMSA = pytest.importorskip("MMSA", reason="mmsa==2.2.1 (test-only oracle) not installed")

from conftest import tiny_synth_dataset  # noqa: E402
from robustmsa.engine.batches import SplitTensors  # noqa: E402
from robustmsa.methods import create_method  # noqa: E402


def test_lf_dnn_equals_mmsa_with_the_same_weights():
    from easydict import EasyDict
    from MMSA.models.singleTask.LF_DNN import LF_DNN

    data = tiny_synth_dataset()
    spec = data.spec
    config = {"hidden_dims": [16, 8, 12], "text_out": 24, "post_fusion_dim": 20, "dropouts": [0.2, 0.2, 0.2, 0.2]}
    torch.manual_seed(0)
    ours = create_method("lf_dnn", spec, **config).eval()
    args = EasyDict(feature_dims=[spec.dims["text"], spec.dims["audio"], spec.dims["vision"]],
                    hidden_dims=config["hidden_dims"], text_out=config["text_out"],
                    post_fusion_dim=config["post_fusion_dim"], dropouts=config["dropouts"], train_mode="regression")
    oracle = LF_DNN(args).eval()
    with torch.no_grad():  # random weights and BatchNorm statistics, so the comparison is not trivially zero
        for name, tensor in ours.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * 0.3)
    oracle.load_state_dict(ours.state_dict(), strict=True)  # same module names: the key map is the identity
    batch = SplitTensors.from_split(data.test).batch(torch.arange(16))
    with torch.no_grad():
        mine = ours(batch).pred
        # MMSA's loader averages audio and vision over the padded time axis (need_normalized) before the model
        theirs = oracle(batch.text, batch.audio.mean(1, keepdim=True), batch.vision.mean(1, keepdim=True))["M"]
    assert mine.abs().max() > 1e-3
    torch.testing.assert_close(mine, theirs.reshape(-1), atol=1e-5, rtol=1e-5)
