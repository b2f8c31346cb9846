"""Equality with MMSA's own MULT, MISA and SELF_MM (the test-only oracle ``mmsa==2.2.1``, import name ``MMSA``).

For each model: MMSA's model is built at a tiny size (its ``args`` written here), its weights (1-d parameters
perturbed, so that biases and norms matter) are renamed by our documented key map and loaded into ours, and both
run in eval mode on the same batch. MISA and Self-MM need BERT: MMSA's ``BertTextEncoder`` is pointed at a tiny
768-wide BERT directory written locally (no download), and ours uses the same directory as ``hf:DIR``. Also: the
MOSI-size parameter counts, MISA's losses against MMSA's loss modules, Self-MM's label generation against MMSA's
trainer, and our per-dataset YAML sections against MMSA's ``config_regression.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

MMSA = pytest.importorskip("MMSA", reason="mmsa==2.2.1 (test-only oracle) not installed")
pytest.importorskip("transformers", reason="MMSA's models import transformers")
easydict = pytest.importorskip("easydict", reason="MMSA's trainers take EasyDict args (installed with mmsa)")

from robustmsa.datasets.registry import registered_spec
from robustmsa.datasets.split import DatasetSpec
from robustmsa.methods import create_method
from robustmsa.methods.base import Batch, resolve_config

EasyDict = easydict.EasyDict
LT, LA, LV = 9, 14, 11


@pytest.fixture(autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT, 768 wide (MMSA's MISA hard-codes 768), one layer."""
    from hf_fixtures import make_tiny_bert_dir

    return make_tiny_bert_dir(tmp_path_factory.mktemp("bert768"), hidden=768, layers=1, heads=12)


def spec_for(dt: int, da: int = 3, dv: int = 5) -> DatasetSpec:
    return DatasetSpec(name="tiny", label_family="mosi", label_range=(-3.0, 3.0),
                       dims={"text": dt, "audio": da, "vision": dv}, seq_lens={"text": LT, "audio": LA, "vision": LV},
                       aligned=False, fingerprint="test:0", source="<test>")


def perturb(model: torch.nn.Module, skip: str = "") -> None:
    """Random 1-d parameters (biases, norms) outside ``skip``, so that they matter."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and not (skip and name.startswith(skip)):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def make_batch(dt: int, audio_lengths, vision_lengths, text_lengths=(9, 5, 3, 7, 4)) -> tuple[Batch, torch.Tensor]:
    """A batch and the same text as MMSA's ``text_bert`` (B, 3, L): ids, mask, segments."""
    g = torch.Generator().manual_seed(1)
    t_len = torch.tensor(text_lengths)
    b = len(t_len)
    mask = (torch.arange(LT)[None] < t_len[:, None]).long()
    ids = torch.randint(110, 150, (b, LT), generator=g) * mask
    ids[:, 0] = 101
    ids[torch.arange(b), t_len - 1] = 102
    batch = Batch(text=torch.randn(b, LT, dt, generator=g), text_ids=ids, text_mask=mask,
                  text_segments=torch.zeros_like(ids), audio=torch.randn(b, LA, 3, generator=g),
                  vision=torch.randn(b, LV, 5, generator=g), audio_lengths=torch.tensor(audio_lengths),
                  vision_lengths=torch.tensor(vision_lengths), labels=torch.zeros(b), index=torch.arange(b))
    return batch, torch.stack([ids, mask, torch.zeros_like(ids)], dim=1).float()


def non_bert_count(model: torch.nn.Module, bert_prefix: str) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(bert_prefix))


# ------------------------------------------------------------------ MulT
MULT_ARGS = {"attn_dropout": 0.1, "attn_dropout_a": 0.2, "attn_dropout_v": 0.0, "relu_dropout": 0.1,
             "embed_dropout": 0.2, "res_dropout": 0.1, "output_dropout": 0.3, "text_dropout": 0.2, "attn_mask": True,
             "conv1d_kernel_size_l": 3, "conv1d_kernel_size_a": 1, "conv1d_kernel_size_v": 3, "nlevels": 2}


def mmsa_mult(dims, d: int, heads: int, **changes):
    from MMSA.models.singleTask.MULT import MULT

    args = EasyDict(use_bert=False, dst_feature_dim_nheads=[d, heads], feature_dims=list(dims),
                    train_mode="regression", **{**MULT_ARGS, **changes})
    return MULT(args)


