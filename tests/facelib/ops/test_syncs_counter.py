"""The host-sync counter itself sees what it claims to see."""

import numpy as np
import torch

from tests.facelib.syncs import count_host_syncs


def test_counter_sees_each_kind_of_host_wait():
    t = torch.arange(6.0)
    with count_host_syncs() as n:
        t.sum().item()
        t.tolist()
        bool(t[0] > 1)
        int(t[1])
        float(t[2])
        t.nonzero()
        torch.nonzero(t)
        t.cpu().numpy()
        np.asarray(t)
        [0, 1, 2][t.long()[1]]
        (t * 2 + 1).sum(0)  # device work only
    assert n == {"item": 1, "tolist": 1, "__bool__": 1, "__int__": 1, "__float__": 1, "nonzero": 2,
                 "cpu": 1, "numpy": 1, "__array__": 1, "__index__": 1}
    with count_host_syncs() as n:
        pass
    assert not n and torch.Tensor.item is not None and t.sum().item() == 15.0
