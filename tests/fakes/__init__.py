"""Real-protocol fakes of the services Hatchbot talks to, all on 127.0.0.1.

Each module holds one fake and its pytest fixtures; `tests/conftest.py` loads
them as plugins, and `bench/` imports the fakes directly.
"""
