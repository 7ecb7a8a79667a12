"""Fuzzing of tensorcodec's decoders: structure-aware mutants of messages and streams, run in workers.

``python -m fuzz.run`` runs a campaign (see ``docs/fuzzing.md``); ``tests/test_fuzz.py`` replays the
committed corpus ``tests/fuzz_corpus/`` and runs a short campaign in CI.
"""
