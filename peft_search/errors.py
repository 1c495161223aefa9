"""The error every bad input in peft-search raises: it names the field and what is allowed.

Every layer may import it; it imports nothing."""


class InputError(ValueError):
    """Bad input, reported as `field: message`; the CLI turns it into exit status 2."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def under(self, parent: str) -> "InputError":
        """The same error with its field placed under `parent` (e.g. `design.grouping`)."""
        return InputError(f"{parent}.{self.field}" if self.field else parent, self.message)

    def in_file(self, path) -> "InputError":
        """The same error prefixed with the file it came from: `jobs/x.yaml: stages[2].candidates: ...`."""
        return InputError(f"{path}: {self.field}", self.message)
