"""Errors a user can fix, as opposed to bugs in tfmp.

The CLI turns a `UserError` into exit status 2 with its message on stderr and no
traceback; anything else is an internal failure (exit status 1).
"""


class UserError(ValueError):
    """Bad usage or bad input: the message says what was received, where, and what to do."""


class InputError(UserError):
    """A data file, model directory or run directory that cannot be used as given."""


class PolicyError(UserError):
    """An unknown or unsupported precision policy."""


class TrainingStopped(RuntimeError):
    """Training was stopped on purpose (loss scale collapsed, NaN loss); a checkpoint was kept."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived (a scheduler pre-empting the job): handled like Ctrl-C.

    `signum` is the signal; the CLI exits with 128 + signum, as a shell reports it.
    """

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum
