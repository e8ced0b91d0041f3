"""The user-facing error type.

`CliError` (or `ValueError` / `FileNotFoundError`) raised anywhere below a command is printed by
``ssdbench`` as one line, ``ssdbench COMMAND: error: MESSAGE``, with exit status 2; the message
names the culprit (the flag, the file, the image). Set ``SSDBENCH_DEBUG=1`` for the traceback.
Every package imports it from here, so nothing imports upward from the command line.
"""

from __future__ import annotations

# Exit status of a run stopped by SIGTERM/SIGINT after it wrote its checkpoint: non-zero, so a
# scheduler requeues it (sysexits.h EX_TEMPFAIL, "temporary failure; retry later").
PREEMPTED_EXIT = 75


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""
