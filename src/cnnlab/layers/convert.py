"""Placeholder: being written."""


def convert(model, to="custom"):
    raise NotImplementedError
