import struct

import numpy as np
import pytest

from trainer.synth.soundfont import SoundFont, SoundFontError

RATE = 44_100
LOOP = (1000, 4000)  # both sines have a whole number of periods in it, so the loop is seamless


def _chunk(chunk_id: bytes, body: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def _gens(*pairs: tuple[int, int]) -> bytes:
    return b"".join(struct.pack("<Hh", oper, amount) for oper, amount in pairs)


def _tiny_sf2() -> bytes:
    """Two sines (441 Hz and 882 Hz, 4400 samples each, root key 69) in two presets.

    Preset 0: looped, velocity 0-63 plays the 441 Hz sine, 64-127 the 882 Hz one; release 1 s.
    Preset 1: the 441 Hz sine unlooped.
    """
    t = np.arange(4400) / RATE
    pcm = np.concatenate([np.sin(2 * np.pi * 441 * t), np.zeros(46), np.sin(2 * np.pi * 882 * t), np.zeros(46)])
    smpl = (pcm * 16000).astype("<i2").tobytes()
    shdr = b"".join(struct.pack("<20sIIIIIBbHH", name, start, start + 4400, start + LOOP[0], start + LOOP[1],
                                RATE, 69, 0, 0, 1) for name, start in ((b"low", 0), (b"high", 4446)))
    shdr += struct.pack("<20sIIIIIBbHH", b"EOS", 0, 0, 0, 0, 0, 0, 0, 0, 0)
    key_all, vel_low, vel_high = (43, 127 << 8), (44, 63 << 8), (44, 64 | 127 << 8)
    looped, release_1s = (54, 1), (38, 0)
    igen = [_gens(key_all, vel_low, release_1s, looped, (53, 0)), _gens(key_all, vel_high, release_1s, looped, (53, 1)),
            _gens(key_all, (53, 0)), _gens((0, 0))]
    ibag, offset = b"", 0
    for zone in igen:
        ibag += struct.pack("<HH", offset, 0)
        offset += len(zone) // 4
    inst = struct.pack("<20sH", b"looped", 0) + struct.pack("<20sH", b"plain", 2) + struct.pack("<20sH", b"EOI", 3)
    pgen = _gens((41, 0)) + _gens((41, 1)) + _gens((0, 0))
    pbag = struct.pack("<HH", 0, 0) + struct.pack("<HH", 1, 0) + struct.pack("<HH", 2, 0)
    phdr = b"".join(struct.pack("<20sHHHIII", name, program, 0, bag, 0, 0, 0)
                    for name, program, bag in ((b"duo", 0, 0), (b"plain", 1, 1), (b"EOP", 0, 2)))
    mod_end = b"\0" * 10
    pdta = b"pdta" + b"".join(_chunk(i, body) for i, body in (
        (b"phdr", phdr), (b"pbag", pbag), (b"pmod", mod_end), (b"pgen", pgen), (b"inst", inst),
        (b"ibag", ibag), (b"imod", mod_end), (b"igen", b"".join(igen)), (b"shdr", shdr)))
    info = b"INFO" + _chunk(b"ifil", struct.pack("<HH", 2, 1))
    body = b"sfbk" + _chunk(b"LIST", info) + _chunk(b"LIST", b"sdta" + _chunk(b"smpl", smpl)) + _chunk(b"LIST", pdta)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture(scope="module")
def font(tmp_path_factory) -> SoundFont:
    path = tmp_path_factory.mktemp("sf2") / "tiny.sf2"
    path.write_bytes(_tiny_sf2())
    return SoundFont(path)


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.argmax(spectrum) * RATE / x.shape[0])


def test_presets_are_listed_by_bank_and_program(font):
    assert font.presets == {(0, 0): "duo", (0, 1): "plain"}


def test_velocity_picks_the_zone_and_key_transposes_it(font):
    assert _peak_hz(font.note(0, 0, 69, 40, 0.3, RATE)[:8192]) == pytest.approx(441, abs=6)
    assert _peak_hz(font.note(0, 0, 69, 100, 0.3, RATE)[:8192]) == pytest.approx(882, abs=6)
    assert _peak_hz(font.note(0, 0, 81, 40, 0.3, RATE)[:8192]) == pytest.approx(882, abs=6)  # an octave up
    assert _peak_hz(font.note(0, 0, 69, 40, 0.3, RATE, cents=-1200)[:16384]) == pytest.approx(220.5, abs=4)


def test_looped_note_sustains_while_held_then_releases(font):
    note = font.note(0, 0, 69, 127, 0.5, 3 * RATE)
    # Release 1 s falls 100 dB per second; the note is cut where it reaches -80 dB: 0.5 s + 0.8 s.
    assert note.shape[0] == pytest.approx(1.3 * RATE, abs=2)
    rms = lambda a, b: float(np.sqrt(np.mean(note[int(a * RATE) : int(b * RATE)] ** 2)))  # noqa: E731
    assert rms(0.35, 0.45) == pytest.approx(rms(0.02, 0.09), rel=0.02), "sustains on the loop past the sample's end"
    assert rms(0.9, 1.0) < rms(0.02, 0.09) * 10 ** (-35 / 20)
    assert font.note(0, 0, 69, 127, 0.5, 1000).shape[0] == 1000, "never longer than asked"


def test_unlooped_note_ends_with_its_sample_sooner_when_pitched_up(font):
    assert font.note(0, 1, 69, 100, 2.0, 3 * RATE).shape[0] == pytest.approx(4400, abs=2)
    assert font.note(0, 1, 81, 100, 2.0, 3 * RATE).shape[0] == pytest.approx(2200, abs=2)


def test_softer_notes_are_quieter(font):
    loud, soft = font.note(0, 1, 69, 120, 0.05, RATE), font.note(0, 1, 69, 30, 0.05, RATE)
    assert np.abs(soft).max() < 0.2 * np.abs(loud).max()


def test_unknown_preset_and_non_sf2_files_are_refused_by_name(font, tmp_path):
    with pytest.raises(SoundFontError, match="no preset bank 128 program 0"):
        font.note(128, 0, 36, 100, 0.1, RATE)
    bad = tmp_path / "not.sf2"
    bad.write_bytes(b"RIFF\0\0\0\0WAVEfmt ")
    with pytest.raises(SoundFontError, match=r"not\.sf2: not a SoundFont 2 file"):
        SoundFont(bad)
    bad.write_bytes(b"RIFF" + struct.pack("<I", 4) + b"sfbk")
    with pytest.raises(SoundFontError, match=r"not\.sf2: missing the 'sdta' chunk"):
        SoundFont(bad)
