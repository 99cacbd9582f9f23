"""Small formatting helpers the tables share."""


def fmt(value, spec=".1f", none="-"):
    return none if value is None else format(value, spec)
