"""Scheduled jobs (completion sweep, retention) and the processing job queue."""
