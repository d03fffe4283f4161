"""The pyannote engine loads a local pipeline directory offline and runs it on real speech.

pyannote's pretrained pipelines are gated on the model hub, so the directory is built here from randomly
initialised pyannote models saved in pyannote's own checkpoint format (the layout of
speaker-diarization-community-1: config.yaml + segmentation/, embedding/, plda/). That proves the offline
loading and calling; its output is noise, so only structure is asserted. The models are tiny (small LSTM,
MFCC x-vector) to keep the test fast on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


def _save_model(model, spec, folder: Path) -> None:
    """A checkpoint `Model.from_pretrained` accepts: Lightning's keys plus pyannote's own block."""
    import pytorch_lightning as pl
    import torch
    from pyannote.audio import __version__

    model.specifications = spec
    model.build()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": pl.__version__,
            "pyannote.audio": {
                "versions": {"pyannote.audio": __version__},
                "architecture": {"module": type(model).__module__, "class": type(model).__name__},
                "specifications": spec,
            },
        },
        folder / "pytorch_model.bin",
    )


def build_random_pipeline(root: Path) -> Path:
    import torch
    import yaml
    from pyannote.audio import __version__
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import XVectorMFCC
    from pyannote.audio.models.segmentation import PyanNet

    torch.manual_seed(0)
    seg = PyanNet(
        sincnet={"stride": 10},
        lstm={"hidden_size": 32, "num_layers": 1},
        linear={"hidden_size": 32, "num_layers": 1},
    )
    _save_model(
        seg,
        Specifications(
            problem=Problem.MONO_LABEL_CLASSIFICATION,
            resolution=Resolution.FRAME,
            duration=5.0,
            classes=["speaker#1", "speaker#2", "speaker#3"],
            powerset_max_classes=2,
            permutation_invariant=True,
        ),
        root / "segmentation",
    )
    _save_model(
        XVectorMFCC(dimension=256),
        Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0),
        root / "embedding",
    )
    # VBx needs a PLDA: a random orthonormal LDA/PLDA in pyannote's npz layout (core/plda.py).
    rng = np.random.default_rng(0)
    (root / "plda").mkdir()
    np.savez(
        root / "plda" / "xvec_transform.npz",
        mean1=np.zeros(256),
        mean2=np.zeros(128),
        lda=np.linalg.qr(rng.normal(size=(256, 256)))[0][:, :128],
    )
    np.savez(
        root / "plda" / "plda.npz",
        mu=np.zeros(128),
        tr=np.linalg.qr(rng.normal(size=(128, 128)))[0],
        psi=np.linspace(2.0, 0.1, 128),
    )
    config = {
        "dependencies": {"pyannote.audio": __version__},
        "pipeline": {
            "name": "pyannote.audio.pipelines.SpeakerDiarization",
            "params": {
                "segmentation": "$model/segmentation",
                "segmentation_step": 0.5,
                "embedding": "$model/embedding",
                "plda": "$model/plda",
                "clustering": "VBxClustering",
                "embedding_exclude_overlap": True,
                "segmentation_batch_size": 16,
                "embedding_batch_size": 16,
            },
        },
        "params": {
            "segmentation": {"min_duration_off": 0.0},
            "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8},
        },
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="module")
def diarizer(tmp_path_factory):
    from engines.diarization.pyannote_engine import PyannoteDiarizer

    root = build_random_pipeline(tmp_path_factory.mktemp("pyannote") / "random-community")
    return PyannoteDiarizer(root, device="cpu")


@pytest.mark.slow
def test_loads_offline_and_runs_on_real_speech(diarizer, testdata):
    from engines.audio import decode_file
    from engines.types import SAMPLE_RATE, DiarizationRequest

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["PYANNOTE_METRICS_ENABLED"] == "false"
    assert diarizer.engine == "pyannote" and diarizer.model == "random-community" and diarizer.device == "cpu"
    audio = decode_file(testdata / "diarization" / "sample.wav")[: 15 * SAMPLE_RATE]
    seen: list[float] = []
    result = diarizer.diarize(DiarizationRequest(audio, max_speakers=3), seen.append)
    duration = len(audio) / SAMPLE_RATE
    assert all(0.0 <= t.start < t.end <= duration + 0.05 for t in result.turns)
    speakers = [t.speaker for t in result.turns]
    assert result.num_speakers == len(set(speakers))
    assert sorted(set(speakers)) == list(range(result.num_speakers))  # 0-based, by first appearance
    assert speakers[:1] in ([], [0])
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    assert len(set(seen)) > 2  # the pipeline's hook fed intermediate progress


@pytest.mark.slow
def test_silence_and_missing_directory(diarizer, tmp_path):
    from engines.diarization.pyannote_engine import PyannoteDiarizer
    from engines.types import DiarizationRequest, ModelMissingError

    assert diarizer.diarize(DiarizationRequest(np.zeros(16000 * 3, dtype=np.float32))).turns == ()
    with pytest.raises(ModelMissingError):
        PyannoteDiarizer(tmp_path / "nothing-here")
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.yaml").write_text(
        "pipeline:\n  name: pyannote.audio.pipelines.SpeakerDiarization\n"
        "  params:\n    segmentation: pyannote/segmentation-3.0\n"
    )
    with pytest.raises(ModelMissingError):  # names a hub model: offline, so it must fail, not download
        PyannoteDiarizer(tmp_path / "hub")


def test_import_refuses_pipelines_that_would_need_the_hub(tmp_path, capsys):
    """`scripts/models import pyannote DIR` copies only self-contained pipelines: a model named by hub id or a
    checkpoint the config names but the folder lacks is refused with the reason, and nothing is installed."""
    from models.__main__ import main as models_cli

    models = tmp_path / "models"
    hub = tmp_path / "speaker-diarization-3.1"
    hub.mkdir()
    (hub / "config.yaml").write_text(
        "pipeline:\n  name: pyannote.audio.pipelines.SpeakerDiarization\n"
        "  params:\n    segmentation: pyannote/segmentation-3.0\n    embedding: $model/embedding\n"
    )
    assert models_cli(["--models-dir", str(models), "import", "pyannote", str(hub)]) == 1
    err = capsys.readouterr().err
    assert "pyannote/segmentation-3.0" in err and "$model/embedding is missing" in err
    assert models_cli(["--models-dir", str(models), "import", "pyannote", str(tmp_path / "absent")]) == 1
    assert not (models / "pyannote").exists()


@pytest.mark.slow
async def test_server_selects_the_pyannote_pipeline(tmp_path, models_root, testdata):
    """`S7_DEFAULT_DIARIZER=pyannote:NAME` with the pipeline under models/pyannote/NAME: capabilities name it
    and /stt diarizes through it."""
    import httpx

    from server.app import create_app
    from server.settings import Settings
    from tests.conftest import ADMIN_KEY, Api

    models = tmp_path / "models"
    models.mkdir()
    for child in models_root.iterdir():  # the bundled models, shared read-only
        (models / child.name).symlink_to(child)
    # The documented path: build (here: random weights) a community-1 style directory, import it.
    from models.__main__ import main as models_cli

    source = build_random_pipeline(tmp_path / "downloaded" / "speaker-diarization-random")
    assert models_cli(["--models-dir", str(models), "import", "pyannote", str(source), "--name", "random-community"]) == 0
    assert (models / "pyannote" / "random-community" / "segmentation" / "pytorch_model.bin").is_file()
    settings = Settings(
        warmup=False, data_dir=tmp_path / "data", admin_key=ADMIN_KEY, models_dir=models, default_diarizer="pyannote:random-community"
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=300) as c:
            api = Api(app, c, settings)
            key = (await api.account(sttApiKey="whisper:tiny.en"))["apiKey"]
            caps = (await c.get("/account/capabilities", headers={"x-api-key": key})).json()
            assert caps["diarization"]["engine"] == "pyannote" and caps["diarization"]["model"] == "random-community"
            assert caps["diarization"]["configured"] is True
            with open(testdata / "en" / "jfk.flac", "rb") as fh:
                r = await c.post(
                    "/stt", headers={"x-api-key": key}, data={"enableSpeakerDiarization": "true"},
                    files={"audio": ("jfk.flac", fh, "audio/flac")},
                )
            assert r.status_code == 200, r.text
            body = r.json()
            assert "country" in body["text"].lower()
            labels = {s["label"] for s in body["speakers"]}
            assert labels and all(e["speaker"] in labels for e in body["transcript"])
