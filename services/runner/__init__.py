"""The runner service: executes sessions in worker subprocesses."""
