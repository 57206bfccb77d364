"""Errors that a user can act on (as opposed to bugs)."""


class InvalidScanError(Exception):
    """A scan that cannot be processed: unreadable, not a CT, 2D, NaN voxels, missing slices,
    no lungs found. The message is one line naming the file and the problem. In the workflow such a
    scan becomes an exclusion record; on the command line it gives exit status 2."""


class InvalidInputError(Exception):
    """Any other bad input a user supplied (a malformed table, a missing weights file, a bad
    option value). The message is one line naming the file and the problem; exit status 2."""
