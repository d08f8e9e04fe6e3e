"""Exceptions pixgen raises for problems a user can fix.

The library raises these; only ``pixgen.cli`` turns them into one-line Click errors.
"""


def one_line(err: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(err).split())


class PixgenError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class ConfigError(PixgenError):
    """A preset, config file or override is invalid."""


class UnknownModel(PixgenError):
    """A model name is neither in the registry nor a usable local file."""


class ModelNotAvailable(PixgenError):
    """A registered model is not on disk and may not or cannot be downloaded."""


class CheckpointError(PixgenError):
    """A checkpoint file cannot be read safely or does not match its architecture."""


class ChecksumMismatch(CheckpointError):
    """A file's sha256 differs from the one the registry expects."""


class DownloadError(PixgenError):
    """A download failed on every URL it was tried from."""


class OutputExists(PixgenError):
    """An output would overwrite an existing file and overwriting was not asked for."""


class InputError(PixgenError):
    """An input file (init image, image prompt, prompt file) is missing or unreadable."""


class OutputError(PixgenError):
    """An output cannot be written: read-only folder, disk full, a file where a folder should be."""


class OutOfMemory(PixgenError):
    """A run needs more memory (RAM or VRAM) than the device has."""


class OutputBusy(OutputError):
    """Another process is writing the same output folder (it holds the folder's lock)."""
