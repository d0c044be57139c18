"""Batch inference over a dask.array on a dask.distributed LocalCluster (the example in
examples/dask_inference.py): the layer is scattered once, blocks map over the batch."""
import numpy as np
import pytest

import fastlinear as fl

distributed = pytest.importorskip("dask.distributed")
da = pytest.importorskip("dask.array")


def _apply(block, layer):
    return layer(block)


def test_map_blocks_on_a_local_cluster_equals_a_local_call():
    layer = fl.Linear(64, 16, rng=0, backend="native")
    x = np.random.default_rng(0).standard_normal((1000, 64)).astype(np.float32)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        shipped = client.scatter(layer, broadcast=True)  # once per worker, not per block
        dx = da.from_array(x, chunks=(128, 64))
        y = dx.map_blocks(_apply, shipped, dtype=np.float32, chunks=(128, 16)).compute()
    np.testing.assert_array_equal(y, layer(x))  # the native kernel's bits, on any worker
