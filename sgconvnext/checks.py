"""Argument checks shared by the layer and the model: a clear TypeError / ValueError naming what was expected."""

__all__ = ['check_choice']


def check_choice(name: str, value, choices: tuple) -> str:
    """``value`` if it is one of the string ``choices``, else an error that lists them."""
    if not isinstance(value, str):
        raise TypeError(f'{name} must be one of {choices} (a str), got {value!r} ({type(value).__name__})')
    if value not in choices:
        raise ValueError(f'{name} must be one of {choices}, got {value!r}')
    return value
