"""The optimizer tests run many tiny steps: one torch thread, so a busy machine does not turn
thread hand-offs into the cost of the test (results are compared at the same setting)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
