"""Support code for the engine tests: shared helpers and child-process scripts."""
