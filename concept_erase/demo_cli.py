"""``concept-erase demo`` (being built: see issue 5)."""


def add_parser(sub) -> None:
    pass
