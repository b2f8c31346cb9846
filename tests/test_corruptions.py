"""Contract tests for every registered corruption, plus per-corruption semantics."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from conftest import make_split
from robustmsa.corruptions import (Compose, RandomMissing, create_corruption, get_corruption, list_corruptions)
from robustmsa.datasets.split import CLS_ID, SEP_ID, UNK_ID, Split

ALL = list_corruptions()


def build(name: str, severity: float, **kwargs):
    cls = get_corruption(name)
    if cls.single_modality and "modalities" not in kwargs:
        kwargs["modalities"] = "audio"
    return cls(severity, **kwargs)


def arrays(split: Split) -> dict[str, np.ndarray]:
    out = {key: np.array(getattr(split, key), copy=True) for key in Split.array_keys()}
    out.update({f"extra:{k}": np.array(v, copy=True) for k, v in split.extras.items()})
    return out


def test_registry_lists_the_required_corruptions():
    required = {"random_missing", "word_drop", "word_shuffle", "frame_drop", "blur", "gaussian_noise",
                "modality_missing", "temporal_missing", "misalign"}
    assert required <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_severity_zero_is_identity_bit_for_bit(name, split):
    out = build(name, 0.0)(split, seed=3)
    for key, value in arrays(split).items():
        got = out.extras[key[6:]] if key.startswith("extra:") else getattr(out, key)
        assert got.dtype == value.dtype
        assert got.tobytes() == value.tobytes(), key
    assert out.corruptions[-1]["severity"] == 0.0
    assert all(v["rate"] == 0.0 for v in out.corruptions[-1]["realised"].values())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("severity", [0.3, 1.0])
def test_contract_shapes_dtypes_padding_special_tokens_no_mutation(name, severity, big_split):
    before = arrays(big_split)
    out = build(name, severity)(big_split, seed=11)
    after = arrays(big_split)
    for key in before:  # the input is untouched
        assert before[key].tobytes() == after[key].tobytes(), key
    for key in ("text", "text_bert", "audio", "vision", "audio_lengths", "vision_lengths"):
        assert getattr(out, key).shape == getattr(big_split, key).shape
        assert getattr(out, key).dtype == getattr(big_split, key).dtype
    # attention mask, segments, labels, ids untouched; [CLS]/[SEP] kept
    np.testing.assert_array_equal(out.text_bert[:, 1:], big_split.text_bert[:, 1:])
    np.testing.assert_array_equal(out.regression_labels, big_split.regression_labels)
    rows = np.arange(len(big_split))
    assert np.all(out.text_bert[:, 0, 0] == CLS_ID)
    assert np.all(out.text_bert[rows, 0, big_split.text_lengths - 1] == SEP_ID)
    # padding untouched in every modality
    for modality in ("text", "audio", "vision"):
        pad = ~big_split.valid_mask(modality)
        np.testing.assert_array_equal(getattr(out, modality)[pad], getattr(big_split, modality)[pad])
    np.testing.assert_array_equal(out.text_bert[:, 0][~big_split.text_mask], 0)
    record = out.corruptions[-1]
    assert record["name"] == name and record["seed"] == 11 and record["severity"] == severity
    assert set(record["realised"]) == set(build(name, severity).modalities)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_same_seed_same_bytes_and_seed_matters(name, big_split):
    corruption = build(name, 0.5)
    a, b, c = corruption(big_split, seed=5), corruption(big_split, seed=5), corruption(big_split, seed=6)
    keys = ("text", "text_bert", "audio", "vision", "audio_lengths", "vision_lengths")
    for key in keys:
        assert getattr(a, key).tobytes() == getattr(b, key).tobytes()
    if name != "blur":  # blur draws nothing
        assert any(getattr(a, key).tobytes() != getattr(c, key).tobytes() for key in keys)


@pytest.mark.parametrize("name", ALL)
def test_picklable_with_honest_repr(name):
    corruption = build(name, 0.25)
    clone = pickle.loads(pickle.dumps(corruption))
    assert repr(clone) == repr(corruption)
    assert "severity=0.25" in repr(corruption)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "high", None])
def test_severity_outside_unit_interval_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"severity must be"):
        RandomMissing(bad)


def test_modality_option_narrows_and_rejects_unsupported(big_split):
    out = create_corruption("random_missing", 0.5, modalities=["audio"])(big_split, seed=1)
    assert out.text_bert.tobytes() == big_split.text_bert.tobytes()
    assert out.vision.tobytes() == big_split.vision.tobytes()
    assert out.audio.tobytes() != big_split.audio.tobytes()
    with pytest.raises(ValueError, match="word_drop applies to text"):
        create_corruption("word_drop", 0.5, modalities="audio")
    with pytest.raises(ValueError, match="exactly one modality"):
        create_corruption("modality_missing", 0.5)
    with pytest.raises(ValueError, match="no LNLN counterpart"):
        create_corruption("blur", 0.5, seeding="lnln")


def test_unknown_corruption_suggests_names():
    with pytest.raises(KeyError, match="Did you mean: word_drop"):
        create_corruption("word_dropp", 0.1)
    with pytest.raises(ValueError, match="unknown parameter"):
        create_corruption("blur", 0.1, sigma=3)


# ----------------------------------------------------------------- missing
@pytest.mark.parametrize("name,modalities", [("random_missing", ("text", "audio", "vision")),
                                             ("word_drop", ("text",)), ("frame_drop", ("audio", "vision"))])
@pytest.mark.parametrize("severity", [0.1, 0.5, 0.9])
def test_realised_drop_rate_within_binomial_bounds(name, modalities, severity):
    split = make_split(n=300, lt=40, la=80, lv=60, seed=4)
    out = create_corruption(name, severity)(split, seed=99)
    for modality in modalities:
        stats = out.corruptions[-1]["realised"][modality]
        n = stats["total"]
        sd = np.sqrt(severity * (1 - severity) / n)
        assert abs(stats["rate"] - severity) < 4.5 * sd, (modality, stats)
        if modality == "text":
            dropped = (out.text_bert[:, 0] == UNK_ID) & (split.text_bert[:, 0] != UNK_ID)
        else:
            changed = np.any(getattr(out, modality) != getattr(split, modality), axis=2)
            dropped = changed
        assert int(dropped.sum()) <= stats["affected"]


def test_dropped_tokens_are_unk_with_zero_rows_and_nothing_else_changes(big_split):
    out = create_corruption("word_drop", 0.4)(big_split, seed=2)
    changed = out.text_bert[:, 0] != big_split.text_bert[:, 0]
    zero_rows = np.all(out.text == 0, axis=2) & big_split.text_mask
    np.testing.assert_array_equal(changed, zero_rows)  # ids and rows agree
    assert np.all(out.text_bert[:, 0][changed] == UNK_ID)
    kept = ~changed
    np.testing.assert_array_equal(out.text[kept], big_split.text[kept])
    assert out.corruptions[-1]["realised"]["text"]["affected"] == int(changed.sum())


def test_dropped_frames_are_zero_inside_valid_length(big_split):
    out = create_corruption("frame_drop", 0.5)(big_split, seed=2)
    for modality in ("audio", "vision"):
        x, y = getattr(big_split, modality), getattr(out, modality)
        changed = np.any(x != y, axis=2)
        assert np.all(y[changed] == 0)
        assert not np.any(changed & ~big_split.valid_mask(modality))
        np.testing.assert_array_equal(out.lengths(modality), big_split.lengths(modality))


def test_masks_are_nested_across_severities(big_split):
    low = create_corruption("random_missing", 0.2)(big_split, seed=8)
    high = create_corruption("random_missing", 0.6)(big_split, seed=8)
    low_drop, high_drop = low.text_bert[:, 0] == UNK_ID, high.text_bert[:, 0] == UNK_ID
    assert np.all(high_drop[low_drop])
    low_a = np.all(low.audio == 0, axis=2) & big_split.valid_mask("audio")
    high_a = np.all(high.audio == 0, axis=2) & big_split.valid_mask("audio")
    assert np.all(high_a[low_a])


def test_modalities_draw_from_independent_streams(big_split):
    # Narrowing to one modality must not change that modality's draws.
    alone = create_corruption("random_missing", 0.5, modalities="audio")(big_split, seed=3)
    together = create_corruption("random_missing", 0.5)(big_split, seed=3)
    np.testing.assert_array_equal(alone.audio, together.audio)
    # Independent mode: the text mask is not the audio mask's first columns (LNLN's shared-seed quirk).
    text_drop = together.text_bert[:, 0] == UNK_ID
    audio_drop = np.all(together.audio == 0, axis=2)[:, : text_drop.shape[1]]
    both = big_split.text_mask & big_split.valid_mask("audio")[:, : text_drop.shape[1]]
    words = both & (np.arange(both.shape[1]) > 0) & (np.arange(both.shape[1]) < big_split.text_lengths[:, None] - 1)
    agreement = np.mean(text_drop[words] == audio_drop[words])
    assert 0.35 < agreement < 0.65


def test_splits_get_different_streams():
    split = make_split(n=50)
    twin = split.replace(name="train")
    a = create_corruption("frame_drop", 0.5)(split, seed=1)
    b = create_corruption("frame_drop", 0.5)(twin, seed=1)
    assert a.audio.tobytes() != b.audio.tobytes()


def lnln_generate_m(modality: str, data: np.ndarray, lengths_or_mask: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """A literal re-statement of LNLN's MMDataset.generate_m (Haoyu-ha/LNLN:core/dataset.py:91-111)."""
    missing_rate = np.full(data.shape[0], rate)
    if modality == "text":
        input_len = np.argmin(lengths_or_mask, axis=1)
        np.random.seed(seed)
        missing_mask = (np.random.uniform(size=lengths_or_mask.shape) > missing_rate.repeat(
            lengths_or_mask.shape[1]).reshape(lengths_or_mask.shape)) * lengths_or_mask
        for i, instance in enumerate(missing_mask):
            instance[0] = instance[input_len[i] - 1] = 1
        return missing_mask * data + (100 * np.ones_like(data)) * (lengths_or_mask - missing_mask)
    input_mask = np.array([np.array([1] * length + [0] * (data.shape[1] - length)) for length in lengths_or_mask])
    np.random.seed(seed)
    missing_mask = (np.random.uniform(size=input_mask.shape) > missing_rate.repeat(
        input_mask.shape[1]).reshape(input_mask.shape)) * input_mask
    return np.expand_dims(missing_mask, axis=2) * data


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_lnln_seeding_reproduces_generate_m_exactly(rate):
    split = make_split(n=80, lt=20, la=30, lv=25, seed=6)
    out = RandomMissing(rate, seeding="lnln")(split, seed=1111)
    ids, mask = split.text_bert[:, 0].astype(np.float64), split.text_bert[:, 1].astype(np.float64)
    np.testing.assert_array_equal(out.text_bert[:, 0], lnln_generate_m("text", ids, mask, rate, 1111))
    for modality in ("audio", "vision"):
        expected = lnln_generate_m(modality, getattr(split, modality), split.lengths(modality), rate, 1111)
        np.testing.assert_array_equal(getattr(out, modality), expected.astype(np.float32))
    # and the shared-seed quirk is reproduced: text and audio draws coincide at equal rates
    dropped_text = out.text_bert[:, 0] == UNK_ID
    np.testing.assert_array_equal(out.text[dropped_text], 0)


