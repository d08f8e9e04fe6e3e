"""The one-call Python API: ``pixgen.render("a red circle")`` returns a picture.

Settings are config keys (``steps=100``, ``size=[64, 64]``, ``seed=3``) layered over a preset, as
on the command line. Models stay loaded between calls in the same process. Nothing is written
unless ``output`` is given; errors are :class:`pixgen.errors.PixgenError` subclasses with the
same one-line messages as the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from pixgen.config import DEFAULT_PRESET, RunConfig, resolve_config


def make_config(prompt: str = "", preset: str = DEFAULT_PRESET, **settings: Any) -> RunConfig:
    """A validated config: ``preset`` < ``settings`` (config keys), with ``prompt``."""
    return resolve_config(preset, flags={**settings, "prompt": prompt})


def to_image(tensor, text: dict[str, str] | None = None) -> Image.Image:
    """A (1, 3, H, W) tensor in [0, 1] -> a PIL image whose ``info`` holds the recipe text."""
    from pixgen.pipeline.output import to_pixels

    image = Image.fromarray(to_pixels(tensor))
    image.info.update(text or {})
    return image


def render_steps(prompt: str = "", *, preset: str = DEFAULT_PRESET, every: int = 1,
                 **settings: Any) -> Iterator[tuple[int, Image.Image]]:
    """Yield ``(step, image)`` every ``every`` steps and at the last step, for notebooks; writes nothing."""
    from pixgen.engine.loop import generate
    from pixgen.pipeline.recipe import png_text
    from pixgen.pipeline.runner import prepare

    job = prepare(make_config(prompt, preset, **settings))
    for step in generate(job.config, job.models, init_image=job.init_image, prompt_images=job.prompt_images):
        if step.step % max(every, 1) == 0 or step.step == step.total:
            text = png_text(job.config, job.loaded, step.step, str(job.models.device), job.inputs)
            yield step.step, to_image(step.image(), text)


def render(prompt: str = "", *, preset: str = DEFAULT_PRESET, output: str | Path | None = None,
           overwrite: bool = False, **settings: Any) -> Image.Image:
    """Generate one image for ``prompt`` and return it; with ``output``, also write it as ``pixgen run -o`` does."""
    if output is not None:
        from pixgen.pipeline.output import open_image
        from pixgen.pipeline.runner import run

        result = run(make_config(prompt, preset, **settings), Path(output), overwrite=overwrite)
        with open_image(result.image_path, "image") as image:
            return image.copy()
    *_, (_step, image) = render_steps(prompt, preset=preset, every=10**9, **settings)
    return image
