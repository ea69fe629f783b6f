"""The "sampled" set: 24 labels played from recorded instrument, drum and effect samples and spoken by espeak-ng.

Curated and test clips come from FluidR3_GM.sf2 and one set of voices; noisy clips from the other font
(TimGM6mb.sf2: other recordings of the same instruments) and other voices, through a cheap camera's chain
(room, band limit, hum) at lower SNR, with ~35% wrong labels: FAT2019's Freesound/Flickr shift in miniature.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from trainer.labels import load_labels
from trainer.synth.dsp import SAMPLE_RATE, band_noise, fade_edges, fast_len, normalise, room, time_axis, to_int16
from trainer.synth.layout import SPLIT_IDS, BuiltinSet, Clip, MissingSoundSourceError, RenderedClip, Renderer
from trainer.synth.playing import Domain, Melodic, Percussive, Presets, Spoken, Strummed, Style, Texture, span
from trainer.synth.soundfont import SoundFont
from trainer.synth.speech import PhraseBank

# Difficulty knobs (measured in benchmarks/README.md: validation lwlrap of the demo config).
EVENT_SNR_DB = (-9.0, 9.0)  # event RMS while it sounds over background RMS, curated and test
NOISY_SNR_SHIFT_DB = -6.0  # noisy events sit this much deeper in their (louder, humming) background
NOISY_LOWPASS_HZ = (3500.0, 9000.0)  # the noisy split's microphone and codec cut the top off

FLUID_SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
TIM_SF2 = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
ESPEAK = "espeak-ng"
# What the set renders from and the Debian package that installs it.
PACKAGES = {FLUID_SF2.name: "fluid-soundfont-gm", TIM_SF2.name: "timgm6mb-soundfont", ESPEAK: "espeak-ng"}

KITS = ((128, 0), (128, 8), (128, 16), (128, 32), (128, 40))  # Standard, Room, Power, Jazz, Brush: in both fonts
GUITARS = ((0, 24), (0, 25))  # nylon and steel string


def _same(programs: tuple[tuple[int, int], ...], keys: tuple[int, ...]) -> dict[str, Presets]:
    """The same GM programs and keys in both fonts (General MIDI numbers mean the same instrument)."""
    return {"curated": Presets(programs, keys), "noisy": Presets(programs, keys)}


# label -> how it is played: curated/test from FluidR3 presets and voices, noisy from TimGM6mb and other voices.
# Programs are General MIDI (bank, program-1); bank 8 holds FluidR3's variations; bank 128 the drum kits.
LABEL_SOURCES: dict[str, Style] = {
    "Accordion": Melodic(Presets(((0, 21), (8, 21)), span(53, 84)), Presets(((0, 21), (0, 23)), span(53, 84)),
                         notes_per_s=(1.5, 5), hold_s=(0.2, 1.0)),
    "Acoustic_guitar": Melodic(Presets(((0, 24), (0, 25), (8, 25)), span(40, 76)), Presets(GUITARS, span(40, 76)),
                               notes_per_s=(2, 7), hold_s=(0.2, 1.5)),
    "Applause": Texture(**_same(((0, 126),), span(52, 72))),
    "Bass_drum": Percussive(**_same(KITS, (35, 36)), hits_per_s=(1, 4), pattern="regular"),
    "Bass_guitar": Melodic(**_same(((0, 32), (0, 33), (0, 34), (0, 35)), span(28, 52)),
                           notes_per_s=(1.5, 6), hold_s=(0.15, 0.8)),
    "Chink_and_clink": Percussive(**_same(KITS, (80, 81)), hits_per_s=(0.7, 2), pattern="bursts", cents=(0, 1200)),
    "Child_speech_and_kid_speaking": Spoken(("en-us+f2", "en+f3", "en-us+m3", "en-us+Annie"), ("en-gb-scotland+f4", "en-029+f5",
                           "en+m2", "en-us+steph"), pitch=(75, 99), speed=(160, 210), formant=(1.12, 1.3)),
    "Chirp_and_tweet": Melodic(Presets(((0, 123),), span(60, 84)), Presets(((0, 123),), span(36, 59)),
                               notes_per_s=(2, 6), hold_s=(0.05, 0.4)),
    "Church_bell": Melodic(Presets(((8, 14), (0, 14)), span(45, 69)), Presets(((0, 14),), span(45, 69)),
                           notes_per_s=(0.5, 1.5), hold_s=(0.5, 2.0)),
    "Clapping": Percussive(**_same(KITS, (39,)), hits_per_s=(2, 6), pattern="regular", cents=(-300, 300)),
    "Electric_guitar": Melodic(Presets(((0, 26), (0, 27), (0, 28), (0, 29), (0, 30), (8, 28)), span(40, 84)),
                               Presets(((0, 26), (0, 27), (0, 28), (0, 29), (0, 30)), span(40, 84)),
                               notes_per_s=(2, 8), hold_s=(0.1, 1.0)),
    "Female_singing": Melodic(**_same(((0, 52), (0, 53)), span(60, 79)), notes_per_s=(0.7, 2.5), hold_s=(0.4, 1.5)),
    "Female_speech_and_woman_speaking": Spoken(("en-us+f1", "en-us+f2", "en+f3", "en+linda"), ("en-gb-scotland+f4", "en-029+f5",
                            "en+Andrea", "en-us-nyc+aunty"), pitch=(45, 75), speed=(140, 190)),
    "Glockenspiel": Melodic(**_same(((0, 9),), span(72, 96)), notes_per_s=(2, 8), hold_s=(0.1, 0.6)),
    "Harmonica": Melodic(**_same(((0, 22),), span(60, 84)), notes_per_s=(1.5, 5), hold_s=(0.15, 1.0)),
    "Hi-hat": Percussive(**_same(KITS, (42, 44, 46)), hits_per_s=(2, 8), pattern="regular"),
    "Knock": Percussive(**_same(KITS, (37, 77)), hits_per_s=(0.5, 1.5), pattern="bursts", cents=(-700, 0)),
    "Male_singing": Melodic(**_same(((0, 52), (0, 53)), span(43, 64)), notes_per_s=(0.7, 2.5), hold_s=(0.4, 1.5)),
    "Male_speech_and_man_speaking": Spoken(("en+m1", "en-us+m3", "en-gb-x-rp+m4", "en-us+Andy"), ("en-gb-scotland+m5", "en-029+m6",
                          "en-us-nyc+m7", "en+Mike"), pitch=(25, 55), speed=(130, 185)),
    "Marimba_and_xylophone": Melodic(**_same(((0, 12), (0, 13)), span(48, 91)), notes_per_s=(2, 8),
                                     hold_s=(0.1, 0.6)),
    "Strum": Strummed(Presets(((0, 24), (0, 25), (8, 25)), span(40, 52)), Presets(GUITARS, span(40, 52)),
                      strums_per_s=(1, 4)),
    "Tick-tock": Percussive(**_same(KITS, (76, 77)), hits_per_s=(1, 2.5), pattern="alternate", cents=(0, 400)),
    "Waves_and_surf": Texture(**_same(((0, 122),), span(48, 72))),
    "Whispering": Spoken(("en-us+whisper", "en+whisperf"), ("en-gb-scotland+whisper", "en-us+whisperf"),
                         pitch=(30, 70), speed=(120, 170)),
}

_VOCAB_ORDER = {label: i for i, label in enumerate(load_labels())}
SAMPLED_LABELS: tuple[str, ...] = tuple(sorted(LABEL_SOURCES, key=_VOCAB_ORDER.__getitem__))


def find_sources() -> tuple[Path, Path, str]:
    """(FluidR3 path, TimGM6mb path, espeak-ng executable); one error naming everything missing and the fix."""
    espeak = shutil.which(ESPEAK)
    missing = [(str(path), PACKAGES[path.name]) for path in (FLUID_SF2, TIM_SF2) if not path.is_file()]
    if espeak is None:
        missing.append((f"{ESPEAK} on PATH", PACKAGES[ESPEAK]))
    if missing:
        sudo = "sudo " if hasattr(os, "geteuid") and os.geteuid() != 0 else ""
        what = ", ".join(f"{name} (Debian package {package})" for name, package in missing)
        packages = " ".join(dict.fromkeys(package for _, package in missing))
        raise MissingSoundSourceError(f"the sampled data set needs {what}; install with: "
                                      f"{sudo}apt-get install -y {packages}")
    return FLUID_SF2, TIM_SF2, espeak


def provenance() -> str:
    """What the bytes of the set depend on besides the code: the fonts' sizes and the espeak-ng version."""
    fluid, tim, espeak = find_sources()
    version = subprocess.run([espeak, "--version"], capture_output=True, text=True, check=False).stdout
    version = version.split("Data at")[0].strip()
    return f"sources: {fluid.name} {fluid.stat().st_size} bytes, {tim.name} {tim.stat().st_size} bytes, {version}\n"


