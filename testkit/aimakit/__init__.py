"""AIMA's shared test support: what the app tests, the Molecule verifiers and the benchmark use.

- aimakit.media: media payloads (PNG, a large compressible PNG, a decompression bomb, WAV, any
  Pillow format) and multipart bodies;
- aimakit.api: an HTTPS client for the API through the proxy (login, CA verification);
- aimakit.ansible: ansible-playbook as an operator runs it, with its recap parsed;
- aimakit.probes: a target container's nested engine, database and queue, through docker exec;
- aimakit.browser: headless Chromium over the DevTools pipe (the web page's tests).

Importable from the tests and the verifiers through pytest's `pythonpath` (pytest.ini), and
from scripts/bench.py; no test adds it to sys.path itself.
"""
