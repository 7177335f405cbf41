"""The labelled heatmap: the one picture the Secondary Capture, the admin page and
``dicom-node predict --heatmap`` all show.

A heatmap alone misleads: a hot spot on a film the model calls NORMAL reads as a
suspicious area, when it only shows where the model saw "normal". So the picture always
says which class its map explains ("Grad-CAM for NORMAL"), gives the result in the one
format of :mod:`dicom_node.wording`, prints a colour scale with its meaning, flags a
series outside the model's intended use, and carries NOT FOR DIAGNOSTIC USE. All of it is
burned into the pixels, so no viewer can show the map without it.

Layout, top to bottom: a black band with the text lines, the colour scale (a bar with
ticks), then the overlay.

Resolution policy
-----------------
* The overlay keeps the source image's pixel grid: same rows and columns, so the same
  aspect ratio, and a radiologist can zoom into the Secondary Capture as into the film.
* An image whose shorter side is below :data:`MIN_SIDE` (a 64 x 64 MR slice) is enlarged
  by an integer factor with nearest-neighbour sampling first: the aspect stays exact and
  no colour is invented, and the text gets room to be legible.
* The band is added above the picture; no column is added or removed, so the row and
  column directions (Patient Orientation) still hold for the picture part.
* Pages show the same picture scaled down to a longest side of 1024 pixels, aspect kept
  (``dicom_node.process.heatmap``); ``predict --heatmap`` writes it at full size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast, get_args

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from dicom_node import identity
from dicom_node.wording import call_text, out_of_scope_text, probability_value
from inference import colormap
from inference.types import Heatmap, SeriesPrediction

# Shorter image side below which the picture is enlarged before text is drawn.
MIN_SIDE: Final = 512
TEXT_COLOUR: Final = (255, 255, 255)
WARNING_COLOUR: Final = (255, 255, 0)
# The grey the colour scale is blended over: what an average image region looks like.
_SCALE_BACKGROUND: Final = 0.5
_METHOD_NAMES: Final = {"grad-cam": "Grad-CAM", "occlusion": "Occlusion map"}


@dataclass(frozen=True)
class Line:
    """One line of burned-in text; warnings are drawn in yellow."""

    text: str
    warning: bool = False


def method_name(method: str) -> str:
    """How an explanation method is named on pictures ("Grad-CAM")."""
    return _METHOD_NAMES.get(method, method)


def explained(prediction: SeriesPrediction, heatmap: Heatmap) -> tuple[str, float | None]:
    """The class a heatmap explains and its probability on the heatmap's image.

    The runtime records both in the heatmap; a heatmap made without them (an older
    runtime, a test) is taken to explain the predicted class, with the probability of
    that class on its image when the image was scored, else on the series.
    """
    if heatmap.target:
        return heatmap.target, heatmap.target_probability
    label = prediction.predicted_class
    for score in prediction.slices:
        if (score.sop_instance_uid, score.frame) == (heatmap.sop_instance_uid, heatmap.frame):
            return label, score.probabilities.get(label)
    return label, prediction.probabilities.get(label)


def title(prediction: SeriesPrediction, heatmap: Heatmap) -> str:
    """The picture's first line: what the colour shows ("Grad-CAM for PNEUMONIA")."""
    label, _ = explained(prediction, heatmap)
    return f"{method_name(heatmap.method)} for {label}"


def lines(prediction: SeriesPrediction, heatmap: Heatmap) -> list[Line]:
    """The text burned into the picture: what the map explains, the result, the caveats.

    The series result is the predicted class with its probability; when the map
    explains another class, or the series has several images, the line "This image"
    gives the explained class's probability on the pictured image.
    """
    model = prediction.model
    predicted = prediction.predicted_class
    result = call_text(predicted, prediction.probabilities[predicted])
    out = [
        Line(title(prediction, heatmap)),
        Line(f"{model.name} {model.version}"),
        Line(f"Result: {result}"),
    ]
    label, probability = explained(prediction, heatmap)
    here = call_text(label, probability)
    if here != result or len(prediction.slices) > 1:
        out.append(Line(f"This image: {here}"))
    if prediction.finding_present is not None:
        verdict = "present" if prediction.finding_present else "absent"
        out.append(
            Line(f"{model.finding_type.meaning}: {verdict} (threshold {model.threshold:.2f})")
        )
    if prediction.out_of_scope:
        out.append(Line(out_of_scope_text(prediction.out_of_scope), warning=True))
    out.append(Line(identity.NOT_FOR_DIAGNOSTIC_USE_SHORT, warning=True))
    return out


def scale_caption(prediction: SeriesPrediction, heatmap: Heatmap) -> str:
    """What the colour scale means, in words."""
    label, _ = explained(prediction, heatmap)
    return (
        f"Colour: {method_name(heatmap.method)} for {label}, share of its peak; "
        f"below {probability_value(heatmap.floor)} not coloured, "
        f"opacity up to {probability_value(heatmap.alpha)}"
    )


