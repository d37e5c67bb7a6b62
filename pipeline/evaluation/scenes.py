"""Synthetic scenes with ground truth: flat-coloured objects moving, hiding, leaving and crossing.

A :class:`Scene` is a list of :class:`Thing` (a disc or a rectangle of one colour, moving along
keyframes in seconds, shown during given spans), static :class:`Wall` occluders drawn over them,
and the times of the frames that are processed (a live feed's dropped frames are gaps in them).
:meth:`Scene.render` draws a frame as RGB and gives each thing's *visible* mask (what is not behind
a wall, another thing or the frame's edge). Colours are exact (no anti-aliasing), which is what the
reference segmenter (:mod:`pipeline.evaluation.reference`) reads.

:data:`SCENES` are the tracking bench's; :func:`measure` follows a scene's tracked things with a
:class:`~pipeline.tracking.Tracker` and scores it (:class:`SceneScore`). Any scene made of these
parts is measured the same way (docs/api.md shows one).
"""

from __future__ import annotations

import math
import time as clock
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.prompts import Prompt, TrackSpec
from pipeline.tracking import Tracker, TrackingConfig, TrackStatus

Colour = tuple[int, int, int]
VISIBLE_ENOUGH = 0.3  # a thing is back in view once this share of it shows
WRONG_SHARE = 0.5  # a track is on something else when less than this share of its mask is its thing


@dataclass(frozen=True)
class Thing:
    """An object of a scene.

    Attributes:
        id: its id (the track that follows it has the same).
        colour: RGB, unique in the scene.
        size: (w, h) in pixels.
        path: keyframes ``(time_s, x, y)`` of its centre, in time order; the centre moves in a
            straight line between two keyframes and stays at the first (last) before (after).
        shape: ``disc`` (an ellipse of ``size``) or ``box``.
        shown: spans ``(from_s, to_s)`` during which it exists (default: always).
        depth: things of larger depth are drawn over those of smaller.
    """

    id: int
    colour: Colour
    size: tuple[float, float]
    path: tuple[tuple[float, float, float], ...]
    shape: str = "disc"
    shown: tuple[tuple[float, float], ...] = ((-math.inf, math.inf),)
    depth: int = 0

    def centre(self, t: float) -> tuple[float, float]:
        times = [p[0] for p in self.path]
        x = float(np.interp(t, times, [p[1] for p in self.path]))
        y = float(np.interp(t, times, [p[2] for p in self.path]))
        return x, y

    def exists(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.shown)

    def full(self, t: float, height: int, width: int) -> np.ndarray:
        """Its (H, W) mask were nothing in front of it, unclipped area aside."""
        cx, cy = self.centre(t)
        w, h = self.size
        ys, xs = np.ogrid[:height, :width]
        px, py = xs + 0.5, ys + 0.5
        if self.shape == "box":
            return (abs(px - cx) <= w / 2) & (abs(py - cy) <= h / 2)
        return ((px - cx) / (w / 2)) ** 2 + ((py - cy) / (h / 2)) ** 2 <= 1.0

    def area(self) -> float:
        """Its area in pixels when wholly in view."""
        w, h = self.size
        return w * h if self.shape == "box" else math.pi * w * h / 4


@dataclass(frozen=True)
class Wall:
    """A static occluder, drawn over every thing."""

    box: tuple[int, int, int, int]
    colour: Colour


