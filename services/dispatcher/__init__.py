"""The dispatcher service: turns events into sessions."""
