"""The evaluation's bad-input error (kept free of heavy imports: simulator worker processes import it)."""


class EvalInputError(ValueError):
    """Bad evaluation input (missing checkpoint, statistics or embedding); the CLI prints it as one line."""
