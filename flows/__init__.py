"""How it runs: Prefect flows and cached tasks that read and write through storage."""
