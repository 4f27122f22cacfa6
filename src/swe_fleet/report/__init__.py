"""A council as people read it, built from its events (pure: the CLI reads and writes).

- :mod:`~swe_fleet.report.transcript`: the transcript (who said what to whom, revisions beside
  what they revised, votes, outcome, phase timings);
- :mod:`~swe_fleet.report.html`, :mod:`~swe_fleet.report.markdown`: its renderings
  (``swe-fleet report``, ``swe-fleet run --html``);
- :mod:`~swe_fleet.report.progress`: the live grid of tasks x phases (``swe-fleet watch``);
- :mod:`~swe_fleet.report.words`: the words they share.
"""