def test_modality_missing_removes_exact_fraction_and_marks_absent(big_split):
    n = len(big_split)
    out = create_corruption("modality_missing", 0.25, modalities="vision")(big_split, seed=4)
    removed = out.vision_lengths == 0
    assert removed.sum() == round(0.25 * n)
    assert np.all(out.vision[removed] == 0)
    np.testing.assert_array_equal(out.vision[~removed], big_split.vision[~removed])
    zero_mode = create_corruption("modality_missing", 1.0, modalities="audio", mode="zero")(big_split, seed=4)
    np.testing.assert_array_equal(zero_mode.audio_lengths, big_split.audio_lengths)
    assert np.all(zero_mode.audio == 0)
    text = create_corruption("modality_missing", 1.0, modalities="text")(big_split, seed=4)
    words = big_split.text_mask.copy()
    words[:, 0] = False
    words[np.arange(n), big_split.text_lengths - 1] = False
    assert np.all(text.text_bert[:, 0][words] == UNK_ID)
    assert text.corruptions[-1]["realised"]["text"]["rate"] == 1.0


def test_temporal_missing_removes_one_contiguous_span(big_split):
    out = create_corruption("temporal_missing", 0.4, modalities="audio")(big_split, seed=2)
    dropped = np.any(out.audio != big_split.audio, axis=2) | (np.all(out.audio == 0, axis=2) & big_split.valid_mask("audio"))
    for n in range(len(big_split)):
        idx = np.flatnonzero(dropped[n])
        span = round(0.4 * big_split.audio_lengths[n])
        if span:
            assert idx.size == span and idx[-1] - idx[0] + 1 == span
            assert idx[-1] < big_split.audio_lengths[n]


