"""User-facing errors.

Every error a user can cause (a broken space file, a wrong data path, a corrupt checkpoint, a diverged
training) derives from :class:`AutomqError`. The CLI prints the message without a traceback and exits with
status 2, so each message must name the file, field or path, say what was expected, and say how to fix it.
"""

from __future__ import annotations


class AutomqError(Exception):
    """Base class for errors caused by user input or by the state of a run directory."""


class SpaceError(AutomqError):
    """A search-space file is missing, unreadable or invalid."""


class CandidateError(AutomqError):
    """A candidate does not belong to its search space."""


class DataError(AutomqError):
    """A dataset path is missing or its files are malformed."""


class CheckpointError(AutomqError):
    """A checkpoint or exported model is missing, corrupt or incompatible."""


class BudgetError(AutomqError):
    """A cost budget cannot be met by any candidate of the space."""


class RayClusterError(AutomqError):
    """The Ray cluster named by ``--address`` cannot be reached or refuses this machine."""


class TrainingDivergedError(AutomqError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
