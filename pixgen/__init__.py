"""pixgen: VQGAN+CLIP text-to-image generation.

Importing the package is cheap: torch and the models load only when a run needs them.
"""

__version__ = "0.1.0"