def test_word_shuffle_moves_ids_and_rows_together(big_split):
    out = create_corruption("word_shuffle", 0.6)(big_split, seed=5)
    ids_in, ids_out = big_split.text_bert[:, 0], out.text_bert[:, 0]
    for n in range(len(big_split)):
        np.testing.assert_array_equal(np.sort(ids_in[n]), np.sort(ids_out[n]))  # same multiset
        for t in range(big_split.text.shape[1]):  # each output row is an input row of the same token
            matches = np.flatnonzero(np.all(big_split.text[n] == out.text[n, t], axis=1))
            assert matches.size and np.any(ids_in[n, matches] == ids_out[n, t])
    stats = out.corruptions[-1]["realised"]["text"]
    moved = sum(np.sum(np.any(out.text[n] != big_split.text[n], axis=1)) for n in range(len(big_split)))
    assert moved == stats["affected"]
    assert abs(stats["rate"] - 0.6) < 0.08


def test_misalign_shifts_content_inside_valid_length(big_split):
    out = create_corruption("misalign", 0.2, modalities="vision")(big_split, seed=1)
    for n in range(len(big_split)):
        length, k = big_split.vision_lengths[n], round(0.2 * big_split.vision_lengths[n])
        x, y = big_split.vision[n, :length], out.vision[n, :length]
        if k == 0:
            np.testing.assert_array_equal(x, y)
        elif np.array_equal(y[k:], x[: length - k]):
            assert np.all(y[:k] == 0)
        else:
            np.testing.assert_array_equal(y[: length - k], x[k:])
            assert np.all(y[length - k:] == 0)


