"""Built-in diarizer: DER on real recordings against their RTTM, count hints, silence; clustering units.

Splits (issue 18): the diarizer's constants were chosen on `sample`, `dev00`, `dev01` (two speakers each)
and `trn00`-`trn04` (AMI meeting excerpts); `trn05`-`trn09` (3-4 speakers) were never used to choose
anything and are held out. Limits sit a few points above what scripts/bench_diarization.py measured (CPU,
collar 0.25 s, overlap scored, no count hint, segmentation-3.0 overlap detection): they guard against
regressions. The issue's targets (mean <= 20 %, no clip above 40 %) are NOT met by this pipeline;
`test_issue_18_targets` records that as a strict xfail on the held-out clips, so it turns into a failure
(and must be promoted to a plain test) the day they are. segmentation-3.0 was trained on AMI among other
corpora, so the overlap share of these figures may be optimistic (docs/diarization.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.diarization.clustering import (
    SpeakerCountHint,
    cluster,
    merge_similar,
    silhouette,
    spectral_labels,
)
from engines.diarization.refine import labelled_turns, overlap_turns, renumber, viterbi

MEASURED_DER = {"sample": 0.007, "dev00": 0.068, "dev01": 0.022}
DER_LIMIT = {"sample": 0.06, "dev00": 0.11, "dev01": 0.11}
# Meeting clips the constants were chosen on: measured DER (reference / estimated speaker count).
TUNED_MEETINGS_MEASURED = {
    "trn00": 0.221,  # 3 speakers, 2 found
    "trn01": 1.415,  # 4 speakers in 5.8 s of mostly laughter: Silero finds none of it, 0.8 s of noise instead
    "trn02": 1.000,  # 0.7 s of quiet speech in 30 s: Silero misses it
    "trn03": 0.039,  # 2 (one of them for 1.2 s), 1 found
    "trn04": 0.296,  # 3, 2 found
}
# Held out (never tuned on).
HELD_OUT_MEASURED = {
    "trn05": 0.026,  # 4, one of whom talks for 90 % of the time; 1 found
    "trn06": 0.250,  # 3, 2 found: 22 % confusion
    "trn07": 0.702,  # 68 % of the reference is laughter and murmur Silero (and segmentation-3.0) miss
    "trn08": 0.323,  # 4, 2 found; 44 % of the speech overlapped (0.456 without overlap detection)
    "trn09": 0.122,  # 3, 2 found; 32 % overlapped (0.287 without)
}
# Held-out mean 28.5 % measured (36.4 % before overlap detection): asserted with this margin.
HELD_OUT_MEAN_LIMIT = 0.31
HELD_OUT_MARGIN = 0.05


# ---------------------------------------------------------------- pure units


def _voices(
    sizes: list[int], dim: int = 64, spread: float = 0.35, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic d-vectors: one random direction per voice plus noise, sharing a common component
    as GE2E's all-positive outputs do; consecutive rows of a voice, like windows of a turn."""
    rng = np.random.default_rng(seed)
    common = np.abs(rng.normal(size=dim))
    rows, truth = [], []
    for v, n in enumerate(sizes):
        centre = common + 1.0 * rng.normal(size=dim)
        rows.append(centre + spread * rng.normal(size=(n, dim)) * np.linalg.norm(centre) / np.sqrt(dim))
        truth += [v] * n
    return np.concatenate(rows), np.array(truth)


@pytest.mark.parametrize("sizes", [[40, 30], [30, 25, 35], [20, 20, 20, 20]])
def test_spectral_finds_the_voices(sizes):
    emb, truth = _voices(sizes)
    labels = cluster(emb)
    assert labels.max() + 1 == len(sizes)
    assert np.array_equal(labels, truth)  # both numbered by first appearance


def test_one_voice_stays_one():
    emb, _ = _voices([80], spread=0.5)
    assert set(cluster(emb).tolist()) == {0}


def test_count_hints():
    emb, _ = _voices([30, 30, 30])
    assert cluster(emb, SpeakerCountHint(num=2)).max() + 1 == 2
    assert cluster(emb, SpeakerCountHint(max=2)).max() + 1 == 2
    one, _ = _voices([60], spread=0.5)
    assert cluster(one, SpeakerCountHint(min=2)).max() + 1 == 2
    assert cluster(one, SpeakerCountHint(num=5)).max() + 1 == 5
    assert spectral_labels(emb[:1]).tolist() == [0] and len(spectral_labels(emb[:0])) == 0
    assert SpeakerCountHint(num=9).bounds(3) == (3, 3) and SpeakerCountHint(min=4, max=2).bounds(10) == (2, 2)


