"""The dispatcher: ``council.request`` events become Ray jobs, exactly once, and each job's
status is published once per state; and the producer API that sends requests.

- :mod:`~swe_fleet.dispatch.requests`: the request contract (the request, its validation, its
  submission id, its spec, its dead letter);
- :mod:`~swe_fleet.dispatch.config`: :class:`~swe_fleet.dispatch.config.DispatcherConfig`;
- :mod:`~swe_fleet.dispatch.service`: pulling requests, handling them, dead letters;
- :mod:`~swe_fleet.dispatch.follower`: following the jobs in flight;
- :mod:`~swe_fleet.dispatch.ledger`: the record of each request, and the in-flight view it owns;
- :mod:`~swe_fleet.dispatch.status`: status events exactly once (the write-ahead intent);
- :mod:`~swe_fleet.dispatch.producer`: :func:`~swe_fleet.dispatch.producer.request_council`.
"""
