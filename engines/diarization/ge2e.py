"""GE2E speaker encoder (Wan et al. 2018) with the weights that ship in the `resemblyzer` wheel.

The network and its front end are re-implemented here so the project needs only the 17 MB
`pretrained.pt`, not resemblyzer's dependencies (librosa, webrtcvad). The front end matches
resemblyzer's `audio.wav_to_mel_spectrogram`: librosa's power mel spectrogram (not log!) at 16 kHz,
25 ms Hann window (n_fft 400), 10 ms hop, 40 Slaney mel bands, centred frames with zero padding.
Because the input is a linear power spectrum, loudness matters: audio is normalised to
-30 dBFS first, as resemblyzer's `preprocess_wav` did for the training data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.types import SAMPLE_RATE, ModelMissingError

if TYPE_CHECKING:
    import torch

N_FFT = 400  # 25 ms
HOP = 160  # 10 ms: one mel frame per 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # the 1.6 s "partial utterance" the network was trained on
TARGET_DBFS = -30.0
EMBED_DIM = 256
# Frames per STFT call: bounds the complex spectrogram (201 bins x 8 bytes a frame, ~10 MB per 60 s)
# however long the recording is.
MEL_BLOCK_FRAMES = 6000


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    logstep = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / logstep, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), m * (200.0 / 3))


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular Slaney-normalised filters, shape (n_mels, n_fft // 2 + 1), as librosa.filters.mel."""
    fft_freqs = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    widths = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2:] - mel_pts[:-2]))[:, None]  # equal area per filter
    return weights.astype(np.float32)


def volume_gain(audio: np.ndarray, target_dbfs: float = TARGET_DBFS) -> float:
    """Factor that scales `audio` to `target_dbfs` RMS; 1.0 for (near) silence."""
    # Summed in float64 slices: squaring the whole recording at once would cost 8 bytes a sample.
    step = 1 << 20
    total = sum(
        float(np.square(audio[i : i + step], dtype=np.float64).sum()) for i in range(0, audio.size, step)
    )
    rms = float(np.sqrt(total / audio.size)) if audio.size else 0.0
    return 1.0 if rms < 1e-6 else 10.0 ** (target_dbfs / 20.0) / rms


def normalize_volume(audio: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Scale to `target_dbfs` RMS (increase and decrease): the encoder saw -30 dBFS-ish training audio."""
    return (audio * volume_gain(audio, target_dbfs)).astype(np.float32)


class Ge2eEncoder:
    """Batched d-vector extraction: mel frames of a whole recording, then many windows per forward."""

    def __init__(self, weights: str | Path, device: str = "cpu") -> None:
        import torch
        from torch import nn

        path = Path(weights)
        if not path.is_file():
            raise ModelMissingError(
                f"GE2E weights not found at {path}: install the `resemblyzer` wheel's "
                "resemblyzer/pretrained.pt there (see the model catalog)"
            )
        self.device = device
        self._torch = torch
        self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, EMBED_DIM)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = checkpoint.get("model_state", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict) or "lstm.weight_ih_l0" not in state:
            raise ModelMissingError(f"{path} is not a GE2E checkpoint (no lstm.* weights)")
        # The checkpoint also holds GE2E's training-only similarity scale/bias; skip them.
        self.lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
        self.linear.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("linear.")})
        self.lstm.to(device).eval()
        self.linear.to(device).eval()
        self._mel = torch.from_numpy(mel_filterbank()).to(device)
        self._window = torch.hann_window(N_FFT, periodic=True, device=device)

    def mel_frames(
        self,
        audio: np.ndarray,
        start: int = 0,
        stop: int | None = None,
        gain: float = 1.0,
        block: int = MEL_BLOCK_FRAMES,
    ) -> torch.Tensor:
        """Power mel spectrogram (frames, 40) on the encoder's device; frame i is centred at i*10 ms.

        Frames [start, stop) of the 1 + len(audio) // HOP a centred STFT gives (default: all), computed
        `block` frames at a time from just the samples they cover, so memory stays bounded and silence
        that is never used need not be transformed. `gain` scales samples as they are read, sparing a
        scaled copy of the whole recording.
        """
        torch = self._torch
        total = 1 + len(audio) // HOP
        stop = total if stop is None else min(stop, total)
        parts = [
            self._mel_block(audio, f, min(f + block, stop), gain) for f in range(max(0, start), stop, block)
        ]
        if not parts:
            return torch.zeros((0, N_MELS), device=self.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _mel_block(self, audio: np.ndarray, first: int, end: int, gain: float) -> torch.Tensor:
        """Frames [first, end): the samples they see, zero padded past either end of the recording as
        torch.stft(center=True, pad_mode="constant") pads them, then an uncentred STFT."""
        torch = self._torch
        lo, hi = first * HOP - N_FFT // 2, (end - 1) * HOP + N_FFT // 2
        seg = np.zeros(hi - lo, dtype=np.float32)
        a, b = max(lo, 0), min(hi, len(audio))
        seg[a - lo : b - lo] = audio[a:b] * gain
        wav = torch.from_numpy(seg).to(self.device)
        spec = torch.stft(wav, N_FFT, HOP, window=self._window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (freq, frames)
        return (self._mel @ power).T.contiguous()

    def embed_windows(
        self, mels: torch.Tensor, starts: np.ndarray, n_frames: int = PARTIAL_FRAMES, batch_size: int = 256
    ) -> np.ndarray:
        """Embeddings of the windows mels[s : s + n_frames] for each start frame; (len(starts), 256).

        Windows running past the end are zero padded (resemblyzer pads the waveform the same way).
        """
        torch = self._torch
        if len(starts) == 0:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        need = int(np.max(starts)) + n_frames
        if need > mels.shape[0]:
            mels = torch.cat([mels, mels.new_zeros(need - mels.shape[0], N_MELS)])
        offsets = torch.arange(n_frames, device=self.device)
        out = []
        with torch.inference_mode():
            for i in range(0, len(starts), batch_size):
                idx = torch.as_tensor(starts[i : i + batch_size], device=self.device)[:, None] + offsets
                batch = mels[idx]  # (B, n_frames, 40) gathered without a Python loop
                _, (hidden, _) = self.lstm(batch)
                raw = torch.relu(self.linear(hidden[-1]))
                out.append(torch.nn.functional.normalize(raw, dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)
