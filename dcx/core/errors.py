"""Errors a user can act on. Each message is one line that says what to do."""

from __future__ import annotations


class DcxError(Exception):
    """Base class: a user-facing failure; the CLI prints the message and exits with `exit_code`."""

    exit_code = 2


class PluginNotFoundError(DcxError):
    """No plugin of that kind and name is installed."""


class AmbiguousPluginError(PluginNotFoundError):
    """A bare plugin name is provided by several packages: the user must qualify it (PACKAGE:NAME)."""


class PluginLoadError(DcxError):
    """A plugin's entry point exists but could not be imported or is incompatible."""


class PluginContractError(DcxError):
    """A plugin's hook does not take the arguments this dcx's contract passes (written for another API)."""


class OptionError(DcxError):
    """A plugin or run option is unknown or has an invalid value."""


class InputError(DcxError):
    """Bad input data: missing file, wrong shape, NaN/inf, k larger than N, unlabelled dataset."""


class ContractError(DcxError):
    """A plugin broke its contract (e.g. returned labels of the wrong shape)."""

    exit_code = 3


class RunDirError(DcxError):
    """The run directory cannot be created, resumed or read."""


class DiskFull(RunDirError):
    """A file could not be written for lack of space; the runner says whether to resume or rerun."""

    def __init__(self, what: str, then: str = "try again") -> None:
        super().__init__(f"{what}: free some space and {then}")
        self.what = what


class Terminated(KeyboardInterrupt):
    """SIGTERM (e.g. a cluster scheduler stopping the job), raised where Ctrl-C would be and handled
    like it, with exit code 143."""


class UnreadableImage(DcxError):
    """One image could not be decoded when read (truncated, corrupt, over the size limit).

    Raised by ``ImageSet.images[i]``; the engine skips the image, counts it and goes on.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason
