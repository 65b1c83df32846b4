"""The base of every error trainmon raises on purpose: its message is one line that says what to do."""


class TrainmonError(Exception):
    """An expected failure (bad config, taken port, bad event); the CLI prints it without a trace."""
