"""Assemble stage: series completion and head-CT eligibility."""
