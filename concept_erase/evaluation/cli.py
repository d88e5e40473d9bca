"""``concept-erase eval`` (being built: see issue 4)."""


def add_parser(sub) -> None:
    pass
