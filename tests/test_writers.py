"""Transcript writers: exact file texts, wrapping, cue splitting, file naming and errors."""

import itertools
import json
import re

import pytest

from lfm2_mlx.errors import InputError, OutputError
from lfm2_mlx.transcribe.writers import (
    FORMATS,
    OUTPUT_FORMATS,
    cues,
    format_timestamp,
    get_writer,
    output_paths,
    render,
    wrap,
)

RESULT = {
    "text": "Hello world. 今日は、良い天気です。 Over an hour.",
    "segments": [
        {"id": 0, "start": 0.0, "end": 1.234, "text": " Hello world.", "tokens": [1, 2]},
        {"id": 1, "start": 1.5, "end": 2.0, "text": " 今日は、良い天気です。"},
        {"id": 2, "start": 2.0, "end": 2.5, "text": "  "},
        {"id": 3, "start": 3600.5, "end": 3602.25, "text": "Over\tan\nhour."},
    ],
    "duration": 3603.0,
    "language": "ja",
}


def parse_cues(text):
    """(start, end, text) of each srt or vtt cue, times in seconds."""
    out = []
    for m in re.finditer(r"(\S+) --> (\S+)\n(.*?)\n\n", text, re.DOTALL):
        times = []
        for stamp in m.group(1, 2):
            parts = stamp.replace(",", ".").split(":")
            times.append(sum(float(p) * 60**i for i, p in enumerate(reversed(parts))))
        out.append((*times, m.group(3)))
    return out


