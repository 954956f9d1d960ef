"""Using what a run trained: export the backbone, embed and assign images, see the clusters.

One concept per module: ``source`` (a run's network and images as rows of one layer),
``clustering`` (the run's preprocessing and centroids, saved at every clustering), ``export``,
``embed``, ``assign``, ``gallery``, ``loggers``. ``dcx.api`` and ``dcx/cli`` call these.
"""
