"""Play notes from a SoundFont 2 file with numpy: the recorded samples of a preset, pitched, looped and enveloped.

Reading the SF2's PCM directly (rather than running fluidsynth) keeps the output a function of the .sf2 bytes
alone, needs no extra package and costs milliseconds per note. It honours what decides how a note sounds:
key and velocity zones, root key and tuning, loops, the volume envelope (with key scaling), attenuation and
the low-pass filter with the standard velocity-to-cutoff modulator and the modulation envelope's sweep of it
(hi-hats and plucks open and close it). It leaves out the LFOs, pitch modulation, chorus and reverb: the sets
add their own room.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.synth.dsp import SAMPLE_RATE

# Generator numbers of the SF2 2.04 specification (section 8.1.2) that this player uses.
START_OFFSET, END_OFFSET, LOOP_START_OFFSET, LOOP_END_OFFSET, START_COARSE = 0, 1, 2, 3, 4
FILTER_FC, FILTER_Q, MOD_ENV_TO_FC, END_COARSE = 8, 9, 11, 12
DELAY_MOD, ATTACK_MOD, HOLD_MOD, DECAY_MOD, SUSTAIN_MOD, RELEASE_MOD, KEY_TO_MOD_HOLD, KEY_TO_MOD_DECAY = range(25, 33)
DELAY_VOL, ATTACK_VOL, HOLD_VOL, DECAY_VOL, SUSTAIN_VOL, RELEASE_VOL = 33, 34, 35, 36, 37, 38
KEY_TO_HOLD, KEY_TO_DECAY = 39, 40
INSTRUMENT, KEY_RANGE, VEL_RANGE, LOOP_START_COARSE = 41, 43, 44, 45
ATTENUATION, LOOP_END_COARSE, COARSE_TUNE, FINE_TUNE, SAMPLE_ID, SAMPLE_MODES = 48, 50, 51, 52, 53, 54
KEYNUM, VELOCITY, SCALE_TUNING, EXCLUSIVE_CLASS, ROOT_KEY = 46, 47, 56, 57, 58

_DEFAULTS = {FILTER_FC: 13500, SCALE_TUNING: 100, ROOT_KEY: -1,
             **{gen: -12000 for gen in (DELAY_VOL, ATTACK_VOL, HOLD_VOL, DECAY_VOL, RELEASE_VOL,
                                        DELAY_MOD, ATTACK_MOD, HOLD_MOD, DECAY_MOD, RELEASE_MOD)}}
# Generators that only an instrument zone may set; a preset zone's values for them are ignored (spec 8.5).
_INSTRUMENT_ONLY = {START_OFFSET, END_OFFSET, LOOP_START_OFFSET, LOOP_END_OFFSET, START_COARSE, END_COARSE,
                    LOOP_START_COARSE, LOOP_END_COARSE, SAMPLE_MODES, ROOT_KEY, KEYNUM, VELOCITY, EXCLUSIVE_CLASS}
_RANGES = (KEY_RANGE, VEL_RANGE)
FILTER_BLOCK = 512  # a swept cutoff is updated every ~12 ms, in steps of FILTER_STEP_CENTS
FILTER_STEP_CENTS = 50
ENVELOPE_STEP = 32  # envelopes are computed every 0.7 ms and interpolated between
ATTENUATION_SCALE = 0.4  # FluidSynth's reading of initialAttenuation, which GM fonts are voiced for
VELOCITY_TO_CUTOFF_CENTS = -2400  # the spec's default modulator: softer notes are darker
SILENCE_DB = -80.0  # a released note is cut where its envelope falls below this


class SoundFontError(ValueError):
    """The file is not a SoundFont 2 this player can read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class _Sample:
    start: int
    end: int
    loop_start: int
    loop_end: int
    rate: int
    root_key: int
    correction_cents: int
    right_channel: bool  # the right half of a stereo pair


@dataclass(frozen=True)
class _Zone:
    generators: dict[int, int]  # for ranges: (lo, hi) packed as lo | hi << 8

    def covers(self, key: int, velocity: int) -> bool:
        for gen, value in ((KEY_RANGE, key), (VEL_RANGE, velocity)):
            packed = self.generators.get(gen, 127 << 8)
            if not (packed & 0xFF) <= value <= (packed >> 8):
                return False
        return True


