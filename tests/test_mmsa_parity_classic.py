"""Parity of TFN, LMF, EF-LSTM and MFN with MMSA's own classes (the test-only oracle ``mmsa==2.2.1``).

Each test builds MMSA's model through ``AMIO`` (the wrapper MMSA trains, including its ``AlignSubNet``) with the
hyper-parameters of a tiny configuration, randomises every MMSA weight and BatchNorm statistic, loads the same
state dict into ours with ``load_mmsa_state_dict`` (key map: strip ``Model.``), and compares eval-mode outputs on
one random batch fed in each side's input convention: MMSA gets what its data loader would give it (audio/vision
averaged over the padded time axis to (B, 1, D) where ``need_normalized`` is on), ours gets the raw batch.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("MMSA", reason="mmsa==2.2.1 (test-only oracle) not installed")
EasyDict = pytest.importorskip("easydict", reason="easydict (a dependency of mmsa) not installed").EasyDict

from MMSA.models.AMIO import AMIO

from robustmsa.datasets.split import DatasetSpec
from robustmsa.methods import Batch, create_method
from robustmsa.methods.classic_blocks import align_to_length, load_mmsa_state_dict, mmsa_key

B, DT, DA, DV = 6, 8, 5, 6

TINY = {
    "tfn": ({"hidden_dims": [12, 4, 6], "text_out": 5, "post_fusion_dim": 7, "dropouts": [0.3, 0.3, 0.3, 0.5]},
            {"hidden_dims": [12, 4, 6], "text_out": 5, "post_fusion_dim": 7, "dropouts": [0.3, 0.3, 0.3, 0.5]}),
    "lmf": ({"hidden_dims": [12, 4, 6], "rank": 3, "dropouts": [0.3, 0.3, 0.3, 0.3]},
            {"hidden_dims": [12, 4, 6], "rank": 3, "dropouts": [0.3, 0.3, 0.3, 0.3]}),
    "ef_lstm": ({"hidden_dims": 9, "num_layers": 2, "dropout": 0.5},
                {"hidden_dims": 9, "num_layers": 2, "dropout": 0.5}),
}
MFN_SIZES = {"hidden_dims": [10, 4, 6], "memsize": 7, "windowsize": 2,
             "NN1Config": {"drop": 0.2, "shapes": 8}, "NN2Config": {"drop": 0.1, "shapes": 9},
             "gamma1Config": {"drop": 0.7, "shapes": 11}, "gamma2Config": {"drop": 0.5, "shapes": 5},
             "outConfig": {"drop": 0.1, "shapes": 6}}
TINY["mfn"] = (MFN_SIZES, MFN_SIZES)
MMSA_NAMES = {"tfn": "tfn", "lmf": "lmf", "ef_lstm": "ef_lstm", "mfn": "mfn"}


def tiny_spec(lengths: tuple[int, int, int], aligned: bool) -> DatasetSpec:
    """A DatasetSpec for the tiny random batches."""
    lt, la, lv = lengths
    return DatasetSpec(name="tiny-aligned" if aligned else "tiny", label_family="mosi", label_range=(-3.0, 3.0),
                       dims={"text": DT, "audio": DA, "vision": DV}, seq_lens={"text": lt, "audio": la, "vision": lv},
                       aligned=aligned, fingerprint="test", source="test")


def random_batch(lengths: tuple[int, int, int], seed: int = 0) -> Batch:
    """Random features with end padding and varied valid lengths (one sample without audio)."""
    g = torch.Generator().manual_seed(seed)
    lt, la, lv = lengths

    def padded(length: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        valid = torch.randint(1, length + 1, (B,), generator=g)
        valid[0] = length
        x = torch.randn(B, length, dim, generator=g) * (torch.arange(length)[None, :] < valid[:, None])[..., None]
        return x, valid

    text, text_len = padded(lt, DT)
    audio, audio_len = padded(la, DA)
    vision, vision_len = padded(lv, DV)
    audio[1], audio_len[1] = 0.0, 0  # an absent modality
    mask = (torch.arange(lt)[None, :] < text_len[:, None]).long()
    return Batch(text=text, text_ids=mask * 1000, text_mask=mask, text_segments=torch.zeros_like(mask), audio=audio,
                 vision=vision, audio_lengths=audio_len, vision_lengths=vision_len, labels=torch.zeros(B),
                 index=torch.arange(B))


def mmsa_model(name: str, seq_lens: list[int], aligned: bool, **extra) -> torch.nn.Module:
    """MMSA's AMIO model for ``name`` with the tiny sizes and the given ``seq_lens`` (as MMSA's loader sets them)."""
    args = EasyDict({"model_name": MMSA_NAMES[name], "train_mode": "regression", "num_classes": 3,
                     "feature_dims": [DT, DA, DV], "seq_lens": list(seq_lens),
                     "need_model_aligned": aligned, **TINY[name][0], **extra})
    return AMIO(args)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and BatchNorm statistic random (variances positive), so parity is not vacuous."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            noise = torch.randn(value.shape, generator=g) * 0.5
            value.copy_(noise.abs() + 0.5 if key.endswith("running_var") else noise)


def ours(name: str, spec: DatasetSpec, **overrides) -> torch.nn.Module:
    """Our model with the tiny sizes."""
    return create_method(name, spec, text_backbone="features", **TINY[name][1], **overrides)


def padded_average(x: torch.Tensor) -> torch.Tensor:
    """MMSA's ``need_normalized``: mean over the padded time axis, NaN -> 0, kept as one frame (B, 1, D)."""
    mean = x.mean(dim=1, keepdim=True)
    return torch.nan_to_num(mean, nan=0.0)


