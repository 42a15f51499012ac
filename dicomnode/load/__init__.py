"""Load stage: stored instances -> a CT volume in HU with exact geometry."""
