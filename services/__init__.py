"""The rules: versions, encode, transfer, artifacts, evaluation, access, tokens... called by ``deltazoo.api``
and ``deltazoo.workers``, built on the data layer (``deltazoo.registry``). Services take a session, never
commit, and raise ``deltazoo.registry.errors``."""