@pytest.mark.parametrize("attn_mask", [True, False])
def test_mult_equals_mmsa(attn_mask):
    from robustmsa.methods.mult import from_mmsa_state_dict

    torch.manual_seed(0)
    ref = mmsa_mult((12, 3, 5), 8, 2, attn_mask=attn_mask).eval()
    perturb(ref)
    ours = create_method("mult", spec_for(12), pooling="last_padded", d_model=8, heads=2, attn_mask=attn_mask,
                         **{k: v for k, v in MULT_ARGS.items() if k != "attn_mask"}).eval()
    mapped = from_mmsa_state_dict(ref.state_dict())
    assert all(key.endswith(".version") for key in mapped.skipped)
    ours.load_state_dict(mapped, strict=True)
    batch, _ = make_batch(12, [14] * 5, [11] * 5)
    with torch.no_grad():
        expected = ref(batch.text, batch.audio, batch.vision)["M"].squeeze(-1)
        torch.testing.assert_close(ours(batch).pred, expected, atol=1e-5, rtol=1e-5)


def test_mult_mosi_parameter_count_equals_mmsa():
    config = resolve_config("mult", registered_spec("mosi"))
    ref = mmsa_mult((768, 5, 20), config["d_model"], config["heads"], nlevels=config["nlevels"],
                    conv1d_kernel_size_l=5, conv1d_kernel_size_a=5, conv1d_kernel_size_v=5)
    with torch.device("meta"):
        ours = create_method("mult", registered_spec("mosi"))
    assert ours.count_parameters() == sum(p.numel() for p in ref.parameters()) == 2_571_551


# ------------------------------------------------------------------ MISA
MISA_ARGS = {"dropout": 0.2, "rnncell": "lstm", "hidden_size": 16, "use_cmd_sim": True, "reverse_grad_weight": 0.8}


def mmsa_misa(bert_dir: Path, dims=(768, 3, 5), **changes):
    from MMSA.models.singleTask.MISA import MISA

    args = EasyDict(use_bert=True, use_finetune=True, transformers="bert", pretrained=str(bert_dir),
                    feature_dims=list(dims), train_mode="regression", **{**MISA_ARGS, **changes})
    return MISA(args)


def test_misa_equals_mmsa_with_text_length_packing(bert_dir):
    from MMSA.trains.singleTask.MISA import CMD, MSE, DiffLoss

    from robustmsa.methods.misa import from_mmsa_state_dict

    torch.manual_seed(0)
    ref = mmsa_misa(bert_dir).eval()
    perturb(ref, skip="bertmodel")
    ours = create_method("misa", spec_for(768), text_backbone=f"hf:{bert_dir}", pack_with_text_length=True,
                         hidden_size=16, dropout=0.2).eval()
    mapped = from_mmsa_state_dict(ref.state_dict())
    assert sorted({k.split(".")[0] for k in mapped.skipped}) == ["sp_discriminator", "tlayer_norm"]
    ours.load_state_dict(mapped, strict=True)
    # audio / vision lengths differ from the text lengths: MMSA ignores them (it packs with the text length)
    batch, text_bert = make_batch(768, [14, 3, 1, 8, 14], [11, 11, 2, 5, 1])
    with torch.no_grad():
        expected = ref(text_bert, batch.audio, batch.vision)["M"].squeeze(-1)
        encoded = {m: ours.encode_modality(batch, m) for m in ("text", "vision", "audio")}
        codes = ours.represent(encoded)
        torch.testing.assert_close(ours(batch).pred, expected, atol=1e-5, rtol=1e-5)
        m = ref.Model if hasattr(ref, "Model") else ref
        for ours_key, ref_attr in (("private", "utt_private"), ("shared", "utt_shared"), ("orig", "utt_{}_orig")):
            for modality, short in (("text", "t"), ("vision", "v"), ("audio", "a")):
                name = ref_attr.format(short) if "{}" in ref_attr else f"{ref_attr}_{short}"
                torch.testing.assert_close(codes[ours_key][modality], getattr(m, name), atol=1e-5, rtol=1e-5)
        # the losses, as MMSA's trainer computes them from the model's stored codes
        diff, cmd, mse = DiffLoss(), CMD(), MSE()
        p = {s: getattr(m, f"utt_private_{s}") for s in "tva"}
        s = {k: getattr(m, f"utt_shared_{k}") for k in "tva"}
        ref_diff = (diff(p["t"], s["t"]) + diff(p["v"], s["v"]) + diff(p["a"], s["a"]) + diff(p["a"], p["t"])
                    + diff(p["a"], p["v"]) + diff(p["t"], p["v"]))
        ref_cmd = (cmd(s["t"], s["v"], 5) + cmd(s["t"], s["a"], 5) + cmd(s["a"], s["v"], 5)) / 3.0
        ref_recon = (mse(m.utt_t_recon, m.utt_t_orig) + mse(m.utt_v_recon, m.utt_v_orig)
                     + mse(m.utt_a_recon, m.utt_a_orig)) / 3.0
        aux = ours.auxiliary_losses(codes)
    torch.testing.assert_close(aux["diff"], ref_diff, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux["cmd"], ref_cmd, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux["recon"], ref_recon, atol=1e-5, rtol=1e-5)
    # with their own lengths (our default) the same weights give different predictions here
    own = create_method("misa", spec_for(768), text_backbone=f"hf:{bert_dir}", hidden_size=16).eval()
    own.load_state_dict(mapped, strict=True)
    with torch.no_grad():
        assert (own(batch).pred - expected).abs().max() > 1e-6


