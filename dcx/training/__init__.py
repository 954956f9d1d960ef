"""Training a backbone on pseudo-labels: from a config to plugins and network (``setup``), the loop
(``engine``) over offline or online epochs (``epochs``), extraction, the clustering step, diagnostics,
callbacks and the run directory they write."""
