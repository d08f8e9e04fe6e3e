"""pixgen: VQGAN+CLIP text-to-image generation.

Importing the package is cheap: torch and the models load only when a run needs them.

    >>> import pixgen
    >>> image = pixgen.render("a red circle on a blue background", seed=1)  # a PIL image
"""

__version__ = "0.1.0"

__all__ = ["render", "render_steps", "run", "resume_run", "resolve_config", "RunConfig", "PixgenError",
           "__version__"]

_LAZY = {
    "render": "pixgen.pipeline.api", "render_steps": "pixgen.pipeline.api",
    "run": "pixgen.pipeline.runner", "resume_run": "pixgen.pipeline.runner",
    "resolve_config": "pixgen.config", "RunConfig": "pixgen.config",
    "PixgenError": "pixgen.errors",
}


def __getattr__(name: str):
    """Import the public API on first use, so ``import pixgen`` stays instant."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pixgen' has no attribute {name!r}")