def _background(rng: np.random.Generator, n: int, noisy: bool) -> np.ndarray:
    """Coloured noise; the noisy split adds mains hum (50 or 60 Hz and harmonics) as cheap recorders pick up."""
    noise = normalise(band_noise(rng, n, 30.0, 18000.0, tilt=rng.uniform(-2.0, 0.0)))
    if not noisy:
        return noise
    mains = 50.0 if rng.random() < 0.5 else 60.0
    t = time_axis(n)
    hum = sum(np.sin(2 * np.pi * k * mains * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    return noise + rng.uniform(0.2, 1.0) * normalise(hum)


def _band_limit(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A small microphone and a lossy codec: a soft high-pass near 150 Hz and a low-pass between 3.5 and 9 kHz."""
    m = fast_len(x.shape[0])
    f = np.maximum(np.fft.rfftfreq(m, 1 / SAMPLE_RATE), 1.0)
    high, low = rng.uniform(80.0, 250.0), rng.uniform(*NOISY_LOWPASS_HZ)
    gain = 1 / np.sqrt(1 + (high / f) ** 4) / np.sqrt(1 + (f / low) ** 8)
    return np.fft.irfft(np.fft.rfft(x, m) * gain, m)[: x.shape[0]]


def _active_normalise(event: np.ndarray) -> np.ndarray:
    """Unit RMS over the 10 ms frames within 30 dB of the loudest: SNR means 'while it sounds', sparse or dense."""
    frames = event[: event.shape[0] // 441 * 441].reshape(-1, 441) if event.shape[0] >= 441 else event[None, :]
    energy = np.mean(frames**2, axis=1)
    active = energy[energy >= energy.max() * 1e-3]
    return event / (np.sqrt(np.mean(active)) + 1e-12)


def make_renderer(seed: int) -> Renderer:
    """Open the fonts and the speech bank once; the renderer mixes each clip from them."""
    fluid_path, tim_path, espeak = find_sources()
    phrases = PhraseBank(espeak, seed)
    fonts = {False: SoundFont(fluid_path), True: SoundFont(tim_path)}
    label_ids = {label: i for i, label in enumerate(SAMPLED_LABELS)}

    def render(clip: Clip) -> RenderedClip:
        rng = np.random.default_rng([seed, SPLIT_IDS[clip.split], clip.index, 1])
        noisy = clip.split == "noisy"
        domain = Domain(fonts[noisy], noisy, SPLIT_IDS[clip.split], phrases)
        n = max(1, int(clip.seconds * SAMPLE_RATE))
        mix = _background(rng, n, noisy)
        event_labels = list(clip.labels)
        if len(event_labels) < 3 and rng.random() < 0.3:  # a label sounding twice, as in real clips
            event_labels.append(event_labels[rng.integers(len(event_labels))])
        sources = []
        for label in event_labels:
            length = min(n, max(int(0.3 * SAMPLE_RATE), int(n * rng.uniform(0.4, 1.0))))
            start = int(rng.integers(n - length + 1))
            event, source = LABEL_SOURCES[label].play(domain, label_ids[label], rng, length)
            event = _active_normalise(event)
            fade_edges(event)
            snr_db = rng.uniform(*EVENT_SNR_DB) + (NOISY_SNR_SHIFT_DB if noisy else 0.0)
            mix[start : start + length] += 10 ** (snr_db / 20) * event
            sources.append(f"{label}={source}")
        if noisy:
            mix = _band_limit(rng, room(rng, mix, max_tau_s=0.5))
        return RenderedClip(to_int16(rng, mix), tuple(sources))

    return render


SAMPLED = BuiltinSet("sampled", SAMPLED_LABELS, make_renderer, fname_namespace="sampled", provenance=provenance)