@dataclass(frozen=True)
class Scene:
    """A synthetic video with ground truth.

    Attributes:
        name: what it tests.
        size: (width, height).
        times: the processed frames' times, seconds, increasing.
        things: its objects.
        tracked: ids of the things that get a track, prompted with a box on the first frame.
        walls: occluders.
        background: RGB.
        about: one line for reports.
    """

    name: str
    size: tuple[int, int]
    times: tuple[float, ...]
    things: tuple[Thing, ...]
    tracked: tuple[int, ...]
    walls: tuple[Wall, ...] = ()
    background: Colour = (96, 96, 96)
    about: str = ""

    def render(self, i: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Frame ``i``: (H, W, 3) uint8 RGB and each thing's visible (H, W) bool mask."""
        width, height = self.size
        t = self.times[i]
        image = np.empty((height, width, 3), np.uint8)
        image[:] = self.background
        owner = np.zeros((height, width), np.int32)  # 0: background or wall
        for thing in sorted(self.things, key=lambda th: th.depth):
            if thing.exists(t):
                m = thing.full(t, height, width)
                image[m] = thing.colour
                owner[m] = thing.id
        for wall in self.walls:
            x0, y0, x1, y1 = wall.box
            image[y0:y1, x0:x1] = wall.colour
            owner[y0:y1, x0:x1] = 0
        return image, {th.id: owner == th.id for th in self.things}

    def first_shown(self, thing_id: int, share: float) -> float:
        """The time of the first frame that shows ``share`` of the thing's area (its entrance).

        Raises:
            ValueError: no frame shows that much of it.
        """
        thing = next(th for th in self.things if th.id == thing_id)
        for i, t in enumerate(self.times):
            if np.count_nonzero(self.render(i)[1][thing_id]) >= thing.area() * share:
                return t
        raise ValueError(f"no frame shows {share:.0%} of thing {thing_id}")

    def prompt(self, thing_id: int) -> Prompt:
        """A box around the thing's visible part on the first frame."""
        _, visible = self.render(0)
        ys, xs = np.nonzero(visible[thing_id])
        return Prompt(box=(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))


@dataclass
class SceneScore:
    """How a tracker did on a scene, per tracked thing and over them.

    Attributes:
        name: the scene.
        j: mean IoU of each tracked thing's track with its visible mask over the frames where it
            is visible (at least one pixel), averaged over the tracked things.
        reacquire: processed frames from each return into view (the thing back to 30 % visible
            after being under it) to the first frame its track holds it again (IoU >= 0.5), the
            worst return; None when nothing returned. A return never re-found counts the frames
            to the scene's end.
        wrong: frames on which a track's mask lies mostly (over half) on something else.
        frames: processed frames.
        seconds: the tracker's wall-clock time (decoding included).
    """

    name: str
    j: float
    reacquire: int | None
    wrong: int
    frames: int
    seconds: float
    per_thing: dict[int, float] = field(default_factory=dict)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def measure(
    scene: Scene,
    segmenter: object,
    config: TrackingConfig | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> SceneScore:
    """Follow ``scene``'s tracked things with a :class:`Tracker` over ``segmenter`` (which encodes
    RGB frames, as the reference segmenter) and score it.

    Frames are stepped with their times, as the pipeline steps them.
    """
    tracker = Tracker(segmenter, config)  # type: ignore[arg-type]
    for tid in scene.tracked:
        tracker.add(TrackSpec(tid, scene.prompt(tid)))
    areas = {th.id: th.area() for th in scene.things}
    ious: dict[int, list[float]] = {tid: [] for tid in scene.tracked}
    below = dict.fromkeys(scene.tracked, False)  # under 30 % visible since the last frame held
    waiting: dict[int, int] = {}  # thing -> processed frames since it came back, not yet held
    worst: int | None = None
    wrong = 0
    took = 0.0
    for i in range(len(scene.times)):
        image, visible = scene.render(i)
        [embedding] = segmenter.encode([image])  # type: ignore[attr-defined]
        start = clock.perf_counter()
        results, _ = tracker.step(i, embedding, scene.times[i])
        took += clock.perf_counter() - start
        for r in results:
            own = visible[r.track_id]
            held = r.status is TrackStatus.ACTIVE and iou(r.mask, own) >= 0.5
            if own.any():
                ious[r.track_id].append(iou(r.mask, own) if r.status is TrackStatus.ACTIVE else 0.0)
            if r.status is TrackStatus.ACTIVE and np.count_nonzero(
                r.mask & own
            ) < WRONG_SHARE * np.count_nonzero(r.mask):
                wrong += 1
            share = np.count_nonzero(own) / areas[r.track_id]
            if share < VISIBLE_ENOUGH:
                below[r.track_id] = True
                waiting.pop(r.track_id, None)
            elif below[r.track_id]:
                below[r.track_id] = False
                waiting[r.track_id] = 0
            if r.track_id in waiting:
                if held:
                    worst = max(worst or 0, waiting.pop(r.track_id))
                else:
                    waiting[r.track_id] += 1
        if on_frame is not None:
            on_frame(i)
    for left in waiting.values():
        worst = max(worst or 0, left)
    per_thing = {tid: float(np.mean(v)) if v else 1.0 for tid, v in ious.items()}
    return SceneScore(
        scene.name,
        float(np.mean(list(per_thing.values()))),
        worst,
        wrong,
        len(scene.times),
        took,
        per_thing,
    )


def _frames(seconds: float, fps: float) -> tuple[float, ...]:
    return tuple(i / fps for i in range(int(seconds * fps)))


def _dropped(seconds: float, fps: float, seed: int) -> tuple[float, ...]:
    """A live feed's processed frames: of frames every 1/fps s, 1 to 4 intervals apart at random."""
    rng = np.random.default_rng(seed)
    times, t = [], 0.0
    while t < seconds:
        times.append(round(t, 6))
        t += int(rng.integers(1, 5)) / fps
    return tuple(times)


W, H = 640, 360
RED, BLUE, GREEN, YELLOW = (210, 50, 50), (50, 80, 210), (40, 170, 70), (220, 200, 40)
LOOKALIKE = (160, 80, 40)  # a red-brown, as near to RED as two objects of a scene may be told apart
WALL = (150, 150, 150)


ENTERING = ((220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 30), (200, 60, 210), (30, 200, 210))


def entering_scene(count: int = 6, seconds: float = 9.0, fps: float = 10.0, leave: bool = True) -> Scene:
    """Discovery's scene: ``count`` (at most 6) discs entering a 320x240 frame from the left, one a
    second from 0.5 s, each in its own lane, at 60 px/s; with ``leave`` they go on out of the frame
    on the right (about 6 s after entering), else they stop in the middle. No thing is tracked:
    discovery is to find them."""
    if not 1 <= count <= len(ENTERING):
        raise ValueError(f"count must be 1 to {len(ENTERING)}, got {count}")
    things = []
    for i in range(count):
        t0, y = 0.5 + i, 20.0 + 40 * i
        end = (t0 + 8, 460.0, y) if leave else (t0 + 3, 160.0, y)
        things.append(Thing(i + 1, ENTERING[i], (36, 36), ((t0, -20.0, y), end), shown=((t0, math.inf),)))
    return Scene("entering", (320, 240), _frames(seconds, fps), tuple(things), tracked=(), about=(
        f"{count} discs entering one a second, no prompt"))  # fmt: skip


def write_video(scene: Scene, path: str | Path, fps: int = 10) -> Path:
    """Encode the scene's frames into an H.264 file (frame ``i`` at ``i / fps`` s; the scene's times
    should be so spaced)."""
    import av

    from pipeline.bench.samples import encode_pictures

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = scene.size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        encode_pictures(container, stream, (scene.render(i)[0] for i in range(len(scene.times))))
    return path


def bench_scenes() -> tuple[Scene, ...]:
    """The tracking bench's scenes (``samstream bench --suite tracking``)."""
    curve = tuple((t * 0.75, 320 + 250 * math.cos(t), 180 + 130 * math.sin(2 * t)) for t in range(9))
    turns = [(40, 60), (330, 160), (60, 300), (350, 240), (600, 100)]
    zigzag = tuple((i * 0.8, float(x), float(y)) for i, (x, y) in enumerate(turns))
    return (
        Scene(
            "fast",
            (W, H),
            _frames(3.2, 15),
            (Thing(1, RED, (30, 30), zigzag),),
            (1,),
            about="a 30 px disc moving about 25 px (most of its width) per processed frame, turning",
        ),
        Scene(
            "occlusion",
            (W, H),
            _frames(6.0, 15),
            (Thing(1, RED, (44, 44), ((0, 60, 180), (6, 600, 180))),),
            (1,),
            walls=(Wall((280, 40, 350, 320), WALL),),
            about="a disc passing behind a wall (hidden about 1 s)",
        ),
        Scene(
            "exit_reentry",
            (W, H),
            _frames(6.0, 15),
            (
                Thing(
                    1,
                    BLUE,
                    (44, 44),
                    ((0, 400, 100), (1.5, 700, 100), (3.0, -60, 280), (6.0, 400, 280)),
                    shown=((0, 1.5), (3.0, math.inf)),
                ),
            ),
            (1,),
            about="a disc leaving on the right and coming back from the left, lower, 1.5 s later",
        ),
        Scene(
            "crossing",
            (W, H),
            _frames(4.0, 15),
            (
                Thing(1, RED, (48, 48), ((0, 60, 120), (4, 580, 240)), depth=1),
                Thing(2, BLUE, (48, 48), ((0, 580, 120), (4, 60, 240))),
            ),
            (1, 2),
            about="two discs crossing, one in front of the other",
        ),
        Scene(
            "vanish",
            (W, H),
            _frames(5.0, 15),
            (
                Thing(1, GREEN, (44, 44), ((0, 100, 100), (2, 300, 150)), shown=((0, 2.0),)),
                Thing(2, YELLOW, (44, 44), ((2.5, 500, 280), (5, 200, 250)), shown=((2.5, math.inf),)),
            ),
            (1,),
            about="a disc that vanishes for good while another appears elsewhere",
        ),
        Scene(
            "lookalike",
            (W, H),
            _frames(6.0, 15),
            (
                Thing(1, RED, (44, 44), ((0, 60, 180), (6, 600, 180))),
                Thing(2, LOOKALIKE, (44, 44), ((0, 450, 300), (3, 120, 300), (6, 450, 60))),
            ),
            (1,),
            walls=(Wall((260, 40, 380, 260), WALL),),
            about="a disc behind a wall while a look-alike (a nearby colour) moves in view",
        ),
        Scene(
            "live_drops",
            (W, H),
            _dropped(6.0, 30, seed=7),
            (Thing(1, YELLOW, (36, 36), curve),),
            (1,),
            about="a live feed at 30 fps of which 1 frame in 1-4 is processed, the disc on a curve",
        ),
    )


SCENES: Sequence[str] = ("fast", "occlusion", "exit_reentry", "crossing", "vanish", "lookalike", "live_drops")
