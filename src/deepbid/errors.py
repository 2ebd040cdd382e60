"""The exceptions and warnings deepbid raises for problems in the user's input."""


class InputError(ValueError):
    """The input cannot be integrated as given; the message says what to fix."""


class InputWarning(UserWarning):
    """The input was accepted with a documented fallback (e.g. non-count values)."""


class TrainingError(RuntimeError):
    """Training diverged (a loss became NaN or infinite); the message names where."""
