"""Placeholder: being written."""


def log_softmax(*args, **kwargs):
    raise NotImplementedError


def relu(*args, **kwargs):
    raise NotImplementedError
