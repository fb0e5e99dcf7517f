"""The action core: context, results, the runner, safety copies, secrets and typed errors."""
