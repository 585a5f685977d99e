"""Long-form transcription: `driver` (types, the silence policy, one recording), `batch` (the
engine), `segments` (speech segments by VAD), `windows` and `stitch` (overlapping windows),
`writers` (txt, srt, vtt, tsv, json files), `corpus` (many files over several processes).
The method is described in `driver`."""

from .batch import Meter, ModelTranscriber, transcribe, transcribe_iter, transcribe_many
from .driver import (
    SEGMENTATIONS,
    SILENT_PEAK,
    Segment,
    Transcriber,
    Transcript,
    check_not_silent,
    check_segmentation,
)
from .segments import Piece, Segmenter, speech_segments
from .stitch import Stitcher, longest_common_run, units
from .windows import FRAME, Window, plan, quietest, windows

__all__ = [
    "FRAME",
    "SEGMENTATIONS",
    "SILENT_PEAK",
    "Meter",
    "ModelTranscriber",
    "Piece",
    "Segment",
    "Segmenter",
    "Stitcher",
    "Transcriber",
    "Transcript",
    "Window",
    "check_not_silent",
    "check_segmentation",
    "longest_common_run",
    "plan",
    "quietest",
    "speech_segments",
    "transcribe",
    "transcribe_iter",
    "transcribe_many",
    "units",
    "windows",
]
