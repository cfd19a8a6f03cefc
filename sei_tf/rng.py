"""Per-example random numbers that do not depend on how a batch is split.

Under `tf.distribute`, each replica sees a slice of the global batch. Drawing
the numbers for the whole global batch from one stateless seed and keeping this
replica's slice makes a distributed step use exactly the same noise, probes and
transform parameters as a single-device step on the same global batch.
"""

import tensorflow as tf


def _replica_slice():
    """(replica index, number of replicas) in the current replica context."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: behave as a single device
        return 0, 1
    return ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync


def _draw(fn, shape, seed):
    shape = tf.convert_to_tensor(shape, dtype=tf.int32)
    rid, n = _replica_slice()
    local = shape[0]
    global_shape = tf.concat([[local * n], shape[1:]], axis=0)
    values = fn(global_shape, seed=seed)
    start = tf.cast(rid, tf.int32) * local
    return values[start:start + local]


def normal(shape, seed):
    """Standard normal draws of `shape` (first axis: batch)."""
    return _draw(tf.random.stateless_normal, shape, seed)


def uniform(shape, seed):
    """Uniform draws in [0, 1) of `shape` (first axis: batch)."""
    return _draw(tf.random.stateless_uniform, shape, seed)


def poisson(rate, seed):
    """Poisson draws with the element-wise mean `rate` (float32, >= 0; first axis: batch).

    TensorFlow's stateless Poisson draw of an element depends only on the seed, the
    element's position and its own rate, so this replica's rates are placed at its
    slice of a global batch (zeros elsewhere, which cost nothing to draw) and that
    slice is kept: the same counts as a single-device draw of the global batch.
    """
    rate = tf.convert_to_tensor(rate, tf.float32)
    rid, n = _replica_slice()
    if n == 1:
        return tf.random.stateless_poisson(tf.shape(rate), seed, rate, dtype=tf.float32)
    local = tf.shape(rate)[0]
    start = tf.cast(rid, tf.int32) * local
    pad = tf.concat([[[start, local * n - start - local]], tf.zeros([tf.rank(rate) - 1, 2], tf.int32)], axis=0)
    padded = tf.pad(rate, pad)
    counts = tf.random.stateless_poisson(tf.shape(padded), seed, padded, dtype=tf.float32)
    return counts[start:start + local]


def fold(seed, k):
    """A new independent stateless seed derived from `seed` and the integer `k`."""
    return tf.random.experimental.stateless_fold_in(seed, k)