@pytest.mark.parametrize("n", [4, 5, 6, 8, 9])
def test_a_few_windows_cluster_without_error(n):
    """A few seconds of speech give 4-8 windows: the count search must stay below n (it indexed past the
    Laplacian's eigenvalues before) and still split two clear voices."""
    emb, truth = _voices([n // 2, n - n // 2], spread=0.1)
    labels = spectral_labels(emb)
    assert len(labels) == n and labels.max() + 1 <= n - 1
    assert spectral_labels(emb, SpeakerCountHint(num=n)).tolist() == list(range(n))


def test_silhouette_and_merge():
    emb, truth = _voices([30, 30])
    assert silhouette(emb, truth) > 0.2
    assert silhouette(emb, np.arange(60) % 2) < 0.05
    same = np.repeat(np.eye(4)[:1], 10, axis=0) + 0.01
    assert merge_similar(same, np.array([0] * 5 + [1] * 5)).tolist() == [0] * 10


def test_viterbi_penalty_smooths_flicker():
    scores = np.array([[1.0, 0.0]] * 5 + [[0.4, 0.6]] + [[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 6)
    assert viterbi(scores, 0.0)[5] == 1
    path = viterbi(scores, 0.5)
    assert path.tolist() == [0] * 11 + [1] * 6


def test_overlap_turns_name_the_runner_up_on_flagged_runs():
    times = np.arange(10) * 0.1 + 0.05
    times[7:] += 2.0  # a cut between speech spans after step 6
    labels = np.zeros(10, dtype=int)
    scores = np.tile([0.9, 0.2, 0.6], (10, 1))  # speaker 2 is the runner-up everywhere
    scores[3:5] = [0.9, 0.7, 0.1]  # ... except at steps 3-4, where it is speaker 1
    flagged = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    turns = overlap_turns(times, scores, labels, flagged, step=0.1, min_steps=2)
    got = [(round(s, 2), round(e, 2), k) for s, e, k in turns]
    assert got == [(0.0, 0.3, 2), (0.3, 0.5, 1), (0.5, 0.7, 2), (2.7, 2.9, 2)]
    assert overlap_turns(times, scores, labels, flagged, step=0.1, min_steps=3) == [turns[0]]
    assert overlap_turns(times, scores[:, :1], labels, flagged, step=0.1, min_steps=1) == []


def test_labelled_turns_cut_bridge_and_renumber():
    times = np.arange(0.05, 4.0, 0.1)
    labels = np.array([1] * 20 + [0] * 20)
    turns = renumber(labelled_turns([(0.0, 1.5), (1.6, 4.0)], times, labels, 0.1, max_gap=0.3))
    assert [(t.start, t.end, t.speaker) for t in turns] == [(0.0, 2.0, 0), (2.0, 4.0, 1)]
    assert labelled_turns([(0.0, 1.0)], times, labels, 0.1, min_turn=2.0) == []


def test_nearest_sorted_matches_brute_force():
    from engines.diarization.builtin import nearest_sorted

    rng = np.random.default_rng(3)
    for trial in range(200):
        n, m = int(rng.integers(1, 40)), int(rng.integers(0, 60))
        values: np.ndarray
        queries: np.ndarray
        if trial % 2:  # integer grids with repeats and exact ties, like window centres
            values, queries = np.sort(rng.integers(0, 50, n)), rng.integers(-10, 60, m)
        else:
            values, queries = np.sort(rng.normal(size=n)), rng.normal(scale=1.5, size=m)
        brute = np.abs(values[None, :] - queries[:, None]).argmin(axis=1)
        assert np.array_equal(nearest_sorted(values, queries), brute), (values, queries)


# ---------------------------------------------------------------- the real diarizer


@pytest.fixture(scope="module")
def diarizer(ge2e_weights, segmentation_weights):
    from engines.diarization.builtin import BuiltinDiarizer

    return BuiltinDiarizer(ge2e_weights, device="cpu", segmentation=segmentation_weights)


def _clip(testdata, name):
    from engines.audio import decode_file
    from engines.diarization.der import read_rttm

    d = testdata / "diarization"
    return decode_file(d / f"{name}.wav"), [
        t for turns in read_rttm(d / f"{name}.rttm").values() for t in turns
    ]


def _der(diarizer, testdata, name):
    from engines.diarization.der import diarization_error_rate
    from engines.types import SAMPLE_RATE, DiarizationRequest

    audio, ref = _clip(testdata, name)
    result = diarizer.diarize(DiarizationRequest(audio))
    hyp = [(t.start, t.end, str(t.speaker)) for t in result.turns]
    return diarization_error_rate(ref, hyp, collar=0.25, region=(0.0, len(audio) / SAMPLE_RATE)), result


MEETINGS = {**TUNED_MEETINGS_MEASURED, **HELD_OUT_MEASURED}


@pytest.fixture(scope="module")
def meetings(diarizer, testdata):
    """Every trn* clip diarized once for the tests below (no speaker-count hint)."""
    return {name: _der(diarizer, testdata, name) for name in MEETINGS}


@pytest.fixture(scope="module")
def held_out(meetings):
    return {name: meetings[name] for name in HELD_OUT_MEASURED}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MEETINGS))
def test_der_on_meeting_clips(meetings, name):
    der, result = meetings[name]
    limit = MEETINGS[name] + HELD_OUT_MARGIN
    assert der.der <= limit, f"{name}: {der} (measured {MEETINGS[name]:.1%})"
    assert sorted({t.speaker for t in result.turns}) == list(range(result.num_speakers))


@pytest.mark.slow
def test_mean_der_on_held_out_clips(held_out):
    mean = sum(der.der for der, _ in held_out.values()) / len(held_out)
    assert mean <= HELD_OUT_MEAN_LIMIT, f"held-out mean DER {mean:.1%} (measured 28.5%)"


@pytest.mark.slow
def test_overlap_detection_adds_the_second_voice(diarizer, ge2e_weights, meetings, testdata):
    """trn09: a second voice over the first for a third of the speech. With segmentation-3.0 the output has
    simultaneous turns of two speakers there and less missed speech than the same pipeline without it."""
    from engines.diarization.builtin import BuiltinDiarizer

    with_overlap, result = meetings["trn09"]
    without, plain = _der(BuiltinDiarizer(ge2e_weights, device="cpu"), testdata, "trn09")
    ends = sorted((t.start, t.end, t.speaker) for t in result.turns)
    assert any(b[0] < a[1] and a[2] != b[2] for a, b in zip(ends, ends[1:], strict=False))
    plain_turns = sorted((t.start, t.end) for t in plain.turns)
    # one voice at a time without it
    assert all(b[0] >= a[1] for a, b in zip(plain_turns, plain_turns[1:], strict=False))
    assert with_overlap.missed < without.missed - 0.1 and with_overlap.der < without.der - 0.1


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 18 targets not met yet: see docs/diarization.md")
def test_issue_18_targets(held_out):
    ders = [der.der for der, _ in held_out.values()]
    assert sum(ders) / len(ders) <= 0.20 and max(ders) <= 0.40


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sample", "dev00", "dev01"])
def test_der_on_reference_clips(diarizer, testdata, name):
    from engines.diarization.der import diarization_error_rate
    from engines.types import SAMPLE_RATE, DiarizationRequest

    audio, ref = _clip(testdata, name)
    seen: list[float] = []
    result = diarizer.diarize(DiarizationRequest(audio), seen.append)
    hyp = [(t.start, t.end, str(t.speaker)) for t in result.turns]
    der = diarization_error_rate(ref, hyp, collar=0.25, region=(0.0, len(audio) / SAMPLE_RATE))
    assert der.der <= DER_LIMIT[name], f"{name}: {der} (measured {MEASURED_DER[name]:.1%})"
    assert result.num_speakers == 2
    assert [t.speaker for t in result.turns][0] == 0 and seen[-1] == 1.0 and seen == sorted(seen)


@pytest.mark.slow
def test_speaker_count_hints_on_real_audio(diarizer, testdata):
    from engines.types import DiarizationRequest

    audio, _ = _clip(testdata, "dev01")
    assert diarizer.diarize(DiarizationRequest(audio, num_speakers=1)).num_speakers == 1
    assert diarizer.diarize(DiarizationRequest(audio, num_speakers=3)).num_speakers <= 3
    assert diarizer.diarize(DiarizationRequest(audio, max_speakers=1)).num_speakers == 1


@pytest.mark.slow
def test_one_reader_is_one_speaker(diarizer, testdata):
    from engines.audio import decode_file
    from engines.types import DiarizationRequest

    audio = np.concatenate([decode_file(testdata / "en" / f"LJ001-000{i}.wav") for i in (1, 2, 3, 4)])
    assert diarizer.diarize(DiarizationRequest(audio)).num_speakers == 1


@pytest.mark.slow
def test_empty_and_silent_audio_give_no_turns(diarizer):
    from engines.types import DiarizationRequest

    for audio in (np.zeros(0, np.float32), np.zeros(16000 * 5, np.float32), np.full(8000, 1e-6, np.float32)):
        result = diarizer.diarize(DiarizationRequest(audio))
        assert result.turns == () and result.num_speakers == 0


@pytest.mark.slow
def test_blockwise_mel_frames_equal_whole_signal(diarizer, testdata):
    """Any slice of frames, computed in blocks with the gain applied on the fly, equals the same rows of
    the centred STFT of the whole normalised recording (the front end as it was first written)."""
    import torch

    from engines.diarization.ge2e import HOP, N_FFT, normalize_volume, volume_gain

    enc = diarizer.encoder
    audio, _ = _clip(testdata, "sample")
    audio = audio[: 16000 * 4 + 77]  # length not a multiple of the hop
    wav = torch.from_numpy(normalize_volume(audio))
    spec = torch.stft(
        wav, N_FFT, HOP, window=enc._window, center=True, pad_mode="constant", return_complex=True
    )
    whole = (enc._mel @ (spec.real.square() + spec.imag.square())).T
    gain = volume_gain(audio)
    total = whole.shape[0]
    assert enc.mel_frames(audio, gain=gain).shape == whole.shape
    for start, stop, block in [
        (0, None, 37),
        (0, 1, 5),
        (5, 123, 50),
        (150, total, 64),
        (total - 3, total + 9, 2),
    ]:
        got = enc.mel_frames(audio, start, stop, gain, block=block)
        # Different FFT/matmul batch sizes may round the last bit differently; nothing more.
        torch.testing.assert_close(got, whole[start:stop], rtol=1e-5, atol=1e-6)
    assert enc.mel_frames(audio, total, total + 5, gain).shape == (0, 40)
