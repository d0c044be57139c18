"""Batch inference with fastlinear over a dask.array, on a dask.distributed cluster.

The layer travels to each worker once (scatter; it pickles as its weights only), then
map_blocks runs it on every block of rows. Here a LocalCluster of 2 worker processes;
point Client at a scheduler address for a real cluster.

    pip install "dask[array,distributed]" && python examples/dask_inference.py
"""
import numpy as np
import dask.array as da
from dask.distributed import Client, LocalCluster

import fastlinear as fl


def apply(block, layer):
    return layer(block)


def main():
    layer = fl.Linear(768, 256, rng=0)
    x = da.random.default_rng(0).standard_normal((100_000, 768), chunks=(10_000, 768))
    x = x.astype(np.float32)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        shipped = client.scatter(layer, broadcast=True)
        y = x.map_blocks(apply, shipped, dtype=np.float32, chunks=(10_000, 256))
        print(y.mean().compute(), y.shape)


if __name__ == "__main__":
    main()
