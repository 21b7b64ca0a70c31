"""Cross-validation runs, their comparison (tables, statistics, plots) and the demo main job."""
