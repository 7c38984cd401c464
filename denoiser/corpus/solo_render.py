"""Solo-instrument phrases rendered from sampled instruments (fluidsynth + a GM soundfont).

The game soundtracks hold little solo playing (a lone trumpet, a ragtime piano, a violin line),
and that is what a speech/music classifier confuses with a voice: one harmonic source, with
pauses between phrases. Here phrases are generated (a random walk on a scale, phrase lengths
and breaths like a player's, vibrato on sustained notes of wind and string instruments, stride
bass and chords for the piano, strums and arpeggios for the guitar) and rendered with
`fluidsynth` from real instrument recordings in a soundfont: FluidR3_GM (Debian
`fluid-soundfont-gm`, MIT) for training, MuseScore_General (`musescore-general-soundfont-small`,
MIT) for the dev set, so dev phrases are disjoint from training by samples as well as by notes.
Rows go to `solo_manifest.json` beside the packages' manifest, with `kind_source: "rendered"`;
`music_packages.tracks()` reads both.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from denoiser.corpus.music_packages import RATES, SOLO_MANIFEST, CorpusError

SOUNDFONTS = {
    "train": ("fluid-soundfont-gm", Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")),
    "dev": ("musescore-general-soundfont-small",
            Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3")),
}
PPQ = 480

# kind -> (GM program, lowest, highest MIDI note, style)
INSTRUMENTS: dict[str, tuple[tuple[str, int, int, int, str], ...]] = {
    "solo_piano": (("grand_piano", 0, 36, 90, "piano"), ("bright_piano", 1, 36, 90, "piano"),
                   ("honky_tonk", 3, 36, 88, "piano")),
    "solo_brass": (("trumpet", 56, 55, 82, "wind"), ("trombone", 57, 40, 70, "wind"),
                   ("french_horn", 60, 41, 72, "wind"), ("muted_trumpet", 59, 55, 82, "wind")),
    "solo_strings": (("violin", 40, 55, 88, "bowed"), ("cello", 42, 36, 69, "bowed"),
                     ("viola", 41, 48, 76, "bowed"), ("pizzicato", 45, 43, 79, "plucked")),
    "solo_woodwind": (("flute", 73, 60, 93, "wind"), ("clarinet", 71, 50, 84, "wind"),
                      ("alto_sax", 65, 49, 80, "wind"), ("oboe", 68, 58, 87, "wind")),
    "solo_guitar": (("nylon_guitar", 24, 40, 79, "guitar"), ("steel_guitar", 25, 40, 79, "guitar"),
                    ("jazz_guitar", 26, 40, 79, "guitar")),
}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10),
          "dorian": (0, 2, 3, 5, 7, 9, 10), "blues": (0, 3, 5, 6, 7, 10),
          "pentatonic": (0, 2, 4, 7, 9)}


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def midi_file(events: list[tuple[float, bytes]], bpm: float) -> bytes:
    """A format-0 MIDI file from (time in beats, message) events."""
    tempo = round(60_000_000 / bpm)
    body = bytearray(b"\x00\xff\x51\x03" + tempo.to_bytes(3, "big"))
    last = 0
    for beat, msg in sorted(events, key=lambda e: (e[0], e[1][0] & 0xF0 != 0x80)):
        tick = max(last, round(beat * PPQ))
        body += _vlq(tick - last) + msg
        last = tick
    body += b"\x00\xff\x2f\x00"
    return (b"MThd" + struct.pack(">IHHH", 6, 0, 1, PPQ)
            + b"MTrk" + struct.pack(">I", len(body)) + bytes(body))


@dataclass
class Phrasing:
    bpm: float
    scale: tuple[int, ...]
    root: int
    swing: bool


def _note(events: list[tuple[float, bytes]], t: float, dur: float, pitch: int, vel: int,
          ch: int = 0) -> None:
    pitch = int(min(127, max(0, pitch)))
    events.append((t, bytes((0x90 | ch, pitch, int(min(127, max(1, vel)))))))
    events.append((t + dur, bytes((0x80 | ch, pitch, 0))))


def _vibrato(events: list[tuple[float, bytes]], rng: np.random.Generator, t: float, dur: float,
             bpm: float, ch: int = 0) -> None:
    """Pitch-bend vibrato (5-6.5 Hz, 15-40 cents) over the second half of a sustained note."""
    rate, depth = rng.uniform(5.0, 6.5), rng.uniform(15, 40) / 200  # in semitone / 2 range
    beats_per_s = bpm / 60
    start = t + dur * rng.uniform(0.2, 0.5)
    k = 0
    while True:
        b = start + k * 0.02 * beats_per_s
        if b >= t + dur:
            break
        v = 8192 + int(8191 * depth * math.sin(2 * math.pi * rate * k * 0.02))
        events.append((b, bytes((0xE0 | ch, v & 0x7F, v >> 7))))
        k += 1
    events.append((t + dur, bytes((0xE0 | ch, 0x00, 0x40))))


def _melody(rng: np.random.Generator, ph: Phrasing, lo: int, hi: int, beats: float,
            style: str, events: list[tuple[float, bytes]], ch: int = 0,
            rests: bool = True) -> None:
    degrees = [ph.root + 12 * o + s for o in range(-4, 5) for s in ph.scale]
    pool = [p for p in degrees if lo <= p <= hi]
    i = len(pool) // 2 + int(rng.integers(-2, 3))
    t = 0.0
    while t < beats:
        phrase_end = t + float(rng.choice((4.0, 6.0, 8.0, 12.0)))
        while t < min(phrase_end, beats):
            dur = float(rng.choice((0.25, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0, 3.0),
                                   p=(0.1, 0.2, 0.2, 0.2, 0.1, 0.08, 0.07, 0.05)))
            if ph.swing and dur == 0.5:
                dur = 0.66 if round(t * 2) % 2 == 0 else 0.34
            step = int(rng.choice((-3, -2, -1, -1, 0, 1, 1, 2, 3, 5, -5)))
            i = int(min(len(pool) - 1, max(0, i + step)))
            legato = 0.95 if style in ("wind", "bowed") else 0.7 if style == "plucked" else 0.85
            vel = int(rng.normal(88, 14))
            _note(events, t, dur * legato, pool[i], vel, ch)
            if style in ("wind", "bowed") and dur * 60 / ph.bpm > 0.4 and rng.random() < 0.7:
                _vibrato(events, rng, t, dur * legato, ph.bpm, ch)
            t += dur
        if rests:  # a breath or a bow change between phrases, as a player has
            t += float(rng.choice((0.5, 1.0, 1.5, 2.0, 3.0)))


def _piano(rng: np.random.Generator, ph: Phrasing, beats: float,
           events: list[tuple[float, bytes]]) -> None:
    """Stride / ragtime left hand (bass on 1 and 3, chord on 2 and 4) or arpeggios, and a
    syncopated right-hand melody."""
    chords = [(0, 4, 7), (5, 9, 12), (7, 11, 14), (9, 12, 16), (2, 5, 9)]
    style = rng.choice(("stride", "arpeggio", "chorale"))
    root = ph.root % 12 + 36
    t = 0.0
    while t < beats:
        c = chords[int(rng.integers(len(chords)))]
        for b in range(4):
            if style == "stride":
                if b % 2 == 0:
                    _note(events, t + b, 0.45, root + c[0] - 12 * (b == 2), int(rng.normal(80, 8)))
                else:
                    for n in c:
                        _note(events, t + b, 0.4, root + 12 + n, int(rng.normal(70, 8)))
            elif style == "arpeggio":
                for k in range(4):
                    _note(events, t + b + k / 4, 0.6, root + 12 + c[k % 3] + 12 * (k == 3),
                          int(rng.normal(65, 8)))
            elif b == 0:
                for n in c:
                    _note(events, t, 3.8, root + 12 + n, int(rng.normal(72, 8)))
        t += 4
    _melody(rng, ph, 64, 88, beats, "piano", events, rests=rng.random() < 0.5)


def _guitar(rng: np.random.Generator, ph: Phrasing, beats: float,
            events: list[tuple[float, bytes]]) -> None:
    """Strummed chords (strings 10-30 ms apart) or finger-picked arpeggios, sometimes a line."""
    shapes = [(0, 7, 12, 16, 19, 24), (0, 7, 12, 15, 19, 24), (0, 5, 10, 15, 19, 24)]
    if rng.random() < 0.35:
        _melody(rng, ph, 52, 79, beats, "plucked", events)
        return
    strum = rng.random() < 0.5
    root = ph.root % 12 + 40
    t = 0.0
    while t < beats:
        shape = shapes[int(rng.integers(len(shapes)))]
        base = root + int(rng.choice((0, 5, 7, 9, -3)))
        for b in range(4):
            if strum:
                gap = rng.uniform(0.01, 0.03) * ph.bpm / 60
                down = rng.random() < 0.7
                for k, n in enumerate(shape if down else shape[::-1]):
                    _note(events, t + b + k * gap, 0.9, base + n, int(rng.normal(80, 10)))
            else:
                for k in range(2):
                    n = shape[int(rng.integers(len(shape)))]
                    _note(events, t + b + k / 2, 0.9, base + n, int(rng.normal(72, 10)))
        t += 4


def phrase_midi(kind: str, instrument: tuple[str, int, int, int, str], seconds: float,
                rng: np.random.Generator) -> bytes:
    """A generated piece of about `seconds` for one instrument."""
    _, program, lo, hi, style = instrument
    ph = Phrasing(bpm=float(rng.uniform(60, 160)),
                  scale=SCALES[str(rng.choice(list(SCALES)))],
                  root=int(rng.integers(0, 12)) + 60, swing=bool(rng.random() < 0.3))
    beats = seconds * ph.bpm / 60
    events: list[tuple[float, bytes]] = [(0.0, bytes((0xC0, program))),
                                         (0.0, bytes((0xB0, 7, 110))),
                                         (0.0, bytes((0xB0, 101, 0))), (0.0, bytes((0xB0, 100, 0))),
                                         (0.0, bytes((0xB0, 6, 2)))]  # bend range 2 semitones
    if style == "piano":
        _piano(rng, ph, beats, events)
    elif style == "guitar":
        _guitar(rng, ph, beats, events)
    else:
        _melody(rng, ph, lo, hi, beats, style, events)
    return midi_file(events, ph.bpm)


def render(midi: bytes, soundfont: Path, rate: int, reverb: bool) -> np.ndarray:
    """Render with the fluidsynth command line; mono float32 at `rate`."""
    import soundfile as sf

    if not soundfont.is_file():
        raise CorpusError(f"{soundfont} is missing (apt-get install fluid-soundfont-gm "
                          "musescore-general-soundfont-small)")
    with tempfile.TemporaryDirectory(prefix="solo-") as tmp:
        mid, wav = Path(tmp) / "x.mid", Path(tmp) / "x.wav"
        mid.write_bytes(midi)
        args = ["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(rate), "-F", str(wav),
                "-R", "1" if reverb else "0", "-C", "0", str(soundfont), str(mid)]
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=300)
        except FileNotFoundError as exc:
            raise CorpusError("fluidsynth is not installed (apt-get install fluidsynth)") from exc
        if done.returncode != 0 or not wav.is_file():
            raise CorpusError(f"fluidsynth failed: {done.stderr.strip()[-300:]}")
        x, _ = sf.read(wav, dtype="float32", always_2d=True)
    return x.mean(1)


def _soundfont_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def render_all(cache: Path, pieces: dict[str, int] | None = None, seconds: float = 40.0,
               seed: int = 0) -> dict[str, Any]:
    """Render the solo phrases of both splits into the cache and add them to its manifest."""
    import soundfile as sf

    from denoiser.bypass.analysis import resample

    pieces = pieces or {"train": 5, "dev": 1}
    manifest: dict[str, Any] = {"about": "solo phrases rendered by "
                                   "denoiser/corpus/solo_render.py", "packages": {}}
    rows: list[dict[str, Any]] = []
    for split, (package, sf_path) in SOUNDFONTS.items():
        rng = np.random.default_rng(seed + (0 if split == "train" else 1000))
        version = _soundfont_version(package)
        for kind, instruments in INSTRUMENTS.items():
            for inst in instruments:
                for k in range(pieces[split]):
                    x = render(phrase_midi(kind, inst, seconds, rng), sf_path, 48_000,
                               reverb=bool(rng.random() < 0.6))
                    nz = np.flatnonzero(np.abs(x) > 1e-4)
                    if len(nz) == 0:
                        continue
                    x = x[: nz[-1] + 4800]
                    peak = float(np.abs(x).max())
                    if peak > 0.99:
                        x = x / peak * 0.99
                    name = f"{inst[0]}_{k}"
                    wavs = {}
                    for r in RATES:
                        out = cache / f"wav{r // 1000}k" / f"render-{split}" / kind / f"{name}.wav"
                        out.parent.mkdir(parents=True, exist_ok=True)
                        sf.write(out, x if r == 48_000 else resample(x, 48_000, r), r,
                                 subtype="PCM_16")
                        wavs[str(r)] = out.relative_to(cache).as_posix()
                    rows.append({"package": package, "version": version,
                                 "member": f"render/{kind}/{name} (GM program {inst[1]})",
                                 "licence": "MIT (soundfont samples); notes generated here",
                                 "seconds": round(len(x) / 48_000, 2), "kind": kind,
                                 "split": split, "wav": wavs, "kind_source": "rendered",
                                 "source_rate": 48_000})
        manifest["packages"][f"render-{split}"] = {
            "version": version, "soundfont": str(sf_path), "split": split, "seed": seed,
            "licence": "MIT"}
    manifest["tracks"] = sorted(rows, key=lambda t: (str(t["package"]), str(t["member"])))
    manifest["minutes"] = {s: round(sum(float(t["seconds"]) for t in rows
                                        if t["split"] == s) / 60, 1) for s in ("train", "dev")}
    tmp = cache / f"{SOLO_MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(cache / SOLO_MANIFEST)
    return manifest
