"""One module per pipeline stage: Prefect tasks that read inputs from the store, call ``maskbank.tasks``
and write outputs back, returning small references."""
