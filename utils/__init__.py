"""Configuration, logging, trackers and small helpers shared by the scripts."""
