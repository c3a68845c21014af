"""The evaluation's error type: a problem with its inputs, with a message naming the file or field,
what was expected and what was found. The command line prints it and exits with status 2."""


class EvaluationError(ValueError):
    pass
