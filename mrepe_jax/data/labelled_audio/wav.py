"""WAV files: ``read_header`` checks a file without decoding it, ``read_wav`` decodes it to mono
float32, and ``pcm_to_float`` / ``to_mono`` are the pure conversions both paths (folder and TFDS) use.

Supported: PCM 8 (unsigned), 16, 24 and 32 bit and IEEE float 32 and 64 bit, plain or
``WAVE_FORMAT_EXTENSIBLE``, any number of channels, little-endian RIFF or big-endian RIFX.
Refused, with the reason: compressed formats (ADPCM, mu-law, MP3 in WAV, ...), RF64, a file cut
short, a file without samples.

Integers are scaled by their full scale ``2 ** (bits - 1)`` (uint8 is first centred on 128), so
16-bit PCM ``-32768 .. 32767`` becomes ``-1 .. 0.99997``: the convention of soundfile, librosa and
torchaudio (and of ``data.folder_source.read_wav``), so waveforms equal what HF pipelines feed CLAP.
"""

from __future__ import annotations

import dataclasses
import pathlib
import struct
import warnings

import numpy as np
from scipy.io import wavfile

PCM, IEEE_FLOAT, EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
PCM_BITS = (8, 16, 24, 32)
FLOAT_BITS = (32, 64)


@dataclasses.dataclass(frozen=True)
class WavHeader:
    """What a WAV file's header says: its rate (Hz), channels, bits per sample, whether the
    samples are floats, and the number of frames (samples per channel)."""

    path: str
    sample_rate: int
    channels: int
    bits: int
    is_float: bool
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def _refuse(path, reason: str) -> ValueError:
    return ValueError(f"cannot read WAV file {str(path)!r}: {reason}")


def _parse_fmt(body: bytes, size: int, endian: str, path) -> tuple[int, int, int, int]:
    """``(format tag, channels, rate, bits)`` of a ``fmt `` chunk, checked."""
    if len(body) < 16:
        raise _refuse(path, f"its fmt chunk holds {len(body)} of the 16 bytes it needs (chunk size {size})")
    tag, channels, rate, _, block_align, bits = struct.unpack(endian + "HHIIHH", body[:16])
    if tag == EXTENSIBLE:
        if len(body) < 40:
            raise _refuse(path, f"its WAVE_FORMAT_EXTENSIBLE fmt chunk holds {len(body)} of 40 bytes")
        tag = struct.unpack(endian + "H", body[24:26])[0]  # the SubFormat GUID starts with the tag
    if tag not in (PCM, IEEE_FLOAT):
        raise _refuse(path, f"format tag 0x{tag:04x} is not supported (PCM 0x0001 or IEEE float 0x0003 "
                            f"only; convert compressed WAV to PCM first)")
    allowed = PCM_BITS if tag == PCM else FLOAT_BITS
    if bits not in allowed:
        kind = "PCM" if tag == PCM else "float"
        raise _refuse(path, f"{bits}-bit {kind} samples are not supported ({kind}: {allowed} bits)")
    if channels < 1 or rate < 1:
        raise _refuse(path, f"its fmt chunk says {channels} channels at {rate} Hz")
    if block_align != channels * bits // 8:
        raise _refuse(path, f"its block align {block_align} does not fit {channels} channel(s) of "
                            f"{bits}-bit samples")
    return tag, channels, rate, bits


def read_header(path: str | pathlib.Path) -> WavHeader:
    """The header of a WAV file, read by walking its RIFF chunks (a few small reads however long
    the file). Raises ``ValueError`` naming the file and the reason for anything ``read_wav``
    would not decode: not RIFF/WAVE, an unsupported format, no fmt or data chunk, audio cut short
    (the data chunk runs past the end of the file), no samples."""
    size = pathlib.Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            raise _refuse(path, f"{size} bytes is too short for a WAV header")
        if head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            raise _refuse(path, f"not a RIFF/WAVE file (it starts {head[:4]!r}...{head[8:12]!r})")
        endian = "<" if head[:4] == b"RIFF" else ">"
        fmt, pos = None, 12
        while True:
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                raise _refuse(path, "no data chunk" if fmt else "no fmt chunk")
            chunk_id, chunk_size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
            body = pos + 8
            if chunk_id == b"fmt ":
                fmt = _parse_fmt(f.read(min(chunk_size, 40)), chunk_size, endian, path)
            elif chunk_id == b"data":
                if fmt is None:
                    raise _refuse(path, "its data chunk comes before the fmt chunk")
                if body + chunk_size > size:
                    raise _refuse(path, f"truncated: the header announces {chunk_size} bytes of audio, "
                                        f"the file holds {size - body}")
                tag, channels, rate, bits = fmt
                frames = chunk_size // (channels * bits // 8)
                if frames == 0:
                    raise _refuse(path, "it holds no samples (an empty clip)")
                return WavHeader(str(path), rate, channels, bits, tag == IEEE_FLOAT, frames)
            pos = body + chunk_size + (chunk_size & 1)  # chunks are padded to an even size


def pcm_to_float(samples: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Samples ``[N]`` or ``[N, channels]`` -> float32 of the same shape.

    Integers are divided by ``2 ** (bits - 1)``, ``bits`` defaulting to the dtype's width (scipy
    gives 24-bit PCM left-justified in int32, so 32 is right for it too); uint8 is unsigned PCM,
    centred on 128. int64 says nothing about the width (TFDS stores 16-bit PCM as int64 in some
    datasets), so it needs ``bits``. Floats are cast as they are (float WAV may exceed 1).
    """
    samples = np.asarray(samples)
    if samples.dtype.kind == "f":
        return samples.astype(np.float32)
    if samples.dtype == np.uint8:
        return ((samples.astype(np.float64) - 128.0) / 128.0).astype(np.float32)
    if samples.dtype.kind != "i":
        raise ValueError(f"audio samples of dtype {samples.dtype} are neither integer PCM nor float")
    if bits is None:
        if samples.dtype == np.int64:
            raise ValueError("int64 audio samples do not say their sample width; pass bits (e.g. 16)")
        bits = 8 * samples.dtype.itemsize
    return (samples.astype(np.float64) / float(2 ** (bits - 1))).astype(np.float32)


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """``[N]`` as it is, ``[N, channels]`` -> the channels' mean ``[N]`` (float32)."""
    waveform = np.asarray(waveform, np.float32)
    if waveform.ndim == 1:
        return waveform
    if waveform.ndim != 2:
        raise ValueError(f"audio of shape {waveform.shape} is neither [samples] nor [samples, channels]")
    return waveform.mean(axis=1, dtype=np.float64).astype(np.float32)


def read_wav(path: str | pathlib.Path) -> tuple[np.ndarray, WavHeader]:
    """A WAV file as a mono float32 waveform ``[frames]`` at its own rate (``header.sample_rate``),
    PCM scaled to ``[-1, 1)`` and channels averaged. Errors as ``read_header``'s."""
    header = read_header(path)
    try:
        with warnings.catch_warnings():
            # scipy warns on chunks it skips (LIST, cue) and on a short file; the header check
            # above and the frame count below already catch a short file.
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            _, data = wavfile.read(str(path))
    except (ValueError, struct.error, EOFError) as e:
        raise _refuse(path, str(e)) from e
    if len(data) != header.frames:
        raise _refuse(path, f"decoded {len(data)} frames where the header announces {header.frames}")
    return to_mono(pcm_to_float(data)), header
