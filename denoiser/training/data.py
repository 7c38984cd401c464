"""On-the-fly (noisy, clean) 48 kHz training pairs from a folder of real WAVs.

The folder follows the layout of `../shared/data`: `clean/**.wav` speech, `noise/**.wav`
noise, optionally `rir/**.wav` room impulse responses (`music/` is ignored: hold music must pass
through the SFU intact, so it is never taught as noise). Only files that
`denoiser.corpus.devset.split_of` puts in the train split are used; a small, fixed share of the
train
speech is held out again for validation during training.

What the model learns above 8 kHz (most speech here is 16 kHz): a mix built on band-limited speech
is band-limited as a whole (its noise is low-passed at the speech's Nyquist frequency), so the
model is never taught to delete the band above 8 kHz from speech, nor shown noise there that it
cannot learn to separate. Fullband 48 kHz speech is drawn with a raised probability
(`fullband_share`) and mixed with fullband noise (real 48 kHz noise and synthetic coloured
noise), and that is where the band above 8 kHz is trained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

from denoiser.training import augment as aug

SAMPLE_RATE = aug.SAMPLE_RATE
PAUSE_FADE = SAMPLE_RATE // 100  # 10 ms
SplitFn = Callable[[Path], str]


@dataclass(frozen=True)
class AudioFile:
    path: Path
    sample_rate: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def group(self) -> str:
        """The folder (corpus / speaker set) the file belongs to."""
        return self.path.parent.name


@dataclass
class Corpus:
    """The WAV files a mixer draws from, already filtered by split."""

    speech: list[AudioFile]
    noise: list[AudioFile]
    rirs: list[AudioFile] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.speech:
            raise ValueError("corpus has no speech files (expected clean/**/*.wav)")
        if not self.noise:
            raise ValueError("corpus has no noise files (expected noise/**/*.wav)")


def default_split_fn() -> SplitFn:
    """The eval engineer's train/dev split (`denoiser.corpus.devset.split_of`)."""
    try:
        from denoiser.corpus.devset import split_of
    except ImportError as exc:  # pragma: no cover - only while devset.py is missing
        raise RuntimeError("denoiser.corpus.devset.split_of is needed to keep dev files out of "
                           "training") from exc
    return split_of


def _is_validation(path: Path, root: Path, share: float) -> bool:
    """Stable choice of the train speakers held out for validation (hash of the speaker group
    of `denoiser.corpus.devset`, or of the relative path for files outside its layout)."""
    try:
        from denoiser.corpus.devset import group_of
        key = group_of(path).encode()
    except (ImportError, ValueError):
        key = path.relative_to(root).as_posix().encode()
    return int(hashlib.sha1(key).hexdigest()[:8], 16) / 0xFFFFFFFF < share


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")  # WAV, or a compressed copy of a corpus


