"""User-facing errors: one clear paragraph, exit code 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, files, folders) that the user can fix.

    Entry points catch it, print the message and exit with ``exit_code``.
    """

    exit_code = 2


class ConfigError(UserError):
    """An invalid option value, unknown key or conflicting options."""


class DatasetError(UserError):
    """A dataset folder, image or caption problem."""


class ModelLoadError(UserError):
    """A base model, VAE or network file that cannot be loaded."""
