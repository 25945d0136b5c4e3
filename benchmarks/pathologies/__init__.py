"""The pathology benchmark: real architectures, real bundled data, known faults (issue 11).

``python benchmarks/pathologies/run.py`` runs every case in ``cases/`` in its own subprocess
and scores what ``vs.Monitor`` said at its defaults; see docs/pathologies.md.
"""