@cache
def _audio_files(root: Path, kind: str) -> tuple[AudioFile, ...]:
    """Every WAV (or FLAC / Ogg) under `root/kind` with its rate and length (read once)."""
    found = []
    paths = (p for p in (root / kind).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    for path in sorted(paths):
        info = sf.info(str(path))
        if info.channels != 1:
            raise ValueError(f"{path}: expected mono, got {info.channels} channels")
        found.append(AudioFile(path, int(info.samplerate), int(info.frames)))
    return tuple(found)


def scan(root: Path, split_fn: SplitFn | None = None, part: str = "train",
         validation_share: float = 0.05, min_speech_bak: float | None = None) -> Corpus:
    """List the files of `root` for `part`: "train" (train split minus the validation share)
    or "validation" (that share of the train speech; noises are shared).

    `min_speech_bak` keeps only the speech whose background passes the reference screen
    (`denoiser.corpus.screen`): a target with room noise in it teaches a noise floor.
    """
    if part not in ("train", "validation"):
        raise ValueError(f"part must be 'train' or 'validation', not {part!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    split_fn = split_fn or default_split_fn()

    def files(kind: str) -> list[AudioFile]:
        return [f for f in _audio_files(root, kind) if split_fn(f.path) == "train"]

    speech = [f for f in files("clean")
              if _is_validation(f.path, root, validation_share) == (part == "validation")]
    if min_speech_bak is not None:
        from denoiser.corpus.screen import passing

        kept = set(passing([f.path for f in speech], min_speech_bak))
        speech = [f for f in speech if f.path in kept]
    return Corpus(speech=speech, noise=files("noise"), rirs=files("rir"))


def read_segment(f: AudioFile, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A random `seconds`-long piece of `f` at its own rate (shorter if the file is)."""
    want = int(seconds * f.sample_rate)
    start = int(rng.integers(0, max(1, f.frames - want + 1)))
    data, _ = sf.read(str(f.path), start=start, frames=min(want, f.frames), dtype="float32",
                      always_2d=False)
    return np.asarray(data, np.float32)


def read_48k(f: AudioFile, seconds: float, rng: np.random.Generator) -> np.ndarray:
    return aug.resample(read_segment(f, seconds, rng), f.sample_rate)


def loop_to_length(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Repeat `x` (from a random offset) until it is `n` samples long."""
    if len(x) == 0:
        return np.zeros(n, np.float32)
    reps = -(-n // len(x)) + 1
    y = np.tile(x, reps)
    start = int(rng.integers(0, len(x)))
    return y[start:start + n].astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """(speech + scaled noise, scaled noise) with 10·log10(P_speech / P_noise) = snr_db."""
    p_s, p_n = aug.power(speech), aug.power(noise)
    if p_s <= 0 or p_n <= 0:
        raise ValueError("cannot set an SNR with a silent speech or noise signal")
    scaled = (noise * np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))).astype(np.float32)
    return (speech + scaled).astype(np.float32), scaled


@dataclass(frozen=True)
class MixConfig:
    """How mixes are drawn (see the module docstring for the band above 8 kHz)."""

    seconds: float = 3.0
    snr_db: tuple[float, float] = (-5.0, 20.0)
    level_dbfs: tuple[float, float] = (-40.0, -15.0)  # RMS of the noisy mix
    max_noises: int = 3
    p_babble: float = 0.3
    babble_speakers: tuple[int, int] = (1, 5)  # 1: a competing talker
    p_synthetic_noise: float = 0.2
    fullband_share: float = 0.3  # probability of drawing 48 kHz speech when there is any
    # A talker's pause: the speech (and so the target) is silent for a span, leaving noise
    # alone for longer than the short gaps between joined utterances. Calls have pauses of
    # seconds, in which the normalisations settle on the noise: a model that never sees one
    # learns to leave a noise floor there. 0 draws nothing (earlier runs' data unchanged).
    p_pause: float = 0.0
    pause_seconds: tuple[float, float] = (0.5, 2.0)
    min_speech_seconds: float = 0.5  # what a pause leaves of the speech, at least
    # A competing talker well under the wanted voice (another speaker, `talker_db` below it),
    # added on top of the noise: Hush's recipe for a model that keeps the near voice and
    # removes the far one, as a call from an open office needs. 0 draws nothing.
    p_talker: float = 0.0
    talker_db: tuple[float, float] = (12.0, 24.0)
    augment: aug.AugmentConfig = field(default_factory=aug.AugmentConfig)


@dataclass
class Example:
    noisy: np.ndarray  # what the model gets (after every augmentation)
    clean: np.ndarray  # the target, aligned sample by sample with `noisy`
    speech: np.ndarray  # the speech component as mixed (before level, codec, loss, clipping)
    noise: np.ndarray  # the noise component as mixed, scaled to `snr_db`
    snr_db: float
    band_hz: float  # speech bandwidth (Nyquist of its source rate)
    meta: dict[str, object]


class Mixer:
    """Draws training examples from a `Corpus`; everything random comes from the `rng` passed
    to `draw`, so a checkpointed generator replays the same data."""

    def __init__(self, corpus: Corpus, config: MixConfig | None = None) -> None:
        self.corpus = corpus
        self.config = config or MixConfig()
        self.length = round(self.config.seconds * SAMPLE_RATE)
        self._fullband = [f for f in corpus.speech if f.sample_rate >= SAMPLE_RATE]
        self._wideband = [f for f in corpus.speech if f.sample_rate < SAMPLE_RATE]

    # -- sources

    def _pick_speech_file(self, rng: np.random.Generator) -> AudioFile:
        pool = self._fullband if self._fullband and (
            not self._wideband or rng.random() < self.config.fullband_share) else self._wideband
        return pool[int(rng.integers(len(pool)))]

    def _speech(self, rng: np.random.Generator) -> tuple[np.ndarray, AudioFile]:
        """`length` samples of one voice: short files are joined with others of the same
        folder and rate, separated by short pauses."""
        first = self._pick_speech_file(rng)
        same = [f for f in self.corpus.speech
                if f.group == first.group and f.sample_rate == first.sample_rate]
        pieces, n, f = [], 0, first
        while n < self.length:
            piece = read_48k(f, self.config.seconds, rng)
            gap = np.zeros(int(rng.uniform(0.05, 0.4) * SAMPLE_RATE), np.float32)
            pieces += [piece, gap]
            n += len(piece) + len(gap)
            f = same[int(rng.integers(len(same)))]
        x = np.concatenate(pieces)[: self.length]
        return x, first

    def _pause(self, speech: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """`speech` silent over one random span (10 ms fades at its edges, so no click is
        left in the target) and the span's length in seconds; what remains is at least
        `min_speech_seconds` long, so the mix still has speech to set its SNR on."""
        cfg = self.config
        longest = self.length - round(cfg.min_speech_seconds * SAMPLE_RATE)
        n = min(round(float(rng.uniform(*cfg.pause_seconds)) * SAMPLE_RATE), longest)
        if n <= 0:
            return speech, 0.0
        start = int(rng.integers(0, self.length - n + 1))
        fade = min(PAUSE_FADE, n // 2)
        gain = np.ones(self.length, np.float32)
        gain[start:start + n] = 0.0
        ramp = np.linspace(1.0, 0.0, fade, dtype=np.float32)
        gain[start:start + fade] = ramp
        gain[start + n - fade:start + n] = ramp[::-1]
        return speech * gain, n / SAMPLE_RATE

    def _noise(self, rng: np.random.Generator, exclude: AudioFile, band_hz: float) -> tuple[
            np.ndarray, list[str]]:
        cfg, n = self.config, self.length
        parts: list[np.ndarray] = []
        names: list[str] = []
        for _ in range(int(rng.integers(1, cfg.max_noises + 1))):
            f = self.corpus.noise[int(rng.integers(len(self.corpus.noise)))]
            parts.append(loop_to_length(read_48k(f, cfg.seconds, rng), n, rng))
            names.append(f.path.name)
        if rng.random() < cfg.p_babble:
            others = self._other_speakers(exclude)
            k = int(rng.integers(cfg.babble_speakers[0], cfg.babble_speakers[1] + 1))
            babble = np.zeros(n, np.float32)
            for _ in range(k):
                f = others[int(rng.integers(len(others)))]
                voice = loop_to_length(read_48k(f, cfg.seconds, rng), n, rng)
                babble += voice / np.sqrt(aug.power(voice) + 1e-12)
            parts.append(babble)
            names.append(f"babble x{k}")
        if rng.random() < cfg.p_synthetic_noise:
            parts.append(aug.coloured_noise(n, rng))
            names.append("coloured")
        noise = np.zeros(n, np.float32)
        for p in parts:  # each source at a random level within 10 dB of the others
            p_power = aug.power(p)
            if p_power > 0:
                noise += p / np.sqrt(p_power) * aug.db_to_gain(float(rng.uniform(-10, 0)))
        if rng.random() < cfg.augment.p_noise_eq:
            noise = aug.random_eq(noise, rng)
        if band_hz < SAMPLE_RATE / 2:
            noise = aug.lowpass(noise, band_hz)
        if aug.power(noise) <= 0:  # a silent noise file: fall back to synthetic noise
            noise = aug.coloured_noise(n, rng)
            if band_hz < SAMPLE_RATE / 2:
                noise = aug.lowpass(noise, band_hz)
        return noise, names

    def _other_speakers(self, exclude: AudioFile) -> list[AudioFile]:
        """Speech files of other speakers than `exclude`'s (all of them if there are none)."""
        return [f for f in self.corpus.speech if f.group != exclude.group] or self.corpus.speech

    def _talker(self, rng: np.random.Generator, exclude: AudioFile, band_hz: float) -> tuple[
            np.ndarray, str]:
        """One other speaker's voice, `length` samples, in the wanted voice's band."""
        others = self._other_speakers(exclude)
        f = others[int(rng.integers(len(others)))]
        voice = loop_to_length(read_48k(f, self.config.seconds, rng), self.length, rng)
        if band_hz < SAMPLE_RATE / 2:
            voice = aug.lowpass(voice, band_hz)
        if aug.power(voice) <= 0:
            voice = aug.coloured_noise(self.length, rng)
        return voice, f.path.name

    # -- one example

    def draw(self, rng: np.random.Generator) -> Example:
        cfg, a = self.config, self.config.augment
        meta: dict[str, object] = {}
        speech, f = self._speech(rng)
        if aug.power(speech) <= 0:
            speech, f = self._speech(rng)
        if cfg.p_pause and rng.random() < cfg.p_pause:
            paused, meta["pause_s"] = self._pause(speech, rng)
            if aug.power(paused) > 0:  # the rest can be a silent gap: then keep the speech
                speech = paused
            else:
                meta["pause_s"] = 0.0
        band_hz = min(f.sample_rate, SAMPLE_RATE) / 2
        meta["speech"] = f.path.name
        if rng.random() < a.p_speech_eq:
            speech = aug.random_eq(speech, rng)
            meta["speech_eq"] = True
        target = speech
        if rng.random() < a.p_reverb:
            real = self.corpus.rirs and rng.random() < a.p_real_rir
            if real:
                rf = self.corpus.rirs[int(rng.integers(len(self.corpus.rirs)))]
                rir = aug.resample(sf.read(str(rf.path), dtype="float32")[0], rf.sample_rate)
            else:
                rir = aug.synthetic_rir(rng)
            speech, target = aug.reverberate(speech, rir)
            meta["reverb"] = "real" if real else "synthetic"
        noise, meta["noises"] = self._noise(rng, f, band_hz)
        snr = float(rng.uniform(*cfg.snr_db))
        noisy, noise = mix_at_snr(speech, noise, snr)
        if cfg.p_talker and rng.random() < cfg.p_talker:
            talker, meta["talker"] = self._talker(rng, f, band_hz)
            below = float(rng.uniform(*cfg.talker_db))
            _, talker = mix_at_snr(speech, talker, below)
            noisy, noise = noisy + talker, noise + talker
            meta["talker_db"] = below

        level = float(rng.uniform(*cfg.level_dbfs))
        gain = aug.db_to_gain(level) / np.sqrt(aug.power(noisy) + 1e-12)
        peak = float(np.max(np.abs(noisy))) * gain
        if peak > 0.99:  # keep the level draw from clipping; clipping is its own augmentation
            gain *= 0.99 / peak
        noisy, clean = noisy * gain, target * gain
        meta["gain_db"] = 20 * np.log10(gain)

        if rng.random() < a.p_opus:
            bitrate = int(a.opus_bitrates[int(rng.integers(len(a.opus_bitrates)))])
            lost: set[int] = set()
            concealment = "zero"
            if rng.random() < a.p_packet_loss:
                lost = aug.draw_losses(self.length, rng, float(rng.uniform(*a.loss_rate)))
                concealment = "zero" if rng.random() < 0.5 else "repeat"
                meta["lost_packets"] = len(lost)
                meta["concealment"] = concealment
            # The target goes through the same codec and losses: the model is to remove the
            # noise, not to undo the codec's band limit or invent speech in a lost packet.
            noisy = aug.opus_round_trip(noisy, bitrate, lost, concealment)
            clean = aug.opus_round_trip(clean, bitrate, lost, concealment)
            meta["opus_bitrate"] = bitrate
        if rng.random() < a.p_clip:
            noisy = aug.clip(noisy, rng)
            meta["clipped"] = True
        return Example(noisy=noisy.astype(np.float32), clean=clean.astype(np.float32),
                       speech=speech, noise=noise, snr_db=snr, band_hz=band_hz, meta=meta)

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(noisy, clean), each float32 [size, length]."""
        examples = [self.draw(rng) for _ in range(size)]
        return (np.stack([e.noisy for e in examples]), np.stack([e.clean for e in examples]))
