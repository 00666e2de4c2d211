import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (two are ~100x slower next to a busy process on 2 cores), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