def compare(reference: torch.nn.Module, model: torch.nn.Module, batch: Batch, inputs: tuple) -> None:
    """Load ``reference``'s weights into ``model`` and assert equal eval outputs."""
    randomise(reference, 1)
    load_mmsa_state_dict(model, reference.state_dict())
    reference.eval()
    model.eval()
    with torch.no_grad():
        expected = reference(*inputs)["M"].reshape(-1)
        got = model(batch).pred
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


UNALIGNED = (10, 23, 17)
ALIGNED = (10, 10, 10)


@pytest.mark.parametrize("name", ["tfn", "lmf"])
def test_tfn_lmf_match_mmsa(name, one_thread):
    batch = random_batch(UNALIGNED)
    reference = mmsa_model(name, list(UNALIGNED), aligned=False)
    model = ours(name, tiny_spec(UNALIGNED, aligned=False))
    compare(reference, model, batch, (batch.text, padded_average(batch.audio), padded_average(batch.vision)))


def test_ef_lstm_matches_mmsa_on_aligned_data(one_thread):
    batch = random_batch(ALIGNED)
    reference = mmsa_model("ef_lstm", list(ALIGNED), aligned=True)
    model = ours("ef_lstm", tiny_spec(ALIGNED, aligned=True), alignment="require")
    compare(reference, model, batch, (batch.text, batch.audio, batch.vision))


def test_ef_lstm_matches_mmsa_alignsubnet_of_the_pypi_release(one_thread):
    """mmsa 2.2.1's AlignSubNet averages frames ``L_t`` apart: ``avg_pool_strided`` reproduces it."""
    batch = random_batch(UNALIGNED)
    reference = mmsa_model("ef_lstm", list(UNALIGNED), aligned=True)
    model = ours("ef_lstm", tiny_spec(UNALIGNED, aligned=False), alignment="avg_pool_strided")
    compare(reference, model, batch, (batch.text, batch.audio, batch.vision))


