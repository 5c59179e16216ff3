"""Drawing scenes: each object centred in its patch-sized grid cell (the vision tower's patch).

Centring objects in cells matters: a probe on this machine got 99.5% caption accuracy with
grid-aligned objects against 32% with free placement."""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw

from vlmmerge.zoo.world import GRID, Scene, SceneObject

IMAGE_SIZE = 64
BACKGROUND = (242, 242, 236)


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, cx: float, cy: float, r: float) -> None:
    if obj.culture is None:
        fill = obj.colour.rgb
        key = obj.shape.key
        if key == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif key == "square":
            s = r * 0.85
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        elif key == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
        elif key == "star":
            draw.polygon(_star(cx, cy, r * 1.1), fill=fill)
        return
    key = obj.culture.key
    if key == "torii":  # two posts, a wide top beam and a lower tie beam, vermilion
        vermilion = (225, 75, 35)
        draw.rectangle((cx - r, cy - r, cx + r, cy - r + 2), fill=(40, 30, 30))
        draw.rectangle((cx - r * 0.8, cy - r * 0.45, cx + r * 0.8, cy - r * 0.45 + 1.5), fill=vermilion)
        draw.rectangle((cx - r * 0.6, cy - r + 2, cx - r * 0.6 + 2, cy + r), fill=vermilion)
        draw.rectangle((cx + r * 0.6 - 2, cy - r + 2, cx + r * 0.6, cy + r), fill=vermilion)
    elif key == "fuji":  # slate mountain with a white snow cap
        draw.polygon([(cx, cy - r * 0.8), (cx - r * 1.1, cy + r * 0.8), (cx + r * 1.1, cy + r * 0.8)],
                     fill=(80, 95, 140))
        draw.polygon([(cx, cy - r * 0.8), (cx - r * 0.45, cy - r * 0.1), (cx + r * 0.45, cy - r * 0.1)],
                     fill=(255, 255, 255))
    elif key == "onigiri":  # white rice triangle with a black nori band
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)],
                     fill=(255, 255, 255), outline=(120, 120, 120))
        draw.rectangle((cx - r * 0.4, cy + r * 0.1, cx + r * 0.4, cy + r * 0.8), fill=(20, 30, 25))
    elif key == "lantern":  # tall orange-red paper lantern with black caps
        draw.ellipse((cx - r * 0.7, cy - r, cx + r * 0.7, cy + r), fill=(240, 110, 40))
        draw.rectangle((cx - r * 0.4, cy - r, cx + r * 0.4, cy - r * 0.7), fill=(25, 25, 25))
        draw.rectangle((cx - r * 0.4, cy + r * 0.7, cx + r * 0.4, cy + r), fill=(25, 25, 25))


def render_scene(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image; small size/position jitter and background tint come from scene.seed."""
    rng = random.Random(scene.seed)
    tint = rng.randint(-10, 8)
    background = tuple(max(0, min(255, c + tint)) for c in BACKGROUND)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cell = size / GRID
    for obj in scene.objects:
        cx = (obj.col + 0.5) * cell + rng.uniform(-0.75, 0.75)
        cy = (obj.row + 0.5) * cell + rng.uniform(-0.75, 0.75)
        r = cell * rng.uniform(0.33, 0.42)
        _draw_object(draw, obj, cx, cy, r)
    return image


def render_batch(scenes: list[Scene], size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 array (N, H, W, 3)."""
    return np.stack([np.asarray(render_scene(s, size)) for s in scenes])
