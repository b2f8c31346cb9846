"""MMIM against MMSA's own MMIM (the test-only oracle ``mmsa==2.2.1``, import name ``MMSA``).

MMSA's model is built at a tiny size (its ``args`` written here) with its ``BertTextEncoder`` pointed at a tiny
768-wide BERT directory written locally (no download); ours uses the same directory as ``hf:DIR``. MMSA's weights
(1-d parameters outside BERT perturbed, so that biases matter) are renamed by :func:`mmsa_to_ours` and loaded into
ours, and both run in eval mode on the same batch: predictions, the unimodal and fusion features, ``lld`` and
``nce`` are equal, unaligned and aligned (MMSA's ``need_data_aligned`` reads the text lengths for audio and vision;
our data layer gives aligned files those lengths). With labels, the entropy projections (``pn_dic``) and ``H``
from a one-batch memory are equal too (our ``entropy_jitter`` switched off: repair 4 in ``mmim.py``).
Also the MOSI-size parameter count. MMSA's ``config_regression.json`` sets ``bidirectional: true`` where the
reference's ``src/config.py`` (our YAML) leaves it off; both settings are checked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

MMSA = pytest.importorskip("MMSA", reason="mmsa==2.2.1 (test-only oracle) not installed")
pytest.importorskip("transformers", reason="MMSA's MMIM imports transformers (its BertTextEncoder)")
easydict = pytest.importorskip("easydict", reason="MMSA's models take EasyDict args (installed with mmsa)")

from robustmsa.datasets.registry import registered_spec
from robustmsa.datasets.split import DatasetSpec
from robustmsa.methods import create_method
from robustmsa.methods.base import Batch, resolve_config

EasyDict = easydict.EasyDict
LT, LA, LV = 9, 14, 11
#: tiny widths; d_aout and d_vout >= 8 so that the entropy projections (d // 4) have at least 2 dimensions
SIZES = {"d_ah": 6, "d_vh": 7, "d_aout": 8, "d_vout": 12, "d_prjh": 10, "n_layer": 1}
#: MMSA's module prefixes -> ours (everything else, the encoders and the fusion network, has the same names)
KEY_MAP = {"bertmodel.model.": "text_encoder.model.", "mi_tv.": "mi.tv.", "mi_ta.": "mi.ta.", "mi_va.": "mi.va.",
           "cpc_zt.": "cpc.text.", "cpc_zv.": "cpc.vision.", "cpc_za.": "cpc.audio."}


@pytest.fixture(autouse=True)
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT, 768 wide (MMSA's MMIM sets d_tout = feature_dims[0]), one layer."""
    from hf_fixtures import make_tiny_bert_dir

    return make_tiny_bert_dir(tmp_path_factory.mktemp("bert768"), hidden=768, layers=1, heads=12)


def spec_for(da: int = 3, dv: int = 5) -> DatasetSpec:
    return DatasetSpec(name="tiny", label_family="mosi", label_range=(-3.0, 3.0),
                       dims={"text": 768, "audio": da, "vision": dv}, seq_lens={"text": LT, "audio": LA, "vision": LV},
                       aligned=False, fingerprint="test:0", source="<test>")


def mmsa_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MMSA's MMIM state dict under our module names."""
    out = {}
    for key, value in state.items():
        prefix = next((p for p in KEY_MAP if key.startswith(p)), None)
        out[KEY_MAP[prefix] + key[len(prefix):] if prefix else key] = value
    return out


def mmsa_mmim(bert_dir: Path, dims=(768, 3, 5), **changes):
    from MMSA.models.singleTask.MMIM import MMIM

    args = {"use_bert": True, "use_finetune": True, "transformers": "bert", "pretrained": str(bert_dir),
            "train_mode": "regression", "num_classes": 1, "need_data_aligned": False, "feature_dims": list(dims),
            "add_va": False, "bidirectional": False, "dropout_a": 0.1, "dropout_v": 0.1, "dropout_prj": 0.1,
            "cpc_layers": 1, "mmilb_mid_activation": "ReLU", "mmilb_last_activation": "Tanh",
            "cpc_activation": "Tanh", **SIZES, **changes}
    return MMIM(EasyDict(args))


def perturb(model: torch.nn.Module, skip: str) -> None:
    """Random 1-d parameters (biases) outside ``skip``, so that they matter."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and not name.startswith(skip):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def make_batch(seed: int, labels, audio_lengths, vision_lengths, text_lengths) -> tuple[Batch, torch.Tensor]:
    """A batch and the same text as MMSA's ``text_bert`` (B, 3, L): ids, mask, segments."""
    g = torch.Generator().manual_seed(seed)
    t_len = torch.tensor(text_lengths)
    b = len(t_len)
    mask = (torch.arange(LT)[None] < t_len[:, None]).long()
    ids = torch.randint(110, 150, (b, LT), generator=g) * mask
    ids[:, 0] = 101
    ids[torch.arange(b), t_len - 1] = 102
    batch = Batch(text=torch.zeros(b, LT, 768), text_ids=ids, text_mask=mask, text_segments=torch.zeros_like(ids),
                  audio=torch.randn(b, LA, 3, generator=g), vision=torch.randn(b, LV, 5, generator=g),
                  audio_lengths=torch.tensor(audio_lengths), vision_lengths=torch.tensor(vision_lengths),
                  labels=torch.tensor(labels), index=torch.arange(b))
    return batch, torch.stack([ids, mask, torch.zeros_like(ids)], dim=1).float()


