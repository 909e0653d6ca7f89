"""Exit codes of every `chaosbed` command (README, docs/contracts.md).

The gate (slos/gate.py) returns the same 0/1/2/3 as a library; it cannot import this module
(slos sits below chaosbed), so tests/unit/test_layers.py checks the two agree.
"""

EXIT_PASS = 0  # every objective passed (warnings included)
EXIT_FAIL = 1  # an objective failed or an anomaly was found
EXIT_UNKNOWN = 2  # too little evidence to decide
EXIT_HARNESS = 3  # the harness itself failed (bad input file, stack did not start, ...)
EXIT_USAGE = 64  # bad command line
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM: faults healed, processes stopped