def labelled_heatmap(prediction: SeriesPrediction, heatmap: Heatmap) -> npt.NDArray[np.uint8]:
    """The full picture: text band, colour scale, then the (enlarged if small) overlay.

    Parameters
    ----------
    prediction
        The series result the text states.
    heatmap
        The heatmap pictured; its ``overlay`` must be uint8 RGB.

    Returns
    -------
    numpy.ndarray
        (rows, columns, 3) uint8 RGB.
    """
    overlay = heatmap.overlay
    if overlay.dtype != np.uint8 or overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ValueError(
            f"heatmap overlay must be uint8 RGB (rows, columns, 3), "
            f"got {overlay.dtype} {overlay.shape}"
        )
    text = lines(prediction, heatmap)
    caption = scale_caption(prediction, heatmap)
    return compose(overlay, text, caption, _colormap_name(heatmap.colormap), heatmap.floor)


def compose(
    overlay: npt.NDArray[np.uint8],
    text: Sequence[Line],
    caption: str,
    colormap_name: colormap.ColormapName,
    floor: float,
) -> npt.NDArray[np.uint8]:
    """Put ``text`` and a colour scale in a black band above ``overlay`` (enlarged).

    The scale shows map values 0 to 1 (share of the peak): mid-grey (uncoloured) up to
    ``floor``, then the colour map, drawn at full strength so the colours can be told
    apart; the overlay blends them over the image with an opacity that grows from 0 at
    the floor to the heatmap's ``alpha`` at the peak (:func:`inference.explain.opacity`),
    as the caption says. Ticks mark 0, the floor, one half and the peak.
    """
    picture = enlarged_image(overlay)
    width = picture.width
    margin = max(4, width // 100)
    words = [line.text for line in text] + [caption]
    font = _fitting_font(words, width - 2 * margin, min(picture.size))
    line_height = math.ceil(font.size * 1.3)
    scale_top = margin + line_height * len(text)
    band = scale_top + 3 * line_height + margin
    canvas = Image.new("RGB", (width, band + picture.height), (0, 0, 0))
    canvas.paste(picture, (0, band))
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(text):
        colour = WARNING_COLOUR if line.warning else TEXT_COLOUR
        draw.text((margin, margin + number * line_height), line.text, fill=colour, font=font)
    draw.text((margin, scale_top), caption, fill=TEXT_COLOUR, font=font)
    bar_top = scale_top + line_height
    bar_height = max(4, line_height - 4)
    bar_width = width - 2 * margin
    bar = _scale_bar(bar_width, bar_height, colormap_name, floor)
    canvas.paste(Image.fromarray(bar, mode="RGB"), (margin, bar_top))
    ticks = [(0.0, "0"), (0.5, "0.50"), (1.0, "1 = peak")]
    if floor > 0.0 and all(abs(floor - value) >= 0.1 for value, _ in ticks):
        # The floor gets its own tick unless it would crowd another one's label.
        ticks = sorted([*ticks, (floor, probability_value(floor))])
    label_top = bar_top + bar_height + 2
    for value, label in ticks:
        x = margin + round(value * (bar_width - 1))
        draw.line([(x, bar_top), (x, bar_top + bar_height - 1)], fill=TEXT_COLOUR, width=1)
        label_width = font.getlength(label)
        left = min(max(margin, x - label_width / 2), width - margin - label_width)
        draw.text((left, label_top), label, fill=TEXT_COLOUR, font=font)
    return np.asarray(canvas, dtype=np.uint8)


def _scale_bar(
    width: int, height: int, colormap_name: colormap.ColormapName, floor: float
) -> npt.NDArray[np.uint8]:
    """The colour map from 0 to 1, mid-grey (uncoloured) at and below ``floor``."""
    levels = np.linspace(0.0, 1.0, max(width, 2), dtype=np.float32)[:width]
    row = colormap.apply(levels, colormap_name)
    row[levels <= floor] = _SCALE_BACKGROUND
    pixels = np.rint(np.clip(row, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(pixels[None, :, :], (height, width, 3)))


def enlarged(overlay: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The picture part of :func:`labelled_heatmap`'s output, without the band."""
    return np.asarray(enlarged_image(overlay), dtype=np.uint8)


def enlarged_image(overlay: npt.NDArray[np.uint8]) -> Image.Image:
    """``overlay`` as a PIL image, enlarged by an integer factor when it is small."""
    image = Image.fromarray(np.ascontiguousarray(overlay), mode="RGB")
    side = min(image.size)
    if side >= MIN_SIDE:
        return image
    factor = math.ceil(MIN_SIDE / side)
    # Nearest neighbour by an integer factor: no interpolated colours, geometry unchanged.
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _fitting_font(words: Sequence[str], width: int, side: int) -> ImageFont.FreeTypeFont:
    size = max(14, side // 32)
    while True:
        font = ImageFont.load_default(size=size)
        if not isinstance(font, ImageFont.FreeTypeFont):
            raise ValueError("Pillow was built without FreeType; cannot draw scalable text")
        if size <= 8 or max(font.getlength(word) for word in words) <= width:
            return font
        size -= 1


def _colormap_name(name: str) -> colormap.ColormapName:
    known = get_args(colormap.ColormapName)
    return cast(colormap.ColormapName, name if name in known else "inferno")
