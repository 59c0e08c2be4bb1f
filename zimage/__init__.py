"""The composition root: the ``zimage`` command and the processes it runs.

Everything else is a floor below: ``kernel`` (shared infrastructure), ``dispatcher`` (jobs to
RunPod to Storage), ``api`` (the HTTP functions), ``devstack`` (local stand-ins for the cloud),
``worker`` (the RunPod worker). Only this package wires them together.
"""
