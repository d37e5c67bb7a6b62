from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InvalidInputError, PromptError
from pipeline.prompts import Prompt, TrackSpec, load_prompts_file, parse_box, parse_point, tracks_from_cli


def test_parse() -> None:
    assert parse_point(" 3.5, 4") == (3.5, 4.0)
    assert parse_box("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
    for bad in ["", "1", "1,2,3", "x,y", "inf,1", "nan,2"]:
        with pytest.raises(PromptError):
            parse_point(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"points": ((1, 1),), "labels": (0,)},
        {"points": ((1, 1),), "labels": (1, 1)},
        {"points": ((1, 1),), "labels": (2,)},
        {"box": (5, 5, 5, 10)},
        {"box": (1, 2, 3)},
    ],
)
def test_invalid_prompts(kwargs: dict) -> None:
    with pytest.raises(PromptError):
        Prompt(**kwargs)


def test_inside_and_multimask() -> None:
    p = Prompt(points=((10, 10),), labels=(1,))
    assert p.multimask and not Prompt(box=(0, 0, 5, 5)).multimask
    p.check_inside(20, 20)
    with pytest.raises(PromptError, match="outside the 5x20 image"):
        p.check_inside(5, 20)
    assert Prompt.from_dict(p.to_dict()) == p


def test_cli_tracks_get_ids_in_order() -> None:
    specs = tracks_from_cli(["1,2", "3,4"], ["0,0,5,5"])
    assert [s.track_id for s in specs] == [1, 2, 3]
    assert specs[2].prompt.box == (0, 0, 5, 5)
    assert TrackSpec.from_dict(specs[0].to_dict()) == specs[0]


def test_prompts_file(tmp_path: Path) -> None:
    f = tmp_path / "tracks.yaml"
    f.write_text(
        "tracks:\n"
        "  - points: [[10, 20], [30, 40]]\n    negative: [[5, 5]]\n"
        "  - id: 7\n    box: [1, 2, 30, 40]\n    points: [[10, 10]]\n    start_frame: 20\n"
    )
    a, b = load_prompts_file(f)
    assert a.track_id == 1 and a.prompt.labels == (1, 1, 0)
    assert b.track_id == 7 and b.start_frame == 20 and b.prompt.box == (1, 2, 30, 40)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tracks: []",
        "tracks:\n  - points: [[1]]",
        "tracks:\n  - colour: red",
        "tracks: [1]",
        "tracks:\n  - box: [1,2,3,4]\n  - id: 1\n    box: [1,2,3,4]",
        ": : :",
    ],
)
def test_bad_prompts_files(tmp_path: Path, text: str) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(InvalidInputError):
        load_prompts_file(f)
    with pytest.raises(InvalidInputError, match="not found"):
        load_prompts_file(tmp_path / "nope.yaml")