def test_mfn_matches_mmsa_with_its_averaged_audio_vision(one_thread):
    """MMSA: need_normalized averages A/V to one frame, AlignSubNet repeats it at every text step."""
    batch = random_batch(UNALIGNED)
    reference = mmsa_model("mfn", [UNALIGNED[0], 1, 1], aligned=True)  # the loader's seq_lens after averaging
    model = ours("mfn", tiny_spec(UNALIGNED, aligned=False))
    assert model.config["av_input"] == "average"
    compare(reference, model, batch, (batch.text, padded_average(batch.audio), padded_average(batch.vision)))


def test_mfn_sequence_mode_matches_mmsa_on_aligned_sequences(one_thread):
    batch = random_batch(ALIGNED)
    reference = mmsa_model("mfn", list(ALIGNED), aligned=True)
    model = ours("mfn", tiny_spec(ALIGNED, aligned=True), av_input="sequence", alignment="require")
    compare(reference, model, batch, (batch.text, batch.audio, batch.vision))


@pytest.mark.parametrize("name", ["tfn", "lmf", "ef_lstm", "mfn"])
def test_same_seed_gives_mmsa_initial_weights(name):
    lengths = ALIGNED if name == "ef_lstm" else UNALIGNED
    torch.manual_seed(3)
    reference = mmsa_model(name, list(lengths), aligned=name in ("ef_lstm", "mfn"))
    torch.manual_seed(3)
    model = ours(name, tiny_spec(lengths, aligned=name == "ef_lstm"))
    expected = {mmsa_key(k): v for k, v in reference.state_dict().items()}
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], atol=0, rtol=0, msg=key)


def test_lmf_mmsa_optimiser_is_reproduced_and_misses_the_fusion_weights():
    """MMSA: Adam([parameters()[:3] at factor_lr, parameters()[5:] at lr]); positions 3-4 are in no group."""
    reference = mmsa_model("lmf", list(UNALIGNED), aligned=False).Model
    names = [n for n, _ in reference.named_parameters()]
    mmsa_groups = [names[:3], names[5:]]
    assert names[3:5] == ["fusion_weights", "fusion_bias"]
    spec = tiny_spec(UNALIGNED, aligned=False)
    for train_fusion, extra in ((False, []), (True, ["fusion_weights", "fusion_bias"])):
        model = ours("lmf", spec, train_fusion_weights=train_fusion, factor_lr=0.01, lr=0.02)
        by_id = {id(p): n for n, p in model.named_parameters()}
        (optimizer,), _ = model.configure_optimizers(1, 1)
        groups = [[by_id[id(p)] for p in group["params"]] for group in optimizer.param_groups]
        assert groups == [mmsa_groups[0] + extra, mmsa_groups[1]]
        assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.02]
        assert all(g["weight_decay"] == model.config["weight_decay"] for g in optimizer.param_groups)


def test_tfn_optimiser_skips_mmsa_constants_only():
    """MMSA's TFN trainer: Adam(parameters()[2:]) skips output_range / output_shift; ours are buffers."""
    reference = mmsa_model("tfn", list(UNALIGNED), aligned=False).Model
    names = [n for n, _ in reference.named_parameters()]
    assert names[:2] == ["output_range", "output_shift"]
    model = ours("tfn", tiny_spec(UNALIGNED, aligned=False))
    (optimizer,), _ = model.configure_optimizers(1, 1)
    trained = {n for n, p in model.named_parameters() if any(p is q for q in optimizer.param_groups[0]["params"])}
    assert trained == set(names[2:])
    assert optimizer.param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("length", [23, 17, 10, 4, 1])
def test_strided_alignment_is_mmsa_pypi_alignsubnet(length):
    from MMSA.models.subNets import AlignSubNet

    align = AlignSubNet(EasyDict({"feature_dims": [DT, DA, DV], "seq_lens": [10, length, length]}), "avg_pool")
    x = torch.randn(3, length, DA)
    expected = x if length == 10 else align(torch.randn(3, 10, DT), x, x.clone())[1]
    torch.testing.assert_close(align_to_length(x, 10, "avg_pool_strided"), expected)
