"""Parity of TFR-Net with MMSA's own ``TFR_NET`` (the test-only oracle ``mmsa==2.2.1``).

MMSA's model always builds ``BertTextEncoder(use_finetune=...)``, whose default ``pretrained`` is
``bert-base-uncased`` (a download): the test points that name at a local tiny BERT (hidden 768, one layer; MMSA's
text generator is sized by ``feature_dims[0] = 768``) by patching the name the model module imported. Both models
get the same (randomised) weights; ours runs with MMSA's settings (``masking: none``, ``reconstruction_encoder:
mmsa``) and the ``hf:DIR`` backbone. Compared in eval mode on one batch with missing tokens and frames: the
predictions and the weighted reconstruction loss (atol 1e-5).
"""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("MMSA", reason="mmsa==2.2.1 (test-only oracle) not installed")
pytest.importorskip("transformers", reason="transformers (MMSA's BERT encoder) not installed")
EasyDict = pytest.importorskip("easydict", reason="easydict (a dependency of mmsa) not installed").EasyDict

import importlib

mmsa_tfr = importlib.import_module("MMSA.models.missingTask.TFR_NET.model")  # the package re-exports a class
from MMSA.models.subNets.BertTextEncoder import BertTextEncoder

from robustmsa.datasets.split import CLS_ID, SEP_ID, UNK_ID, DatasetSpec
from robustmsa.methods import Batch, create_method
from robustmsa.methods.tfr_net import from_mmsa_state_dict

B, LT, LA, LV, DA, DV = 5, 10, 12, 8, 5, 6
D, HEADS = 6, 2
SIZES = {"t": 7, "a": 4, "v": 5}


def mmsa_args() -> EasyDict:
    return EasyDict({
        "device": torch.device("cpu"), "alignmentModule": "crossmodal_attn", "generatorModule": "linear",
        "fusionModule": "c_gate", "recloss_type": "combine", "without_generator": False, "use_bert_finetune": True,
        "seq_lens": [LT, LA, LV], "feature_dims": [768, DA, DV], "dst_feature_dim_nheads": [D, HEADS],
        "nlevels": 2, "attn_dropout": 0.2, "attn_dropout_a": 0.1, "attn_dropout_v": 0.3, "relu_dropout": 0.2,
        "embed_dropout": 0.2, "res_dropout": 0.2, "text_dropout": 0.2, "attn_mask": True,
        "conv1d_kernel_size_l": 1, "conv1d_kernel_size_a": 5, "conv1d_kernel_size_v": 3, "num_temporal_head": 2,
        "fusion_t_hid": SIZES["t"], "fusion_a_hid": SIZES["a"], "fusion_v_hid": SIZES["v"], "fusion_gru_layers": 2,
        "fusion_drop": 0.2, "cls_hidden_dim": 9, "cls_dropout": 0.1, "weight_gen_loss": [5, 2, 20],
        "weight_sim_loss": 5,
    })


OURS = {"masking": "none", "reconstruction_encoder": "mmsa", "num_temporal_head": 2, "d_model": D, "heads": HEADS,
        "nlevels": 2, "attn_dropout_v": 0.3, "fusion_t_hid": SIZES["t"], "fusion_a_hid": SIZES["a"],
        "fusion_v_hid": SIZES["v"], "fusion_gru_layers": 2, "cls_hidden_dim": 9, "cls_dropout": 0.1}