def test_misa_mosi_parameter_count_is_mmsa_minus_its_unused_modules(bert_dir):
    config = resolve_config("misa", registered_spec("mosi"))
    ref = mmsa_misa(bert_dir, dims=(768, 5, 20), hidden_size=config["hidden_size"], dropout=config["dropout"])
    with torch.device("meta"):
        ours = create_method("misa", registered_spec("mosi"))
    unused = sum(p.numel() for p in ref.sp_discriminator.parameters()) + sum(
        p.numel() for p in ref.tlayer_norm.parameters())
    assert unused == 516 + 3_072
    assert ours.count_parameters() == non_bert_count(ref, "bertmodel") - unused == 1_134_445


# ------------------------------------------------------------------ Self-MM
SELF_MM_ARGS = {"a_lstm_hidden_size": 6, "v_lstm_hidden_size": 7, "a_lstm_layers": 1, "v_lstm_layers": 1,
                "audio_out": 4, "video_out": 5, "a_lstm_dropout": 0.0, "v_lstm_dropout": 0.0, "post_fusion_dim": 8,
                "post_text_dim": 6, "post_audio_dim": 5, "post_video_dim": 4, "post_fusion_dropout": 0.1,
                "post_text_dropout": 0.1, "post_audio_dropout": 0.1, "post_video_dropout": 0.0, "H": 3.0}


def mmsa_self_mm(bert_dir: Path, dims=(768, 3, 5), **changes):
    from MMSA.models.multiTask.SELF_MM import SELF_MM

    args = EasyDict(need_data_aligned=False, use_finetune=True, transformers="bert", pretrained=str(bert_dir),
                    feature_dims=list(dims), text_out=768, **{**SELF_MM_ARGS, **changes})
    return SELF_MM(args)


