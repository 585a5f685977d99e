"""Long-form transcription: `driver` (reading and driving), `windows` (cutting at pauses),
`stitch` (joining window transcripts). The method is described in `driver`."""

from .batch import ModelBatchTranscriber, transcribe_many
from .driver import (
    SILENT_PEAK,
    ModelTranscriber,
    Segment,
    Transcriber,
    Transcript,
    check_not_silent,
    transcribe,
    transcribe_iter,
)
from .stitch import Stitcher, longest_common_run, units
from .windows import FRAME, Window, plan, quietest, windows

__all__ = [
    "FRAME",
    "SILENT_PEAK",
    "ModelBatchTranscriber",
    "ModelTranscriber",
    "Segment",
    "Stitcher",
    "Transcriber",
    "Transcript",
    "Window",
    "check_not_silent",
    "longest_common_run",
    "plan",
    "quietest",
    "transcribe",
    "transcribe_iter",
    "transcribe_many",
    "units",
    "windows",
]