def inputs(seed: int = 0):
    """Clean and missing versions of one batch, in MMSA's convention and as our Batch."""
    g = torch.Generator().manual_seed(seed)
    t_len = torch.tensor([LT, 2, 6, 9, 4])
    a_len = torch.tensor([LA, 1, 7, 12, 3])
    v_len = torch.tensor([LV, 8, 2, 5, 1])
    pos_t, pos_a, pos_v = (torch.arange(n)[None, :] for n in (LT, LA, LV))
    mask = (pos_t < t_len[:, None]).long()
    ids = torch.randint(104, 150, (B, LT), generator=g) * mask
    ids[:, 0] = CLS_ID
    ids[torch.arange(B), t_len - 1] = SEP_ID
    audio = torch.randn(B, LA, DA, generator=g) * (pos_a < a_len[:, None])[..., None]
    vision = torch.randn(B, LV, DV, generator=g) * (pos_v < v_len[:, None])[..., None]
    words = (mask > 0) & (pos_t > 0) & (pos_t < t_len[:, None] - 1)
    drop = {"text": words & (torch.rand(B, LT, generator=g) < 0.4),
            "audio": (pos_a < a_len[:, None]) & (torch.rand(B, LA, generator=g) < 0.4),
            "vision": (pos_v < v_len[:, None]) & (torch.rand(B, LV, generator=g) < 0.4)}
    ids_m = torch.where(drop["text"], torch.full_like(ids, UNK_ID), ids)
    audio_m = audio * (~drop["audio"])[..., None]
    vision_m = vision * (~drop["vision"])[..., None]
    segments = torch.zeros_like(ids)
    text = torch.stack([ids, mask, segments], dim=1).float()
    text_m = torch.stack([ids_m, mask, segments], dim=1).float()
    a_mask, v_mask = (pos_a < a_len[:, None]).float(), (pos_v < v_len[:, None]).float()
    mmsa = ((text, text_m, mask.float() - drop["text"].float()),
            (audio, audio_m, a_mask, a_mask - drop["audio"].float()),
            (vision, vision_m, v_mask, v_mask - drop["vision"].float()))
    ours = Batch(text=torch.zeros(B, LT, 768), text_ids=ids_m, text_mask=mask, text_segments=segments,
                 audio=audio_m, vision=vision_m, audio_lengths=a_len, vision_lengths=v_len,
                 labels=torch.zeros(B), index=torch.arange(B),
                 extra={"tfr_target_text": torch.zeros(B, LT, 768), "tfr_target_text_ids": ids,
                        "tfr_target_audio": audio, "tfr_target_vision": vision,
                        **{f"tfr_missing_{m}": drop[m] for m in drop}})
    return mmsa, ours


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from hf_fixtures import make_tiny_bert_dir

    return make_tiny_bert_dir(tmp_path_factory.mktemp("bert768"), hidden=768, layers=1, heads=12)


def test_tfr_net_matches_mmsa(bert_dir, monkeypatch):
    monkeypatch.setattr(mmsa_tfr, "BertTextEncoder", functools.partial(BertTextEncoder, pretrained=str(bert_dir)))
    torch.manual_seed(0)
    reference = mmsa_tfr.TFR_NET(mmsa_args())
    with torch.no_grad():  # randomise everything, BatchNorm statistics included
        for name, value in reference.state_dict().items():
            if "text_model" in name or not value.is_floating_point():
                continue
            if "running_var" in name:
                value.uniform_(0.5, 1.5)
            else:
                value.normal_(0, 0.3)
    spec = DatasetSpec(name="tiny", label_family="mosi", label_range=(-3.0, 3.0),
                       dims={"text": 768, "audio": DA, "vision": DV}, seq_lens={"text": LT, "audio": LA, "vision": LV},
                       aligned=False, fingerprint="test", source="test")
    ours = create_method("tfr_net", spec, text_backbone=f"hf:{bert_dir}", **OURS)
    mapped = from_mmsa_state_dict(reference.state_dict())
    missing, unexpected = ours.load_state_dict(mapped, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    reference.eval()
    ours.eval()
    mmsa_in, batch = inputs()
    with torch.no_grad():
        pred, gen_loss = reference(*mmsa_in)
        out = ours(batch)
    assert pred.std() > 1e-3 and gen_loss.item() > 1e-3  # not a vacuous comparison
    torch.testing.assert_close(out.pred, pred.squeeze(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.aux_losses["reconstruction"], gen_loss.reshape(()), atol=1e-5, rtol=1e-5)
