"""What runs only in the analyst's process: secure frames, the client, results,
plotting, expressions, progress, and the local consortium and demo."""
