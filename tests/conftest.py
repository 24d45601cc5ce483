"""Shared fixtures: tiny random models on the CPU, fixed seeds, no network."""
import pytest
import torch

import cdlm


def pytest_configure(config):
    torch.set_num_threads(2)


@pytest.fixture
def tiny_model():
    """A 2-layer random model with a 32-position context: enough structure for every invariant, milliseconds a call."""
    torch.manual_seed(0)
    return cdlm.Transformer(seq_len=32, n_layer=2, n_head=2, d_model=32).eval()
