"""Exit codes of the ``unlearn`` command, in a module of their own so every command module can use them.

Only the command line turns outcomes into exit codes; stages raise exceptions
(:class:`tasks.project.PipelineError`, :class:`unlearn.config.ConfigError`, ...), and
``flows/cli.py`` maps them here.
"""

EXIT_OK = 0
EXIT_ERROR = 2  # bad input or a stage that cannot proceed: the message says why
EXIT_GATE_FAILED = 3  # the pipeline ran, but no unlearned model passed the gate (nothing was promoted)
