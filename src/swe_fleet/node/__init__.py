"""``swe-fleet node start``: which Ray node this process becomes, and starting it.

:mod:`~swe_fleet.node.config` (the environment, typed), :mod:`~swe_fleet.node.decision` (head,
worker or wait, as pure functions), :mod:`~swe_fleet.node.start` (probing and running Ray).
"""
