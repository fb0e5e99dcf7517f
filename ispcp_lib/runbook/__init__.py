"""Front-ends: the notebook builder, the run session, JupyterLab widgets, the report and the CLI."""
