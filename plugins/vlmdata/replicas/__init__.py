"""Tiny replicas of the upstreams, served on loopback: the demo mirror and the tests' fakes.

``http_server`` is a Range-capable HTTP server with scripted faults; ``hf_hub``, ``gdrive``
and ``github`` speak those services' protocols on top of it; ``data`` makes small real
images, archives and LLaVA annotation files; ``slice`` and ``sources`` lay out replicas of
the sources with the upstreams' file names and archive structures.
"""
