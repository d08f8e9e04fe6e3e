"""``pixgen serve``: the web studio and HTTP API over the batch package's queue, log and executors.

``submit`` turns requests into planned jobs (the CLI's validation), ``studio`` keeps the jobs
(durable in a batch folder) and drives the workers, ``workers`` and ``on_ray`` are the executors,
``guard`` the network's side (token, limits, headers), ``app`` the HTTP API, ``server`` the start.
"""