def test_blur_preserves_constants_and_spreads_impulses(split):
    vision = np.zeros_like(split.vision)
    valid = split.valid_mask("vision")
    vision[valid] = 2.5
    flat = split.replace(vision=vision)
    out = create_corruption("blur", 1.0)(flat, seed=0)
    np.testing.assert_allclose(out.vision[valid], 2.5, rtol=1e-5)
    assert np.all(out.vision[~valid] == 0)
    impulse = np.zeros_like(split.vision)
    impulse[0, 10, :] = 1.0
    spread = create_corruption("blur", 0.6)(split.replace(vision=impulse), seed=0).vision[0, :, 0]
    assert spread[10] < 1.0 and spread[9] > 0 and spread[11] > 0
    assert np.isclose(spread[: split.vision_lengths[0]].sum(), 1.0, atol=0.05)


def test_blur_edge_cases_found_by_the_property_tests(split):
    # a lone valid frame has nothing to blur with: kept bit for bit (x w0 / w0 used to move it by an ulp)
    lone = split.replace(vision_lengths=np.where(np.arange(len(split)) % 2 == 0, 1, split.vision_lengths))
    vision = np.where(lone.valid_mask("vision")[..., None], lone.vision, 0).astype(np.float32)
    lone = lone.replace(vision=vision)
    out = create_corruption("blur", 0.7)(lone, seed=0)
    single = lone.vision_lengths == 1
    assert out.vision[single].tobytes() == lone.vision[single].tobytes()
    # a sigma that underflows to 0 is the identity (it was 0/0 = NaN everywhere), a tiny one warns of nothing
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for severity, max_sigma in ((5e-324, 0.5), (1e-308, 5.0)):
            tiny = create_corruption("blur", severity, max_sigma=max_sigma)(split, seed=0)
            assert tiny.vision.tobytes() == split.vision.tobytes()


def test_gaussian_noise_scales_with_feature_std(big_split):
    scaled = big_split.replace(audio=big_split.audio * np.array([1, 10, 100, 1, 1], dtype=np.float32))
    out = create_corruption("gaussian_noise", 0.5, modalities="audio")(scaled, seed=0)
    valid = big_split.valid_mask("audio")
    noise = (out.audio - scaled.audio)[valid]
    std = scaled.audio[valid].std(axis=0)
    np.testing.assert_allclose(noise.std(axis=0) / std, 0.5, rtol=0.08)


def test_compose_applies_each_part_with_its_own_record(big_split):
    composed = create_corruption("word_drop+frame_drop", 0.3)
    assert isinstance(composed, Compose) and composed.name == "word_drop+frame_drop"
    out = composed(big_split, seed=1)
    assert [r["name"] for r in out.corruptions] == ["word_drop", "frame_drop"]
    alone = create_corruption("word_drop", 0.3)(big_split, seed=1)
    np.testing.assert_array_equal(out.text_bert, alone.text_bert)
    narrowed = create_corruption("random_missing+blur", 0.3, modalities=["vision"])
    assert [c.modalities for c in narrowed.corruptions] == [("vision",), ("vision",)]


def test_written_corrupted_pickle_loads_back_identical(tmp_path):
    from conftest import make_dataset
    from robustmsa.corruptions.apply import corrupt_dataset
    from robustmsa.datasets import read_mmsa_pickle, write_mmsa_pickle

    dataset = make_dataset(n=30)
    corrupted = corrupt_dataset(dataset, create_corruption("word_shuffle+frame_drop", 0.5), seed=3,
                                splits=("train", "test"))
    path = tmp_path / "corrupted.pkl"
    write_mmsa_pickle(corrupted, path)
    back = read_mmsa_pickle(path)
    for name in ("train", "valid", "test"):
        for key in Split.array_keys():
            a, b = getattr(corrupted[name], key), getattr(back[name], key)
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes() if a.dtype != object else list(a) == list(b)
    assert corrupted.valid is dataset.valid  # untouched splits are shared, not copied