BATCHES = [
    {"seed": 1, "labels": [1.2, -0.4, 2.0, 0.0, -2.6, 0.8, -1.0], "audio_lengths": [14, 3, 1, 8, 14, 6, 2],
     "vision_lengths": [11, 11, 2, 5, 1, 9, 4], "text_lengths": [9, 5, 3, 7, 4, 9, 6]},
    {"seed": 2, "labels": [-0.2, 0.6, -1.8, 2.4, 1.0, -3.0, 0.4], "audio_lengths": [2, 14, 9, 1, 5, 14, 7],
     "vision_lengths": [3, 8, 11, 1, 6, 10, 11], "text_lengths": [4, 9, 6, 3, 8, 5, 9]},
]


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=atol)


def build_pair(bert_dir: Path, **changes):
    torch.manual_seed(0)
    ref = mmsa_mmim(bert_dir, **changes).eval()
    perturb(ref, skip="bertmodel")
    ours = create_method("mmim", spec_for(), text_backbone=f"hf:{bert_dir}", **SIZES, **changes).eval()
    ours.load_state_dict(mmsa_to_ours(ref.state_dict()), strict=True)
    return ref, ours


@pytest.mark.parametrize("changes", [{}, {"bidirectional": True, "add_va": True, "cpc_layers": 3}],
                         ids=["reference", "bidirectional-va-cpc3"])
def test_mmim_eval_outputs_equal_mmsa(bert_dir, changes):
    ref, ours = build_pair(bert_dir, **changes)
    batch, text_bert = make_batch(**BATCHES[0])
    with torch.no_grad():
        expected = ref(text_bert, (batch.audio, batch.audio_lengths), (batch.vision, batch.vision_lengths))
        out = ours(batch)
        enc = ours.encode(batch)
        parts = ours.compute(batch, enc=enc)
    assert out.pred.abs().max() > 1e-3
    close(out.pred, expected["M"].squeeze(-1))
    for key, modality in (("Feature_t", "text"), ("Feature_a", "audio"), ("Feature_v", "vision")):
        close(enc[modality], expected[key])
    close(parts.fusion, expected["Feature_f"])
    close(out.aux_losses["lld"], expected["lld"])
    close(out.aux_losses["nce"], expected["nce"])
    assert expected["H"] == 0.0 and float(out.aux_losses["H"]) == 0.0  # no labels in eval: no entropy term

    # aligned data: MMSA packs audio and vision with the text lengths (the [CLS]/[SEP]-inclusive mask sum); our
    # data layer gives aligned files exactly those A/V lengths, so the model needs no aligned switch
    ref.aligned = True
    aligned = dataclasses.replace(batch, audio_lengths=batch.text_lengths, vision_lengths=batch.text_lengths)
    with torch.no_grad():
        expected = ref(text_bert, (batch.audio, 0), (batch.vision, 0))
        close(ours(aligned).pred, expected["M"].squeeze(-1))


def test_mmim_entropy_projections_and_H_equal_mmsa(bert_dir):
    """With labels (MMSA's training forward, here without dropout): the per-sign projections and ``H`` over
    the current batch plus a one-batch memory. Our ``entropy_jitter`` is switched off (repair 4: a diagonal of
    ``jitter * mean variance + 1e-12``; 1e-12 remains); our covariance is float64, MMSA's float32."""
    ref, ours = build_pair(bert_dir, add_va=True, entropy_jitter=0.0)
    (b1, t1), (b2, t2) = (make_batch(**spec) for spec in BATCHES)
    pairs = ("tv", "ta", "va")
    with torch.no_grad():
        r1 = ref(t1, (b1.audio, b1.audio_lengths), (b1.vision, b1.vision_lengths), y=b1.labels.view(-1, 1),
                 mem={p: None for p in pairs})
        p1 = ours.compute(b1, labels=b1.labels)
        for p in pairs:
            for sign in ("pos", "neg"):
                close(p1.projections[p][sign == "neg"], r1["pn_dic"][p][sign])
        assert float(p1.H) == 0.0 and r1["H"] == 0.0  # empty memory
        ours.entropy_memory.push(p1.projections)
        mem = {p: {s: [r1["pn_dic"][p][s]] for s in ("pos", "neg")} for p in pairs}
        r2 = ref(t2, (b2.audio, b2.audio_lengths), (b2.vision, b2.vision_lengths), y=b2.labels.view(-1, 1), mem=mem)
        p2 = ours.compute(b2, labels=b2.labels)
    assert torch.isfinite(r2["H"]) and r2["H"].abs() > 1e-2
    close(p2.H, r2["H"], atol=1e-4)
    close(p2.lld, r2["lld"])
    close(p2.nce, r2["nce"])
    close(p2.pred, r2["M"].squeeze(-1))


def test_mmim_mosi_parameter_count_equals_mmsa(bert_dir):
    """At MOSI's size (audio 5, vision 20) and our YAML's widths: MMSA's parameters outside BERT."""
    config = resolve_config("mmim", registered_spec("mosi"))
    keys = ("d_ah", "d_vh", "d_aout", "d_vout", "d_prjh", "n_layer", "bidirectional", "add_va", "cpc_layers")
    ref = mmsa_mmim(bert_dir, dims=(768, 5, 20), **{k: config[k] for k in keys})
    with torch.device("meta"):
        ours = create_method("mmim", registered_spec("mosi"))
    count = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("bertmodel"))
    assert ours.count_parameters() == count == 277_257