def _chunks(data: memoryview, offset: int, end: int, path: Path) -> dict[str, tuple[int, int]]:
    """Chunk id -> (data offset, size) of the chunks in data[offset:end]; LIST chunks are keyed by their type."""
    found = {}
    while offset + 8 <= end:
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = offset + 8
        if body + size > end:
            raise SoundFontError(f"{path}: chunk {chunk_id!r} at byte {offset} runs past the end of the file")
        key = bytes(data[body : body + 4]).decode("latin-1") if chunk_id == b"LIST" else chunk_id.decode("latin-1")
        found[key] = (body + 4, size - 4) if chunk_id == b"LIST" else (body, size)
        offset = body + size + (size & 1)
    return found


def _need(chunks: dict[str, tuple[int, int]], name: str, path: Path) -> tuple[int, int]:
    if name not in chunks:
        raise SoundFontError(f"{path}: missing the {name!r} chunk (not a complete SoundFont 2 file)")
    return chunks[name]


def _records(data: memoryview, where: tuple[int, int], fmt: str) -> list[tuple]:
    offset, size = where
    step = struct.calcsize(fmt)
    return [struct.unpack_from(fmt, data, offset + i * step) for i in range(size // step)]


def _zones(bags: list[tuple], gens: list[tuple], first_bag: int, last_bag: int, terminal: int
           ) -> tuple[dict[int, int], list[_Zone]]:
    """The global generators and the local zones of one preset or instrument (bags [first_bag, last_bag))."""
    global_gens: dict[int, int] = {}
    local = []
    for bag in range(first_bag, last_bag):
        zone = {}
        for oper, amount in gens[bags[bag][0] : bags[bag + 1][0]]:
            zone[oper] = amount if oper in _RANGES else (amount - 65536 if amount >= 32768 else amount)
        if terminal in zone:
            local.append(zone)
        elif bag == first_bag:
            global_gens = zone  # a first zone without an instrument/sample holds the defaults of the others
    return global_gens, [_Zone(z) for z in local]


class SoundFont:
    """The presets of one .sf2 file; ``note`` renders one note as float64 at the project's sample rate."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            raw = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as error:
            raise SoundFontError(f"{self.path}: cannot read ({error})") from error
        data = memoryview(raw)
        if len(data) < 12 or bytes(data[:4]) != b"RIFF" or bytes(data[8:12]) != b"sfbk":
            raise SoundFontError(f"{self.path}: not a SoundFont 2 file (expected a RIFF 'sfbk' header)")
        top = _chunks(data, 12, len(data), self.path)
        sdta, pdta = (_need(top, name, self.path) for name in ("sdta", "pdta"))
        sdta = _chunks(data, sdta[0], sum(sdta), self.path)
        pdta = _chunks(data, pdta[0], sum(pdta), self.path)
        offset, size = _need(sdta, "smpl", self.path)
        self._pcm = np.frombuffer(raw, dtype="<i2", count=size // 2, offset=offset)

        def records(name: str, fmt: str) -> list[tuple]:
            return _records(data, _need(pdta, name, self.path), fmt)

        phdr, pbag, pgen = records("phdr", "<20sHHHIII"), records("pbag", "<HH"), records("pgen", "<HH")
        inst, ibag, igen = records("inst", "<20sH"), records("ibag", "<HH"), records("igen", "<HH")
        self._samples = [_Sample(s, e, ls, le, rate, pitch if pitch <= 127 else 60, corr, kind & 0x7FFF == 2)
                         for _, s, e, ls, le, rate, pitch, corr, _, kind in records("shdr", "<20sIIIIIBbHH")]
        self._instruments = [_zones(ibag, igen, inst[i][1], inst[i + 1][1], SAMPLE_ID) for i in range(len(inst) - 1)]
        self.presets: dict[tuple[int, int], str] = {}
        self._preset_zones: dict[tuple[int, int], tuple[dict[int, int], list[_Zone]]] = {}
        for i in range(len(phdr) - 1):  # the last record is the terminal 'EOP'
            name, program, bank, first_bag = phdr[i][:4]
            self.presets[(bank, program)] = name.split(b"\0")[0].decode("latin-1").strip()
            self._preset_zones[(bank, program)] = _zones(pbag, pgen, first_bag, phdr[i + 1][3], INSTRUMENT)

    def _voices(self, bank: int, program: int, key: int, velocity: int) -> list[tuple[dict[int, int], _Sample]]:
        """(generators, sample) of every instrument zone the note sounds: its layers, one side of stereo pairs."""
        if (bank, program) not in self._preset_zones:
            raise SoundFontError(f"{self.path}: no preset bank {bank} program {program}")
        preset_global, preset_zones = self._preset_zones[(bank, program)]
        voices = []
        for pzone in preset_zones:
            if not pzone.covers(key, velocity):
                continue
            preset_gens = {**preset_global, **pzone.generators}
            inst_global, inst_zones = self._instruments[preset_gens[INSTRUMENT]]
            for izone in inst_zones:
                if not izone.covers(key, velocity):
                    continue
                gens = {**_DEFAULTS, **inst_global, **izone.generators}
                for gen, value in preset_gens.items():  # preset values add to the instrument's (spec 9.4)
                    if gen not in _INSTRUMENT_ONLY and gen not in (INSTRUMENT, KEY_RANGE, VEL_RANGE):
                        gens[gen] = gens.get(gen, 0) + value
                voices.append((gens, self._samples[gens[SAMPLE_ID]]))
        # Clips are mono, as from one microphone: play the left half of stereo pairs; both would cost twice.
        mono = [voice for voice in voices if not voice[1].right_channel]
        return mono or voices

    def note(self, bank: int, program: int, key: int, velocity: int, hold_s: float, max_samples: int,
             cents: float = 0.0) -> np.ndarray:
        """One note held ``hold_s`` seconds then released, at most ``max_samples`` long (shorter when it dies)."""
        out = np.zeros(0)
        for gens, sample in self._voices(bank, program, key, velocity):
            voice = self._render_voice(gens, sample, key, velocity, hold_s, max_samples, cents)
            if voice.shape[0] > out.shape[0]:
                voice[: out.shape[0]] += out
                out = voice
            else:
                out[: voice.shape[0]] += voice
        return out

    def _render_voice(self, gens: dict[int, int], sample: _Sample, key: int, velocity: int, hold_s: float,
                      max_samples: int, cents: float) -> np.ndarray:
        root = gens[ROOT_KEY] if gens[ROOT_KEY] >= 0 else sample.root_key
        pitch_cents = ((key - root) * gens[SCALE_TUNING] + 100 * gens.get(COARSE_TUNE, 0) + gens.get(FINE_TUNE, 0)
                       + sample.correction_cents + cents)
        step = 2.0 ** (pitch_cents / 1200.0) * sample.rate / SAMPLE_RATE  # source samples per output sample
        start = sample.start + gens.get(START_OFFSET, 0) + 32768 * gens.get(START_COARSE, 0)
        end = min(sample.end + gens.get(END_OFFSET, 0) + 32768 * gens.get(END_COARSE, 0), self._pcm.shape[0])
        loop_start = sample.loop_start + gens.get(LOOP_START_OFFSET, 0) + 32768 * gens.get(LOOP_START_COARSE, 0) - start
        loop_end = sample.loop_end + gens.get(LOOP_END_OFFSET, 0) + 32768 * gens.get(LOOP_END_COARSE, 0) - start
        looped = gens.get(SAMPLE_MODES, 0) & 1 and 0 <= loop_start < loop_end - 1 <= end - start
        n_max = max_samples if looped else min(max_samples, max(0, int((end - start - 1) / step)))
        t, gain = _volume_envelope(gens, key, hold_s, n_max)
        n = t.shape[0]
        if n == 0:
            return np.zeros(0)
        position = np.arange(n) * step
        if looped:  # past the loop's end, wrap back into it (held notes sustain on the loop)
            period = loop_end - loop_start
            position = np.where(position >= loop_end, loop_start + np.mod(position - loop_start, period), position)
        index = position.astype(np.int64)
        frac = position - index
        after = index + 1
        if looped:
            after = np.where(after >= loop_end, after - (loop_end - loop_start), after)
        pcm = self._pcm[start:end]
        wave = (pcm[index] * (1.0 - frac) + pcm[after] * frac) / 32768.0
        attenuation_cb = ATTENUATION_SCALE * gens.get(ATTENUATION, 0) + 400.0 * math.log10(127.0 / max(velocity, 1))
        wave *= gain * 10.0 ** (-attenuation_cb / 200.0)
        cutoff_cents = gens[FILTER_FC] + VELOCITY_TO_CUTOFF_CENTS * (1.0 - velocity / 127.0)
        if gens.get(MOD_ENV_TO_FC, 0):
            blocks = t[FILTER_BLOCK // 2 :: FILTER_BLOCK]
            cutoff_cents = cutoff_cents + gens[MOD_ENV_TO_FC] * _modulation_envelope(gens, key, hold_s, blocks)
        return _lowpass(wave, np.atleast_1d(cutoff_cents), gens.get(FILTER_Q, 0))


def _seconds(timecents: float) -> float:
    return 2.0 ** (timecents / 1200.0)


def _stages(gens: dict[int, int], key: int, first: int, key_to_hold: int, key_to_decay: int
            ) -> tuple[float, float, float, float, float]:
    """(delay, attack, hold, decay, release) seconds of the volume or modulation envelope; hold/decay key-scaled."""
    delay, attack, hold, decay, _, release = (gens.get(first + i, 0) for i in range(6))
    hold += (60 - key) * gens.get(key_to_hold, 0)
    decay += (60 - key) * gens.get(key_to_decay, 0)
    return _seconds(delay), _seconds(attack), _seconds(hold), _seconds(decay), _seconds(release)


def _volume_envelope(gens: dict[int, int], key: int, hold_s: float, max_samples: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Times and gains of the SF2 volume envelope: linear attack, decay and release in dB; cut when silent."""
    delay, attack, hold, decay, release = _stages(gens, key, DELAY_VOL, KEY_TO_HOLD, KEY_TO_DECAY)
    sustain_db = -min(max(gens.get(SUSTAIN_VOL, 0), 0), 1440) / 10.0
    release_len = release * SILENCE_DB / -100.0  # the release falls 100 dB per ``release`` seconds
    n = max(0, min(max_samples, int((hold_s + release_len) * SAMPLE_RATE) + 1))
    t = np.arange(n) / SAMPLE_RATE
    coarse = t[::ENVELOPE_STEP]

    def level_db(times: np.ndarray) -> np.ndarray:
        return np.maximum(-100.0 * np.maximum(times - (delay + attack + hold), 0.0) / decay, sustain_db)

    release_db = np.where(coarse >= hold_s, -100.0 * (coarse - hold_s) / release, 0.0)
    db = np.where(coarse >= hold_s, level_db(np.array([hold_s])) + release_db, level_db(coarse))
    rise = np.clip((np.minimum(coarse, hold_s) - delay) / attack, 0.0, 1.0)
    gain = np.interp(t, coarse, 10.0 ** (db / 20.0) * rise) if n else t
    return t, gain


def _modulation_envelope(gens: dict[int, int], key: int, hold_s: float, t: np.ndarray) -> np.ndarray:
    """The SF2 modulation envelope (0..1 in linear segments) at times ``t``."""
    delay, attack, hold, decay, release = _stages(gens, key, DELAY_MOD, KEY_TO_MOD_HOLD, KEY_TO_MOD_DECAY)
    sustain = 1.0 - min(max(gens.get(SUSTAIN_MOD, 0), 0), 1000) / 1000.0

    def level(times: np.ndarray) -> np.ndarray:
        rising = np.clip((times - delay) / attack, 0.0, 1.0)
        falling = np.maximum(1.0 - np.maximum(times - (delay + attack + hold), 0.0) / decay, sustain)
        return np.minimum(rising, falling)

    at_release = level(np.array([hold_s]))[0]
    return np.where(t >= hold_s, np.maximum(at_release - (t - hold_s) / release, 0.0), level(t))


def _lowpass(wave: np.ndarray, cutoff_cents: np.ndarray, q_cb: int) -> np.ndarray:
    """The SF2 resonant low-pass as RBJ biquads, one per run of FILTER_BLOCKs whose cutoff stays in one step."""
    from scipy.signal import lfilter  # scipy.signal takes seconds to import; only this set needs it

    top = 1200.0 * math.log2(0.45 * SAMPLE_RATE / 8.176)  # above this the filter passes all that is sampled
    steps = np.round(np.minimum(cutoff_cents, top) / FILTER_STEP_CENTS)
    if np.all(steps * FILTER_STEP_CENTS >= top):
        return wave
    q = 10.0 ** (q_cb / 200.0) / math.sqrt(2)
    block = FILTER_BLOCK if steps.shape[0] > 1 else wave.shape[0]
    changes = np.flatnonzero(np.diff(steps)) + 1
    out = np.empty_like(wave)
    state = np.zeros(2)
    for first, stop in zip(np.r_[0, changes], np.r_[changes, steps.shape[0]]):
        lo, hi = first * block, wave.shape[0] if stop == steps.shape[0] else stop * block
        w0 = 2 * math.pi * 8.176 * 2.0 ** (steps[first] * FILTER_STEP_CENTS / 1200.0) / SAMPLE_RATE
        alpha, cos_w0 = math.sin(w0) / (2 * q), math.cos(w0)
        b = np.array([(1 - cos_w0) / 2, 1 - cos_w0, (1 - cos_w0) / 2]) / (1 + alpha)
        a = np.array([1.0, -2 * cos_w0 / (1 + alpha), (1 - alpha) / (1 + alpha)])
        out[lo:hi], state = lfilter(b, a, wave[lo:hi], zi=state)
    return out