def test_format_timestamp():
    assert format_timestamp(1.234) == "00:01.234"
    assert format_timestamp(1.234, always_include_hours=True, decimal_marker=",") == "00:00:01,234"
    assert format_timestamp(3661.0005) == "01:01:01.000"  # round half to even, like whisper
    assert format_timestamp(59.9996) == "01:00.000"
    assert format_timestamp(0) == "00:00.000"
    for bad in (-0.001, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            format_timestamp(bad)


def test_txt():
    assert render(RESULT, "txt") == "Hello world.\n今日は、良い天気です。\nOver\tan hour.\n"
    assert render({"text": " only text ", "segments": []}, "txt") == "only text\n"
    assert render({"text": "", "segments": []}, "txt") == ""


def test_vtt_hours_only_past_the_first_hour():
    assert render(RESULT, "vtt") == (
        "WEBVTT\n\n"
        "00:00.000 --> 00:01.234\nHello world.\n\n"
        "00:01.500 --> 00:02.000\n今日は、良い天気です。\n\n"
        "01:00:00.500 --> 01:00:02.250\nOver\tan hour.\n\n"
    )


def test_srt():
    assert render(RESULT, "srt") == (
        "1\n00:00:00,000 --> 00:00:01,234\nHello world.\n\n"
        "2\n00:00:01,500 --> 00:00:02,000\n今日は、良い天気です。\n\n"
        "3\n01:00:00,500 --> 01:00:02,250\nOver\tan hour.\n\n"
    )


def test_tsv():
    assert render(RESULT, "tsv") == (
        "start\tend\ttext\n0\t1234\tHello world.\n1500\t2000\t今日は、良い天気です。\n3600500\t3602250\tOver an hour.\n"
    )


def test_json_is_the_result_as_given():
    text = render(RESULT, "json")
    assert "今日は" in text  # not \u-escaped
    assert json.loads(text) == RESULT
    assert text == json.dumps(RESULT, ensure_ascii=False)


def test_arrow_in_text_cannot_end_a_cue_line():
    result = {"segments": [{"start": 0, "end": 1, "text": "a --> b"}]}
    assert render(result, "srt") == "1\n00:00:00,000 --> 00:00:01,000\na -> b\n\n"


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles_parse_back_monotonic(fmt):
    parsed = parse_cues(render(RESULT, fmt))
    assert [c[2] for c in parsed] == ["Hello world.", "今日は、良い天気です。", "Over\tan hour."]
    times = [t for c in parsed for t in c[:2]]
    assert times == sorted(times)
    assert times[-2:] == [3600.5, 3602.25]


def test_wrap_english():
    text = "The quick brown fox jumps over the extraordinarily lazy dog."
    lines = wrap(text, 10)
    assert lines == ["The quick", "brown fox", "jumps over", "the", "extraordinarily", "lazy dog."]
    assert " ".join(lines) == text
    assert all(len(line) <= 10 for line in lines if " " in line)


def test_wrap_japanese_breaks_between_characters_keeping_punctuation():
    lines = wrap("今日は、良い天気ですね。「LFM2」を使います！", 5)
    assert lines == ["今日は、良", "い天気です", "ね。", "「LFM2」", "を使いま", "す！"]
    assert all(not line[0] in "、。！」" and not line[-1] in "「" for line in lines)


def test_wrap_keeps_spaced_punctuation_on_its_word():
    assert wrap("Bonjour ! « Ça va » ?", 8) == ["Bonjour !", "« Ça", "va » ?"]


def test_width_alone_wraps_lines_within_one_cue():
    result = {"segments": [{"start": 1, "end": 2, "text": "one two three four five"}]}
    assert render(result, "vtt", max_line_width=9) == (
        "WEBVTT\n\n00:01.000 --> 00:02.000\none two\nthree\nfour five\n\n"
    )


def test_line_count_splits_into_cues_covering_the_segment():
    text = "aaaa bbbb cc dd eeeeee ffffff g"  # lines of 9 chars: aaaa bbbb / cc dd / eeeeee / ffffff g
    result = {
        "segments": [{"start": 10.0, "end": 14.0, "text": text}, {"start": 14.0, "end": 15.0, "text": "x"}]
    }
    got = cues(result, max_line_width=9, max_line_count=2)
    assert [c[2] for c in got] == ["aaaa bbbb\ncc dd", "eeeeee\nffffff g", "x"]
    # 9 + 5 = 14 characters, then 6 + 8 = 14: the span is halved.
    assert got[0][:2] == (10.0, 12.0)
    assert got[1][:2] == (12.0, 14.0)
    srt = render(result, "srt", max_line_width=9, max_line_count=2)
    assert srt.startswith("1\n00:00:10,000 --> 00:00:12,000\naaaa bbbb\ncc dd\n\n2\n00:00:12,000 --> ")
    assert srt.count(" --> ") == 3


def test_line_count_proportional_times_japanese():
    text = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
    result = {"segments": [{"start": 0.3, "end": 7.7, "text": text}]}
    got = cues(result, max_line_width=4, max_line_count=2)
    assert "".join(c[2].replace("\n", "") for c in got) == text
    assert all(len(c[2].split("\n")) <= 2 for c in got)
    assert got[0][0] == 0.3 and got[-1][1] == 7.7
    for a, b in itertools.pairwise(got):
        assert a[1] == b[0]  # no gap, no overlap
    assert all(c[0] < c[1] for c in got)
    for start, end, cue_text in got:  # time in proportion to characters
        chars = len(cue_text.replace("\n", ""))
        assert end - start == pytest.approx(7.4 * chars / len(text))
    parsed = parse_cues(render(result, "vtt", max_line_width=4, max_line_count=2))
    times = [t for c in parsed for t in c[:2]]
    assert times == sorted(times) and times[0] == 0.3 and times[-1] == 7.7


def test_no_options_keeps_segments_and_collapses_newlines():
    result = {"segments": [{"start": 0, "end": 1, "text": " two\n lines "}]}
    assert cues(result) == [(0.0, 1.0, "two lines")]


@pytest.mark.parametrize(
    "width, count, match",
    [
        (None, 2, "--max-line-count needs --max-line-width"),
        (0, None, "--max-line-width"),
        (10, 0, "--max-line-count"),
        (-3, 2, "--max-line-width"),
        (2.5, None, "--max-line-width"),
        (True, None, "--max-line-width"),
    ],
)
def test_bad_wrap_options(width, count, match):
    with pytest.raises(InputError, match=match):
        render(RESULT, "srt", max_line_width=width, max_line_count=count)


def test_unknown_format(tmp_path):
    for call in (
        lambda: render(RESULT, "docx"),
        lambda: get_writer("docx", tmp_path),
        lambda: output_paths("docx", tmp_path, "a.wav"),
    ):
        with pytest.raises(InputError, match="txt, vtt, srt, tsv, json, all"):
            call()
    with pytest.raises(InputError):
        render(RESULT, "all")


def test_formats_constants():
    assert FORMATS == ("txt", "vtt", "srt", "tsv", "json")
    assert OUTPUT_FORMATS == (*FORMATS, "all")


def test_write_all(tmp_path):
    expected = output_paths("all", tmp_path, "/some/where/talk.wav")
    assert [p.name for p in expected] == ["talk.txt", "talk.vtt", "talk.srt", "talk.tsv", "talk.json"]
    written = get_writer("all", tmp_path)(RESULT, "/some/where/talk.wav", {"max_line_width": 5})
    assert written == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in expected)  # no temp files
    for path, fmt in zip(written, FORMATS):
        assert path.read_text(encoding="utf-8") == render(RESULT, fmt, max_line_width=5)
    assert "\nHello\nworld.\n\n" in written[1].read_text(encoding="utf-8")
    assert "\n今日は、良\nい天気で\nす。\n\n" in written[2].read_text(encoding="utf-8")


def test_write_one_format_and_names(tmp_path):
    written = get_writer("srt", str(tmp_path))(RESULT, "clip.v2.flac")
    assert written == [tmp_path / "clip.v2.srt"] == output_paths("srt", tmp_path, "clip.v2.flac")
    assert written[0].read_text(encoding="utf-8") == render(RESULT, "srt")
    assert output_paths("txt", tmp_path, "-") == [tmp_path / "stdin.txt"]
    assert get_writer("json", tmp_path)(RESULT, "-") == [tmp_path / "stdin.json"]


def test_bad_options_write_nothing(tmp_path):
    with pytest.raises(InputError):
        get_writer("all", tmp_path)(RESULT, "a.wav", {"max_line_count": 2})
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_is_created_and_a_file_in_the_way_is_an_output_error(tmp_path):
    assert get_writer("txt", tmp_path / "new" / "dir")(RESULT, "a.wav") == [
        tmp_path / "new" / "dir" / "a.txt"
    ]
    (tmp_path / "file").write_text("x")
    with pytest.raises((OutputError, FileExistsError, NotADirectoryError)):
        get_writer("txt", tmp_path / "file")(RESULT, "a.wav")