def test_self_mm_equals_mmsa(bert_dir):
    from robustmsa.methods.self_mm import from_mmsa_state_dict

    torch.manual_seed(0)
    ref = mmsa_self_mm(bert_dir).eval()
    perturb(ref, skip="text_model")
    ours = create_method("self_mm", spec_for(768), text_backbone=f"hf:{bert_dir}", **SELF_MM_ARGS).eval()
    mapped = from_mmsa_state_dict(ref.state_dict())
    assert not mapped.skipped
    ours.load_state_dict(mapped, strict=True)
    batch, text_bert = make_batch(768, [14, 3, 1, 8, 14], [11, 11, 2, 5, 1])
    with torch.no_grad():
        expected = ref(text_bert, (batch.audio, batch.audio_lengths), (batch.vision, batch.vision_lengths))
        parts = ours.heads({m: ours.encode_modality(batch, m) for m in ("text", "audio", "vision")})
        torch.testing.assert_close(ours(batch).pred, expected["M"].squeeze(-1), atol=1e-5, rtol=1e-5)
    for key, task in (("M", "fusion"), ("T", "text"), ("A", "audio"), ("V", "vision")):
        torch.testing.assert_close(parts.preds[task], expected[key].squeeze(-1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(parts.features[task], expected[f"Feature_{key.lower() if key != 'M' else 'f'}"],
                                   atol=1e-5, rtol=1e-5)


def test_self_mm_mosi_parameter_count_equals_mmsa(bert_dir):
    config = resolve_config("self_mm", registered_spec("mosi"))
    keys = [k for k in SELF_MM_ARGS if k in config]
    ref = mmsa_self_mm(bert_dir, dims=(768, 5, 20), **{k: config[k] for k in keys})
    with torch.device("meta"):
        ours = create_method("self_mm", registered_spec("mosi"))
    assert ours.count_parameters() == non_bert_count(ref, "text_model") == 159_332


def test_self_mm_label_generation_equals_mmsa_trainer():
    """Our UnimodalLabels against MMSA's trainer methods (init, features, centres, label updates, loss weights)
    over three epochs of random features; from epoch 2 on (when labels change) the states are equal."""
    from MMSA.trains.multiTask.SELF_MM import SELF_MM as Trainer

    from robustmsa.methods.self_mm import TASKS, UnimodalLabels

    n, dims = 12, {"fusion": 6, "text": 3, "audio": 2, "vision": 4}
    args = EasyDict(train_mode="regression", dataset_name="mosi", train_samples=n, post_fusion_dim=6,
                    post_text_dim=3, post_audio_dim=2, post_video_dim=4, device="cpu", excludeZero=True, H=3.0)
    trainer = Trainer(args)
    ours = UnimodalLabels(dims, bound=3.0, exclude_zero=True)
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([-2.0, -1.2, -0.4, 0.0, 0.4, 1.0, 1.6, 2.4, -3.0, 0.8, -0.6, 2.0])
    trainer.init_labels(torch.arange(n), labels)
    names = {"fusion": "fusion", "text": "text", "audio": "audio", "vision": "vision"}
    for epoch in (1, 2, 3):
        order = torch.randperm(n, generator=g)
        for index in order.split(4):
            ours.observe(index, labels[index])
            features = {m: torch.randn(len(index), dims[m], generator=g) for m in TASKS}
            if epoch > 1:  # MMSA's trainer: weights of the unimodal losses from the current labels
                for m in TASKS[1:]:
                    y_hat = torch.randn(len(index), generator=g)
                    ref_loss = trainer.weighted_loss(y_hat, trainer.label_map[m][index], indexes=index, mode=m)
                    y_m, y_f = ours.lookup(m, index, labels[index]), ours.lookup("fusion", index, labels[index])
                    ours_loss = (torch.tanh((y_m - y_f).abs()) * (y_hat - y_m).abs()).mean()
                    torch.testing.assert_close(ours_loss, ref_loss)
                trainer.update_labels(features["fusion"], features["text"], features["audio"], features["vision"],
                                      epoch, index, None)
                ours.update_labels(features, index, epoch)
            trainer.update_features(features["fusion"], features["text"], features["audio"], features["vision"],
                                    index)
            ours.update_features(features, index)
            trainer.update_centers()
            ours.update_centres()
            if epoch > 1:
                for m in TASKS:
                    torch.testing.assert_close(ours.labels[m], trainer.label_map[names[m]], atol=1e-6, rtol=1e-6)
        for m in TASKS:  # after each epoch every sample has been seen: the centres agree
            for sign in ("pos", "neg"):
                torch.testing.assert_close(ours.centres[m][sign], trainer.center_map[m][sign], atol=1e-6, rtol=1e-6)
    assert any((ours.labels[m] - labels).abs().max() > 0.1 for m in TASKS[1:])


# ------------------------------------------------------------------ configurations
RENAMED = {"dst_feature_dim_nheads": None, "learning_rate": "lr", "patience": "plateau_patience",
           "grad_clip": "grad_clip_value", "excludeZero": "exclude_zero", "learning_rate_bert": "lr_bert",
           "learning_rate_audio": "lr_audio", "learning_rate_video": "lr_video", "learning_rate_other": "lr_other"}
NOT_KEYS = {"mult": {"weight_decay", "transformers", "pretrained", "need_data_aligned", "need_model_aligned",
                     "use_bert", "use_bert_finetune"},
            "misa": {"weight_decay", "transformers", "pretrained", "need_data_aligned", "need_model_aligned",
                     "use_bert", "use_finetune", "reverse_grad_weight", "sp_weight", "use_cmd_sim"},
            "self_mm": {"transformers", "pretrained", "need_data_aligned", "need_model_aligned", "need_normalized",
                        "use_bert", "use_finetune", "save_labels", "text_out", "t_bert_dropout"}}


@pytest.mark.parametrize("name", ["mult", "misa", "self_mm"])
@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims"])
def test_yaml_sections_equal_mmsa_config_regression(name, dataset):
    path = Path(MMSA.__file__).parent / "config" / "config_regression.json"
    mmsa = json.loads(path.read_text())[name]
    expected = {**mmsa["commonParams"], **mmsa["datasetParams"][dataset]}
    ours = resolve_config(name, registered_spec(dataset))
    for key, value in expected.items():
        if key in NOT_KEYS[name]:
            continue
        if key == "dst_feature_dim_nheads":
            assert [ours["d_model"], ours["heads"]] == value
            continue
        if key == "rnncell":
            assert ours["rnncell"] == value
            continue
        if key == "use_cmd_sim":
            continue
        assert ours[RENAMED.get(key) or key] == value, key
