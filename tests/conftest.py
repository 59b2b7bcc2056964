"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread: the small models of these tests run fastest so on a shared 2-core
    machine (two threads contending with other jobs crawl); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def on_meta():
    """Build on the meta device (no memory, no init): parameter counts of big variants."""
    with torch.device("meta"):
        yield
