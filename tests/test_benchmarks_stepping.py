"""benchmarks.stepping.collectives: the collectives of a sharded program, counted and sized."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks.stepping import collectives


@pytest.mark.skipif(jax.device_count() < 2, reason="needs several (host) devices")
def test_collectives_of_a_sharded_sum_and_gather():
    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("data",))
    x = jax.ShapeDtypeStruct((n * 8, 128), jnp.float32,
                             sharding=NamedSharding(mesh, PartitionSpec("data")))
    rep = NamedSharding(mesh, PartitionSpec())

    def f(x):
        return jnp.sum(x, axis=0), x  # a reduction over devices, a gather of x

    text = jax.jit(f, out_shardings=(rep, rep)).lower(x).compile().as_text()
    found = collectives(text)
    assert found["all-reduce"][0] >= 1 and found["all-reduce"][1] >= 128 * 4
    assert found["all-gather"] == (1, n * 8 * 128 * 4)
    assert collectives(jax.jit(lambda a: a * 2).lower(np.ones(4)).compile().as_text()) == {}
